"""benchmarks/full_width.py's machinery on the tiny preset: selection and refusal of names, the fidelity
and roofline arithmetic, and one real run (child processes, an exported ONNX, ONNX Runtime) whose
JSON has issue 29's shape and whose ONNX is taken from the cache the second time. No timing is
asserted."""
import argparse
import json
import struct

import numpy as np
import pytest

from benchmarks import full_width as fw
from export.specs import component_specs
from runtime.precision import COSINE_TARGET


def test_backends_are_label_and_precision_with_the_reference_first():
    assert fw.backend_names("onnxruntime-fp32,torch-bf16") == ["torch-fp32", "onnxruntime-fp32", "torch-bf16"]
    assert fw.backend_names("torch-fp32") == ["torch-fp32"]
    assert fw.backend_names("all") == list(fw.BENCH_BACKENDS)
    for bad in ("onnxruntime", "torch-fp8", "", "tensorrt-fp32"):
        with pytest.raises(argparse.ArgumentTypeError, match="unknown backend"):
            fw.backend_names(bad)


def test_components_are_refused_by_name():
    assert fw.component_names("sd_unet, llm_decode") == ["sd_unet", "llm_decode"]
    assert fw.component_names("all") == list(fw.COMPONENTS)
    with pytest.raises(argparse.ArgumentTypeError, match="unknown component 'sd_vae'"):
        fw.component_names("sd_unet,sd_vae")


