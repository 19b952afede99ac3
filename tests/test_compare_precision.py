"""benchmarks/compare_precision.py: the comparison rules on crafted arrays, then the script on the tiny build."""
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

import runtime.backends
from benchmarks.compare_precision import compare_components, compare_response, main, parse_tolerance, top1_agreement
from benchmarks.machine import backend_engines
from export.specs import component_specs
from runtime.backends import DeviceTensor, OrtEngine, TorchEngine, require_tensorrt
from runtime.manifest import Build
from runtime.precision import compare, cosine, rule_for
from runtime.request import Response
from train.components import build_component

TOL = {"atol": 1e-4, "rtol": 1e-4}


def ramp(n=16):
    return np.linspace(-2.0, 2.0, n, dtype=np.float32)


def test_identical_arrays_pass_with_zero_error():
    r = compare(ramp(), ramp(), **TOL)
    assert r["pass"] and r["failures"] == 0 and r["max_abs"] == 0.0 and r["cosine"] == 1.0


def test_one_element_beyond_both_tolerances_fails():
    cand = ramp()
    cand[3] += 1e-2
    r = compare(ramp(), cand, **TOL)
    assert not r["pass"] and r["failures"] == 1 and r["max_abs"] == pytest.approx(1e-2, rel=1e-3)


def test_beyond_one_tolerance_but_within_the_other_passes():
    big, small = np.full(4, 1000.0, np.float32), np.full(4, 1e-6, np.float32)
    assert compare(big, big + 0.01, **TOL)["pass"]  # abs 1e-2 > atol, rel 1e-5 <= rtol
    assert compare(small, small * 2, **TOL)["pass"]  # rel 1 > rtol, abs 1e-6 <= atol


def test_nan_always_fails_even_where_the_reference_has_it_too():
    cand = ramp()
    cand[0] = np.nan
    assert not compare(ramp(), cand, **TOL)["pass"]
    ref = ramp()
    ref[0] = np.nan
    r = compare(ref, cand, **TOL)
    assert not r["pass"] and "NaN" in r["reason"]


def test_infinities_must_match():
    ref = ramp()
    ref[1] = -np.inf
    assert compare(ref, ref.copy(), **TOL)["pass"]
    cand = ref.copy()
    cand[1] = np.inf
    assert not compare(ref, cand, **TOL)["pass"]


def test_shape_mismatch_fails():
    r = compare(ramp(16), ramp(16).reshape(4, 4), **TOL)
    assert not r["pass"] and "shapes differ" in r["reason"]


def test_cosine():
    assert cosine(ramp(), ramp()) == pytest.approx(1.0)
    assert cosine(ramp(), -ramp()) == pytest.approx(-1.0)
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0 and cosine(np.zeros(3), np.ones(3)) == 0.0


def test_half_precision_is_judged_on_the_median():
    cand = ramp(100)
    cand[:10] += 1.0  # a few outliers: the median element is still exact
    assert rule_for("fp16") == "median" and rule_for("fp32") == "elementwise"
    median = compare(ramp(100), cand, 1e-3, 1e-3, "median")
    assert median["pass"] and median["failures"] == 10 and median["max_abs"] == pytest.approx(1.0)
    assert not compare(ramp(100), cand, 1e-3, 1e-3, "elementwise")["pass"]
    assert not compare(ramp(100), ramp(100) + 1.0, 1e-3, 1e-3, "median")["pass"]


def test_tolerance_flag():
    assert parse_tolerance("llm.logits=1e-3") == ("llm.logits", (1e-3, 1e-3))
    assert parse_tolerance("sd_unet=1e-3,1e-2") == ("sd_unet", (1e-3, 1e-2))
    with pytest.raises(Exception, match="ATOL"):
        parse_tolerance("llm.logits")


def test_top1_flip_between_near_equal_logits_is_a_tie_not_a_failure():
    expected = np.array([[1.0, 0.99995, 0.0], [0.0, 1.0, 2.0]], np.float32)
    got = np.array([[0.99995, 1.0, 0.0], [0.0, 2.0, 1.0]], np.float32)
    r = top1_agreement(expected, got, 1e-4, 1e-4)
    assert (r["agree"], r["ties"], r["pass"]) == (0, 1, False)
    assert top1_agreement(expected[:1], got[:1], 1e-4, 1e-4)["pass"]


def test_token_agreement_counts_over_the_longer_answer():
    image = np.zeros((4, 4, 3), np.uint8)
    r = compare_response(Response("a b", [1, 2], {"image": image}), Response("a b c", [1, 2, 3, 4], {"image": image}))
    assert r["token_agreement"] == 0.5 and not r["same_text"] and not r["pass"]
    assert r["psnr_db"] == {"image": float("inf")}


# --- the script on the tiny build ---------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tiny_build, tmp_path_factory):
    out = tmp_path_factory.mktemp("precision") / "precision.json"
    status = main(["--engines", str(tiny_build[0]), "--backends", "torch,onnxruntime,tensorrt", "--quick", "--json", str(out)])
    return status, json.loads(out.read_text()), out.with_suffix(".md").read_text()


