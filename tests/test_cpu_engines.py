"""The reduced-precision CPU engines: OpenVINO fp32/bf16/int8 and ONNX Runtime int8 on the tiny
components, against fp32 ONNX Runtime at runtime/precision.py's tolerances; calibration drawn and
quantized the same for a seed; the refusal of a build for another CPU or library version."""

import json

import numpy as np
import pytest

from export.build_engines import KEEP_FP32, build, main
from export.quantize import calibration_requests, load_samples, pick_samples, quantize_openvino, record_calibration
from export.specs import component_specs
from runtime import versions
from runtime.backends import BackendUnavailable, Engines, OrtEngine, OvEngine
from runtime.manifest import read_manifest
from runtime.precision import TOLERANCE, compare, rule_for
from runtime.versions import IncompatibleBuild
from train import synthetic

# the LLM (KV cache and signal-token hidden states), a projector, a UNet and a VAE decoder (int8
# computes the UNet on both backends and keeps AudioLDM's VAE decoder fp32: KEEP_FP32)
PARITY = ["llm", "projector_image", "sd_unet", "audioldm_vae_decoder"]


@pytest.fixture(scope="module")
def world():
    return synthetic.ensure_world(0, progress=False)


@pytest.fixture(scope="module")
def cpu_builds(tiny_dir, tiny_build, tmp_path_factory):
    """(backend, precision) -> a build of the PARITY components, made on first use, through the
    command line for int8 (the flags a user gives), calibrated on the session's fp32 build."""
    made = {}

    def get(backend, precision):
        if (backend, precision) not in made:
            out = tmp_path_factory.mktemp(f"{backend}-{precision}") / "tiny"
            args = ["--checkpoint", str(tiny_dir), "--out", str(out), "--backend", backend, "--precision", precision,
                    "--components", ",".join(PARITY), "--from-fp32", str(tiny_build[0]), "--quiet"]
            assert main(args) == 0
            made[backend, precision] = out
        return made[backend, precision]

    return get


@pytest.fixture(scope="module")
def calls(tiny_build, world):
    """Every engine call's feeds while the fp32 build answers the seed-0 calibration requests."""
    return record_calibration(tiny_build[0], calibration_requests(world, 0), progress=False)


def _fp32(build_dir, name):
    b = read_manifest(build_dir)
    return OrtEngine(b.path(b.component(name)["engine"]), {"name": name, **b.component(name)})