@pytest.mark.parametrize("argv", [["--components", "nope"], ["--backends", "openvino-fp64"], ["--runs", "0"]])
def test_the_command_refuses_unknown_names_in_one_line(argv, capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        fw.main([*argv, "--cache", str(tmp_path)])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "error:" in err[-1] and sum("error" in line for line in err) == 1
    assert not any(tmp_path.iterdir())  # refused before any work


def test_every_component_runs_at_a_size_its_spec_accepts():
    config = fw.benchmark_config("nextgpt-7b", 2)
    specs = component_specs(config)
    assert config["llm"]["num_hidden_layers"] == 2 and config["llm"]["layers_in_full"] == 32
    for name, component in fw.COMPONENTS.items():
        spec = specs[component.spec]
        dims = component.sizes(spec)
        for axis, (low, _, high) in spec.dims.items():
            assert low <= dims[axis] <= high, (name, axis, dims[axis])
    assert fw.COMPONENTS["zeroscope_unet"].sizes(specs["zeroscope_unet"])["frames"] == 8
    assert fw.COMPONENTS["imagebind_video"].sizes(specs["imagebind_vision"])["clips"] == 5
    prefill = fw.COMPONENTS["llm_prefill"].sizes(specs["llm"])
    decode = fw.COMPONENTS["llm_decode"].sizes(specs["llm"])
    assert (prefill["seq"], prefill["past"], decode["seq"], decode["past"], decode["present"]) == (128, 0, 1, 128, 129)


def test_fidelity_is_cosine_and_relative_l2_per_output():
    rng = np.random.default_rng(0)
    ref = {"a": rng.standard_normal(1000), "b": rng.standard_normal(10)}
    same = fw.fidelity(ref, dict(ref), "bf16")
    assert same["cosine"] == 1.0 and same["rel_l2"] == 0.0 and same["meets"]
    noise = rng.standard_normal(1000)
    noisy = {"a": ref["a"] + 0.1 * noise * np.linalg.norm(ref["a"]) / np.linalg.norm(noise), "b": ref["b"]}
    got = fw.fidelity(ref, noisy, "int8")
    assert got["outputs"]["a"]["rel_l2"] == pytest.approx(0.1)
    assert got["rel_l2"] == pytest.approx(0.1) and got["outputs"]["b"]["cosine"] == 1.0
    assert got["cosine"] == got["outputs"]["a"]["cosine"] == pytest.approx(1 / np.sqrt(1.01), abs=2e-3)
    assert got["target"] == COSINE_TARGET["int8"] and got["meets"] == (got["cosine"] >= 0.99)
    assert not fw.fidelity(ref, {"a": -ref["a"], "b": ref["b"]}, "bf16")["meets"]


def test_the_llm_is_extrapolated_by_its_layers_share_of_the_flops():
    row = {"flops": 100, "layer_flops": 40, "seconds": {"torch-fp32": 1.0}}
    got = fw.llm_layers(row, {"num_hidden_layers": 2, "layers_in_full": 32})
    assert got["per_layer_seconds"]["torch-fp32"] == pytest.approx(0.4)
    assert got["extrapolated_32_layers_seconds"]["torch-fp32"] == pytest.approx((32 * 40 + 20) / 100)


def test_decode_is_judged_by_bandwidth_and_the_rest_by_the_gemm_peak_of_its_precision():
    limits = {"memory_gb_s": 10.0, "gemm_tflops": {"fp32": 1.0, "bf16": 2.0, "int8": 4.0}}
    row = {"flops": 2e12, "weights": 4e9, "seconds": {"torch-fp32": 1.0, "torch-bf16": 0.5}}
    unet = fw.achieved("sd_unet", row, limits)
    assert unet["torch-fp32"]["fraction"] == pytest.approx(2.0) and unet["torch-bf16"]["fraction"] == pytest.approx(2.0)
    # int8 weights computed in bf16: int8's fidelity target, bf16's peak
    weights_only = fw.achieved("sd_unet", {**row, "seconds": {"openvino-int8w": 0.5}}, limits)["openvino-int8w"]
    assert weights_only["fraction"] == pytest.approx(2.0) and weights_only["bound"] == "bf16 GEMM"
    assert fw.BENCH_BACKENDS["openvino-int8w"].precision == "int8"
    decode = fw.achieved("llm_decode", {**row, "seconds": {"torch-fp32": 2.0}}, limits)
    assert decode["torch-fp32"]["gb_s"] == pytest.approx(2.0) and decode["torch-fp32"]["fraction"] == pytest.approx(0.2)


def test_the_limits_are_measured(monkeypatch):
    limits = fw.machine_limits(1, triad_gib=0.01, gemm_size=128)
    assert limits["memory_gb_s"] > 0 and set(limits["gemm_tflops"]) == {"fp32", "bf16", "int8"}
    assert all(v > 0 for v in limits["gemm_tflops"].values())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, monkeypatch_module):
    """The command on the tiny preset, twice: the second run takes the ONNX from the cache."""
    out = tmp_path_factory.mktemp("full_width")
    monkeypatch_module.setattr(fw, "TRIAD_GIB", 0.01)
    monkeypatch_module.setattr(fw, "GEMM_SIZE", 128)
    argv = ["--preset", "tiny", "--components", "llm_decode", "--backends", "onnxruntime-fp32,torch-bf16",
            "--runs", "1", "--cache", str(out / "cache"), "--roofline", str(out / "roofline.png")]
    assert fw.main([*argv, "--json", str(out / "first.json")]) == 0
    assert fw.main([*argv, "--json", str(out / "second.json")]) == 0
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_json_has_the_issues_shape(tiny_run):
    result = json.loads((tiny_run / "first.json").read_text())
    assert {"provenance", "cpu", "limits", "components", "backends"} <= set(result)
    assert result["provenance"]["cpu_flags"] and result["backends"] == ["torch-fp32", "onnxruntime-fp32", "torch-bf16"]
    assert set(result["limits"]["gemm_tflops"]) == {"fp32", "bf16", "int8"} and result["limits"]["memory_gb_s"] > 0
    assert list(result["components"]) == ["llm_decode"]
    for row in result["components"].values():
        assert isinstance(row["shape"], str) and set(row["seconds"]) == set(result["backends"])
        assert set(row["fidelity"]) == {"onnxruntime-fp32", "torch-bf16"}
        assert row["fidelity"]["onnxruntime-fp32"]["meets"]  # the same weights in the exported graph
        assert {"cosine", "rel_l2"} <= set(row["fidelity"]["torch-bf16"]) and row["flops"] > 0 and row["peak_rss_gb"] > 0
        assert set(row["achieved"]) == set(result["backends"])
    decode = result["components"]["llm_decode"]
    assert decode["layers"] == 2 and decode["achieved"]["torch-fp32"]["bound"] == "memory"
    assert set(decode["fidelity"]["onnxruntime-fp32"]["outputs"]) == {"logits", "hidden", "present_keys", "present_values"}
    table = (tiny_run / "first.md").read_text()
    assert "| llm_decode |" in table and "## LLM per layer" in table and "Commit " in table


def test_the_onnx_is_taken_from_the_cache(tiny_run):
    first = json.loads((tiny_run / "first.json").read_text())["components"]["llm_decode"]["build"]
    second = json.loads((tiny_run / "second.json").read_text())["components"]["llm_decode"]["build"]
    assert first["built"] == ["cpu"] and second["built"] == []