def test_quick_run_passes_and_writes_json(quick_run):
    status, results, markdown = quick_run
    assert status == 0 and results["summary"]["pass"] and results["points"] == ["opt"]
    assert results["machine"]["cpu"] and results["machine"]["libraries"]["onnxruntime"]
    for key in ("machine", "build_versions", "tolerances", "components", "top1", "end_to_end"):
        assert results[key], key
    assert {r["component"] for r in results["components"]} >= {"llm", "sd_unet", "audioldm_vocoder"}
    row = results["components"][0]
    assert {"max_abs", "max_rel", "mean_abs", "cosine", "pass"} <= row.keys() and row["backend"] == "onnxruntime"
    assert [r["route"] for r in results["end_to_end"]] == ["text_to_image", "image_to_audio"]
    assert all(r["token_agreement"] == 1.0 and r["same_text"] for r in results["end_to_end"])
    assert "## Components vs torch" in markdown and "| onnxruntime | llm | logits | opt |" in markdown


def tensorrt_refusal(tensorrt_runs_here: bool) -> str:
    """Why the tensorrt backend refuses an onnxruntime build: the build itself where TensorRT runs,
    else the missing library or GPU."""
    return r"holds engines for onnxruntime: .*not tensorrt" if tensorrt_runs_here else r"no CUDA GPU on this machine|needs NVIDIA TensorRT"


def _tensorrt_runs_here() -> bool:
    try:
        require_tensorrt()
    except runtime.backends.BackendUnavailable:
        return False
    return True


def test_unavailable_backend_is_reported_and_does_not_fail_the_run(quick_run):
    status, results, markdown = quick_run
    assert status == 0 and results["backends"] == ["torch", "onnxruntime"]
    assert re.search(tensorrt_refusal(_tensorrt_runs_here()), results["unavailable"]["tensorrt"])
    assert not any(r["backend"] == "tensorrt" for r in results["components"] + results["end_to_end"])
    assert "Unavailable backends" in markdown


def test_a_noisy_output_fails_the_run_and_is_named(tiny_build, tmp_path, monkeypatch, capsys):
    run = OrtEngine.run

    def noisy(self, feeds):
        out = run(self, feeds)
        if self.io["name"] == "projector_image":
            out["embeds"] = out["embeds"] + np.random.default_rng(0).normal(0, 1e-2, out["embeds"].shape).astype(np.float32)
        return out

    monkeypatch.setattr(OrtEngine, "run", noisy)
    out = tmp_path / "p.json"
    assert main(["--engines", str(tiny_build[0]), "--quick", "--json", str(out)]) == 1
    failed = [(r["component"], r["output"]) for r in json.loads(out.read_text())["components"] if not r["pass"]]
    assert failed == [("projector_image", "embeds")]
    printed = capsys.readouterr().out
    assert "projector_image" in printed and "FAIL" in printed and "Summary" in printed


def test_bisect_names_the_first_node_out_of_a_forced_tolerance(tiny_build, tmp_path):
    # Tolerance 0: ONNX Runtime's optimised CPU convolution (ORT_ENABLE_ALL) rounds differently from
    # the unoptimised one in the last bits, so some node must be named.
    out = tmp_path / "bisect.json"
    argv = ["--engines", str(tiny_build[0]), "--bisect", "sd_vae_decoder", "--tolerance", "sd_vae_decoder=0", "--json", str(out)]
    assert main(argv) == 1
    result = json.loads(out.read_text())["bisect"]
    hit = result["first_failure"]
    raw = onnx.load(str(tiny_build[0] / "sd_vae_decoder" / "model.onnx"))
    assert {(n.name, n.op_type) for n in raw.graph.node} >= {(hit["node"], hit["op_type"])}
    assert hit["max_abs"] > 0 and result["compared"] > 10


def test_on_a_tensorrt_host_an_onnxruntime_build_is_refused_for_being_one(tmp_path, monkeypatch):
    """What a GPU host with TensorRT answers (simulated: TensorRT found, a CUDA device present)."""
    monkeypatch.setattr(runtime.backends, "require_tensorrt", lambda: SimpleNamespace(__version__="10.13"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    build = Build(tmp_path, {"components": {"llm": {"backend": "onnxruntime", "files": {}}}, "constants": {"files": {}}})
    engines, unavailable = backend_engines(build, ["tensorrt"])
    assert not engines and re.search(tensorrt_refusal(True), unavailable["tensorrt"])


class DeviceCache:
    """Stands in for a TensorRT LLM engine on the CPU: the PyTorch module's outputs, the present
    cache handed back as a DeviceTensor (what TrtEngine returns for state outputs)."""

    def __init__(self, engine: TorchEngine) -> None:
        self.engine, self.name, self.version = engine, "llm", 0

    def run(self, feeds):
        out = self.engine.run(feeds)
        self.version += 1
        cache = {n: DeviceTensor(self, torch.from_numpy(out[n]), self.version) for n in ("present_keys", "present_values")}
        return {**out, **cache}


def test_a_device_resident_output_is_compared_after_reading_it_back(tiny_model):
    spec = component_specs(tiny_model.config)["llm"]
    io = {"name": "llm", **spec.to_json()}
    torch_llm = TorchEngine(build_component(tiny_model, "llm"), io)
    build = Build(Path("."), {"config": tiny_model.config, "components": {"llm": {"precision": "fp32"}}})
    engines = {"torch": {"llm": torch_llm}, "tensorrt": {"llm": DeviceCache(torch_llm)}}
    rows = compare_components(build, engines, "torch", ("min", "opt"), 0, {}, "fp32")
    assert [(r["output"], r["point"], r["pass"]) for r in rows] == [(o, p, True) for p in ("min", "opt") for o in spec.output_names]
    assert all(r["max_abs"] == 0.0 for r in rows)