def _check(reference, engine, feeds, precision):
    expected, got = reference.run(feeds), engine.run(feeds)
    for name in reference.output_names:
        result = compare(expected[name], got[name], TOLERANCE[precision], TOLERANCE[precision], rule_for(precision))
        assert result["pass"], f"{name}: {result['reason']}"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_matches_onnxruntime_fp32(tiny_build, cpu_builds, precision):
    out = cpu_builds("openvino", precision)
    built = read_manifest(out)
    specs = component_specs(built.config)
    engines = Engines(built, "openvino", threads=1)
    for name in PARITY:
        assert built.component(name)["engine"] == built.component(name)["onnx"]  # compiled from the portable ONNX
        for point in ("min", "opt"):
            _check(_fp32(tiny_build[0], name), engines[name], specs[name].sample(specs[name].point(point), seed=2), precision)
    assert (out / "cache" / "openvino").is_dir() and any((out / "cache" / "openvino").iterdir())


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_int8_matches_fp32_on_real_inputs(tiny_build, cpu_builds, calls, backend):
    """Every output of every component within the int8 tolerance of fp32 on recorded calls (the
    LLM's prefill and decode steps with their cache among them)."""
    out = cpu_builds(backend, "int8")
    built = read_manifest(out)
    engines = Engines(built, backend, threads=1)
    for name in PARITY:
        entry = built.component(name)
        assert (entry["backend"], entry["precision"]) == (backend, "int8")
        assert entry["requires"]["libraries"] == {backend: versions.version_number(versions.installed_version(backend))}
        assert entry["requires"]["cpu_flags"] == [["avx512_vnni", "avx_vnni", "amx_int8"]]
        quantization = entry["quantization"]
        assert quantization["samples"] == len(load_samples(out / quantization["calibration"])) > 0
        # a component int8 costs answers stays fp32 by rule, and says why; the others compute in int8
        kept = KEEP_FP32.get((backend, name))
        assert quantization.get("kept_fp32") == kept
        assert (len(quantization["fp32_layers"]) == quantization["layers"]) == bool(kept), name
        for feeds in calls[name][:: max(1, len(calls[name]) // 6)]:
            _check(_fp32(tiny_build[0], name), engines[name], feeds, "int8")
    assert built.data["built_on"]["cpu_flags"] == versions.isa_flags(versions.cpu_flags())


def test_calibration_is_reproducible_for_a_seed(calls, world, tiny_build, tmp_path):
    assert [(r.prompt, r.files) for r in calibration_requests(world, 0)] == [(r.prompt, r.files) for r in calibration_requests(world, 0)]
    assert [(r.prompt, r.files) for r in calibration_requests(world, 0)] != [(r.prompt, r.files) for r in calibration_requests(world, 1)]
    onnx = read_manifest(tiny_build[0]).path(read_manifest(tiny_build[0]).component("projector_image")["onnx"])
    made = {}
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        xml = quantize_openvino(onnx, pick_samples(calls["projector_image"], seed, count=2), tmp_path / f"{run}.xml", [])
        made[run] = xml.with_suffix(".bin").read_bytes()
    assert made["a"] == made["b"]
    assert made["a"] != made["c"]


def test_a_rebuild_with_the_same_seed_is_up_to_date_and_another_seed_rebuilds(tiny_dir, tiny_build, tmp_path, capsys, monkeypatch):
    args = ["--checkpoint", str(tiny_dir), "--out", str(tmp_path / "b"), "--backend", "openvino",
            "--precision", "int8", "--components", "projector_audio", "--from-fp32", str(tiny_build[0]), "--quiet"]
    assert main(args) == 0
    first = read_manifest(tmp_path / "b").component("projector_audio")["files"]
    capsys.readouterr()
    assert main([*args, "--force"]) == 0
    assert "0 built, 1 up to date" in capsys.readouterr().out
    assert main([*args, "--force", "--seed", "1"]) == 0
    assert "1 built" in capsys.readouterr().out
    assert read_manifest(tmp_path / "b").component("projector_audio")["files"] != first
    # whether a component is kept fp32 is part of what its engine depends on
    monkeypatch.delitem(KEEP_FP32, ("openvino", "projector_audio"))
    assert main([*args, "--force", "--seed", "1"]) == 0
    assert "1 built" in capsys.readouterr().out
    assert "kept_fp32" not in read_manifest(tmp_path / "b").component("projector_audio")["quantization"]


@pytest.mark.parametrize(
    "backend, precision, says",
    [
        ("onnxruntime", "bf16", "the onnxruntime backend builds fp32 | int8 engines; bf16 is a --backend tensorrt or openvino build"),
        ("openvino", "fp16", "the openvino backend builds fp32 | bf16 | int8 engines; fp16 is a --backend tensorrt build"),
    ],
)
def test_impossible_precisions_are_refused_in_one_line(tiny_dir, tmp_path, capsys, backend, precision, says):
    assert main(["--checkpoint", str(tiny_dir), "--out", str(tmp_path / "x"), "--backend", backend, "--precision", precision]) == 2
    assert capsys.readouterr().err == f"error: {says}\n"


def test_calibrating_on_a_build_of_another_kind_is_refused(tiny_dir, tiny_build, tmp_path, capsys):
    ov = tmp_path / "ov"
    build(tiny_dir, ov, "openvino", "fp32", ["projector_audio"], progress=False)
    args = ["--checkpoint", str(tiny_dir), "--out", str(tmp_path / "q"), "--backend", "onnxruntime",
            "--precision", "int8", "--components", "projector_audio", "--from-fp32", str(ov), "--quiet"]
    assert main(args) == 2
    # one error line (the checkpoint loader's own progress bar may precede it on stderr)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].endswith("ov: imagebind_vision is not an fp32 onnxruntime engine there")


@pytest.fixture()
def bf16_build(cpu_builds):
    """An OpenVINO bf16 build (its manifest is what the refusals read)."""
    return cpu_builds("openvino", "bf16")


def test_a_bf16_build_on_a_cpu_without_bf16_is_refused_in_one_line(bf16_build, monkeypatch):
    entry = read_manifest(bf16_build).component("llm")
    assert entry["requires"]["cpu_flags"] == [["avx512_bf16", "amx_bf16"]]
    monkeypatch.setattr(versions, "cpu_flags", lambda: ["avx2", "avx512f", "avx512_vnni", "fma"])
    with pytest.raises(IncompatibleBuild) as e:
        Engines(read_manifest(bf16_build), "openvino")
    assert "\n" not in str(e.value)
    first = next(iter(read_manifest(bf16_build).components))  # every component is checked, in the manifest's order
    assert str(e.value) == (
        f"{bf16_build} ({first}, openvino bf16) needs a CPU with avx512_bf16 or amx_bf16, which this CPU lacks; build fp32 engines for it instead"
    )
    monkeypatch.setattr(versions, "cpu_flags", lambda: ["avx2", "amx_bf16"])
    Engines(read_manifest(bf16_build), "openvino")["projector_image"]  # AMX alone is enough


def test_a_build_for_another_library_version_is_refused_in_one_line(bf16_build, monkeypatch, sample_inputs, tmp_path, capsys):
    real = versions.installed_version
    monkeypatch.setattr(versions, "installed_version", lambda m: "2099.1.0" if m == "openvino" else real(m))
    with pytest.raises(IncompatibleBuild) as e:
        Engines(read_manifest(bf16_build), "openvino")
    first = next(iter(read_manifest(bf16_build).components))
    built = read_manifest(bf16_build).component(first)["requires"]["libraries"]["openvino"]
    assert str(e.value) == (
        f"{bf16_build} ({first}, openvino bf16) was built with openvino {built}, this machine has openvino 2099.1.0; "
        "rebuild it here with export/build_engines.py"
    )
    # the runtime CLI says it in one line and exits 2
    from runtime.__main__ import main as run_main

    assert run_main(["--engines", str(bf16_build), "--backend", "openvino", "--prompt", "hi", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {e.value}"]


def test_an_int8_onnxruntime_build_is_refused_by_the_gpu_providers(cpu_builds):
    out = cpu_builds("onnxruntime", "int8")
    with pytest.raises(BackendUnavailable, match="an onnxruntime int8 build for the CPU provider; onnxruntime-cuda runs fp32 builds"):
        Engines(read_manifest(out), "onnxruntime-cuda")["projector_image"]


def test_an_openvino_build_serves_only_the_openvino_label(bf16_build):
    with pytest.raises(BackendUnavailable, match="holds engines for openvino: they serve openvino"):
        Engines(read_manifest(bf16_build), "onnxruntime")
    engine = Engines(read_manifest(bf16_build), "openvino")["projector_image"]
    assert isinstance(engine, OvEngine)
    bad = {"hidden": np.zeros((1, 3, 3), np.float32)}
    with pytest.raises(ValueError, match="projector_image: input 'hidden' has shape"):
        engine.run(bad)


def test_a_triton_repository_serves_an_openvino_build_through_the_runtime(tiny_dir, tiny_build, tmp_path):
    from triton_repo.build_repo import build_repo

    bf16_build = tmp_path / "tiny-ov"  # every component: the repository's ensemble runs them all
    assert main(["--checkpoint", str(tiny_dir), "--out", str(bf16_build), "--backend", "openvino", "--precision", "bf16",
                 "--from-fp32", str(tiny_build[0]), "--quiet"]) == 0

    with pytest.raises(ValueError, match="the openvino engines are served by the runtime's"):
        build_repo(bf16_build, tmp_path / "native", native=True)
    models = build_repo(bf16_build, tmp_path / "repo")
    assert json.loads((tmp_path / "repo" / "repo.json").read_text())["native"] is False
    config = (tmp_path / "repo" / "projector_image" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and 'string_value: "openvino"' in config and "projector_image" in models