def test_the_roofline_is_a_png_with_its_provenance(tiny_run):
    data = (tiny_run / "roofline.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 400 and height > 300 and b"Description" in data


def test_every_backend_builds_runs_and_is_compared_on_a_tiny_component(tmp_path, monkeypatch):
    """Both int8 quantizers, both OpenVINO precisions and ONNX Runtime, from the cached ONNX files."""
    monkeypatch.setattr(fw, "TRIAD_GIB", 0.01)
    monkeypatch.setattr(fw, "GEMM_SIZE", 128)
    argv = ["--preset", "tiny", "--components", "sd_unet", "--backends", "all", "--runs", "1",
            "--cache", str(tmp_path / "cache"), "--roofline", str(tmp_path / "roofline.png"), "--json", str(tmp_path / "r.json")]
    assert fw.main(argv) == 0
    row = json.loads((tmp_path / "r.json").read_text())["components"]["sd_unet"]
    assert set(row["seconds"]) == set(fw.BENCH_BACKENDS)
    assert sorted(row["build"]["built"]) == sorted(fw.FILES)
    [group] = row["groups"]  # a tiny component's engines all fit beside each other
    assert group["backends"] == list(fw.BENCH_BACKENDS)
    # Linux's high-water mark trails the per-thread RSS counters by a few pages: 10 MB of slack
    assert 0 < group["rssanon_gb"] and 0 < group["rssanon_gb"] + group["rssfile_gb"] <= row["peak_rss_gb"] + 0.01
    # measured on the 2-core EPYC: int8 cosines 0.9955 (ONNX Runtime) and 0.9966 (OpenVINO), under half
    # of the 0.01 allowed, from deterministic quantizations whose kernels differ by far less between CPUs
    for backend, fidelity in row["fidelity"].items():
        assert fidelity["meets"], (backend, fidelity["cosine"])


def test_engines_that_would_not_fit_together_are_timed_in_groups_beside_the_reference(tiny_run):
    """With no memory to spare every engine gets a group of its own; the torch backends, which share
    the reference's module, join any group. The reference is timed in every group."""
    config = fw.benchmark_config("tiny", 2)
    spec = component_specs(config)["llm"]
    built = fw.Built(spec, fw._seeded_module(config, "llm"), {"name": "llm", **spec.to_json()}, tiny_run / "cache" / "tiny" / "llm", 1)
    feeds = spec.sample(spec.point("opt"), seed=fw.SEED)
    backends = ["torch-fp32", "torch-bf16", "onnxruntime-fp32"]
    outputs, times, groups = fw.timed_in_groups(built, backends, feeds, 2, budget_gb=0.0)
    assert [g["backends"] for g in groups] == [["torch-fp32", "torch-bf16"], ["torch-fp32", "onnxruntime-fp32"]]
    assert len(times["torch-fp32"]) == 4 and len(times["torch-bf16"]) == len(times["onnxruntime-fp32"]) == 2
    assert set(outputs) == set(backends) and all(g["rssanon_gb"] > 0 for g in groups)
    everything = fw.timed_in_groups(built, backends, feeds, 1, budget_gb=1e6)[2]
    assert [g["backends"] for g in everything] == [backends]


def test_a_graph_using_part_of_its_module_keeps_its_weights_after_the_cpu_export(tmp_path, monkeypatch):
    """An ImageBind encoder's export weighs the whole encoder (both trunks) to decide on external
    data, so the audio graph is written with its weights beside it though it is small itself; the
    optimised file must not point at the exporter's data file, which export_cpu removes."""
    import onnxruntime as ort
    import torch

    from export import onnx_export

    config = fw.benchmark_config("tiny", 2)
    spec = component_specs(config)["imagebind_audio"]
    module = fw._seeded_module(config, "imagebind_audio")
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", onnx_export._param_bytes(module) - 1)
    path = onnx_export.export_cpu(spec, module, tmp_path / "model.opt.onnx")
    assert not (tmp_path / "fused.onnx.data").exists()
    feeds = spec.sample(spec.point("opt"), seed=0)
    [got] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    with torch.no_grad():
        want = module(*(torch.from_numpy(feeds[n]) for n in spec.input_names))
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)


def test_a_component_that_fails_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    monkeypatch.setattr(fw, "TRIAD_GIB", 0.01)
    monkeypatch.setattr(fw, "GEMM_SIZE", 128)
    (tmp_path / "cache" / "tiny").mkdir(parents=True)
    (tmp_path / "cache" / "tiny" / "llm").write_text("not a folder")  # the LLM's build cannot be cached
    argv = ["--preset", "tiny", "--components", "llm_decode,projector_image", "--backends", "onnxruntime-fp32", "--runs", "1",
            "--cache", str(tmp_path / "cache"), "--roofline", str(tmp_path / "roofline.png"), "--json", str(tmp_path / "r.json")]
    assert fw.main(argv) == 1
    result = json.loads((tmp_path / "r.json").read_text())
    assert list(result["components"]) == ["projector_image"] and list(result["failed"]) == ["llm_decode"]
    assert "FileExistsError" in result["failed"]["llm_decode"]
    assert "| llm_decode | failed: FileExistsError" in (tmp_path / "r.md").read_text()


def test_an_encoder_holds_only_its_own_trunk():
    from train.imagebind import ImageBindEncoder

    config = fw.benchmark_config("tiny", 2)
    for modality in ("vision", "audio"):
        module = fw.build_module(config, f"imagebind_{modality}")
        assert list(module.encoder.modality_trunks) == [modality]
        both = sum(p.numel() for p in ImageBindEncoder(config["imagebind"]).parameters())
        assert fw.parameter_bytes(module)["weights"] < 4 * both  # the other trunk is not counted

