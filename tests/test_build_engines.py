"""export/build_engines.py on the tiny checkpoint: a real ONNX build, verified against PyTorch."""
import importlib.metadata
import json
import shutil

import numpy as np
import onnxruntime
import pytest
import torch
from safetensors.torch import load_file, save_file

from export import build_engines
from export.build_engines import BuildError, build, main
from export.specs import component_specs
from runtime.backends import BackendUnavailable, OrtEngine, require_tensorrt
from runtime.manifest import ManifestError, read_manifest
from train.components import build_component


def test_every_component_is_built_and_recorded(tiny_build, tiny_model):
    out, outcomes = tiny_build
    names = list(component_specs(tiny_model.config))
    assert len(names) == 13 and [o.name for o in outcomes] == names
    assert all(o.status == "built" and o.max_abs_error < 1e-4 for o in outcomes)
    manifest = read_manifest(out)
    manifest.verify_files()
    assert sorted(manifest.components) == sorted(names)
    llm = manifest.component("llm")
    assert [t["name"] for t in llm["inputs"]] == ["input_ids", "media_token", "media_position", "past_keys", "past_values"]
    assert llm["profile"]["input_ids"]["min"] == [1, 1] and llm["dims"]["past"][0] == 0
    assert set(llm["parts"]) == {"llm", "lora"}
    assert manifest.config["tokens"] == tiny_model.config["tokens"]
    assert (out / "tokenizer" / "tokenizer.json").is_file()


@pytest.mark.parametrize("point", ["min", "max"])
def test_every_engine_matches_pytorch_at_its_profile_edges(tiny_build, tiny_model, point):
    out, _ = tiny_build
    manifest = read_manifest(out)
    for name, spec in component_specs(tiny_model.config).items():
        entry = manifest.component(name)
        engine = OrtEngine(out / entry["engine"], {"name": name, **entry})
        module = build_component(tiny_model, name)
        feeds = spec.sample(spec.point(point), seed=7)
        with torch.no_grad():
            expected = module(*(torch.from_numpy(feeds[n]) for n in spec.input_names))
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = engine.run(feeds)
        for out_name, ref in zip(spec.output_names, expected):
            np.testing.assert_allclose(got[out_name], ref.numpy(), atol=1e-4, rtol=1e-4, err_msg=f"{name}.{out_name}")


def test_rebuild_is_a_no_op(tiny_build, tiny_dir, capsys):
    out, _ = tiny_build
    before = (out / "manifest.json").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.onnx")}
    with pytest.raises(SystemExit):  # an existing build is updated only when asked
        main(["--checkpoint", str(tiny_dir), "--out", str(out), "--quiet"])
    assert f"error: {out} is not empty; pass --force" in capsys.readouterr().err
    assert main(["--checkpoint", str(tiny_dir), "--out", str(out), "--quiet", "--force"]) == 0
    assert "0 built, 13 up to date" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.onnx")} == stamps
    assert json.loads((out / "manifest.json").read_text())["components"] == json.loads(before)["components"]


def test_changed_part_rebuilds_only_its_dependants(tiny_build, tiny_dir, tmp_path):
    out = shutil.copytree(tiny_build[0], tmp_path / "engines")
    ckpt = shutil.copytree(tiny_dir, tmp_path / "ckpt")
    path = ckpt / "projector_audio.safetensors"
    state = load_file(str(path))
    state["model.bias"] = state["model.bias"] + 0.5
    save_file(state, str(path))
    outcomes = build(ckpt, out, progress=False)
    assert [o.name for o in outcomes if o.status == "built"] == ["projector_audio"]
    read_manifest(out).verify_files()


def test_a_component_subset_keeps_the_others(tiny_build, tiny_dir, tmp_path):
    out = shutil.copytree(tiny_build[0], tmp_path / "engines")
    outcomes = build(tiny_dir, out, components=["projector_image"], progress=False)
    assert [(o.name, o.status) for o in outcomes] == [("projector_image", "up to date")]
    assert len(read_manifest(out).components) == 13


def test_the_verification_point_is_recorded_and_a_change_of_it_rebuilds(tiny_build, tiny_dir, tmp_path):
    out = shutil.copytree(tiny_build[0], tmp_path / "engines")
    assert read_manifest(out).component("projector_image")["verify"]["point"] == "opt"
    outcomes = build(tiny_dir, out, components=["projector_image"], progress=False, verify_at="min")
    assert [(o.name, o.status) for o in outcomes] == [("projector_image", "built")]
    assert read_manifest(out).component("projector_image")["verify"]["point"] == "min"
    with pytest.raises(BuildError, match="verify_at must be one of opt, min"):
        build(tiny_dir, out, components=["projector_image"], progress=False, verify_at="max")


def test_out_of_tolerance_fails_naming_component_and_output(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(build_engines.TOLERANCE, "fp32", 0.0)
    with pytest.raises(BuildError, match=r"projector_image: output 'embeds' differs from PyTorch \(fp32\) by up to"):
        build(tiny_dir, tmp_path / "strict", components=["projector_image"], progress=False)
    assert not (tmp_path / "strict" / "manifest.json").exists()
    assert not (tmp_path / "strict" / "projector_image").exists()


def test_mismatched_checkpoint_fails_cleanly_and_keeps_the_old_build(tiny_build, tiny_dir, tmp_path, capsys):
    out = shutil.copytree(tiny_build[0], tmp_path / "engines")
    before = (out / "manifest.json").read_bytes()
    ckpt = shutil.copytree(tiny_dir, tmp_path / "ckpt")
    (ckpt / "imagebind.safetensors").write_bytes(b"corrupt")
    assert main(["--checkpoint", str(ckpt), "--out", str(out), "--quiet", "--force"]) == 2
    assert "imagebind.safetensors: unreadable" in capsys.readouterr().err
    assert (out / "manifest.json").read_bytes() == before
    assert main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "fresh"), "--quiet"]) == 2
    assert not (tmp_path / "fresh").exists()


def test_stale_engine_is_refused(tiny_build, tmp_path):
    out = shutil.copytree(tiny_build[0], tmp_path / "engines")
    engine = out / read_manifest(out).component("sd_vae_decoder")["engine"]
    engine.write_bytes(engine.read_bytes() + b"x")
    with pytest.raises(ManifestError, match="sd_vae_decoder: .* does not match the manifest"):
        read_manifest(out).verify_files()


def test_unknown_component_and_onnxruntime_fp16_are_refused(tiny_dir, tmp_path, capsys):
    assert main(["--checkpoint", str(tiny_dir), "--out", str(tmp_path / "a"), "--components", "nope"]) == 2
    assert "unknown component 'nope'" in capsys.readouterr().err
    assert main(["--checkpoint", str(tiny_dir), "--out", str(tmp_path / "b"), "--precision", "fp16"]) == 2
    assert "the onnxruntime backend builds fp32 | int8 engines; fp16 is a --backend tensorrt build" in capsys.readouterr().err


def _tensorrt_missing() -> str | None:
    try:
        require_tensorrt()
    except BackendUnavailable as e:
        return str(e)
    return None


def test_tensorrt_backend_names_what_is_missing(tiny_dir, tmp_path, capsys):
    reason = _tensorrt_missing()
    if reason is None:
        pytest.skip("TensorRT and a GPU are present: the refusal path does not apply")
    assert main(["--checkpoint", str(tiny_dir), "--out", str(tmp_path / "trt"), "--backend", "tensorrt"]) == 2
    err = capsys.readouterr().err
    assert "TensorRT" in err or "CUDA GPU" in err
    assert not (tmp_path / "trt").exists()


@pytest.mark.tensorrt
@pytest.mark.skipif(_tensorrt_missing() is not None, reason=f"needs TensorRT and a CUDA GPU: {_tensorrt_missing()}")
def test_tensorrt_build_matches_pytorch(tiny_dir, tmp_path):
    outcomes = build(tiny_dir, tmp_path / "trt", backend="tensorrt", components=["projector_image", "sd_vae_decoder"], progress=False)
    # build() already ran each plan against its PyTorch module; this checks the recorded errors
    assert all(o.max_abs_error < 1e-4 for o in outcomes)


def test_onnxruntime_gpu_in_place_of_onnxruntime_is_found_by_its_import_name(monkeypatch):
    """onnxruntime-gpu installs the `onnxruntime` module but no distribution of that name."""
    real = importlib.metadata.Distribution.from_name.__func__

    def from_name(cls, name):
        if name == "onnxruntime":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(cls, "onnxruntime" if name == "onnxruntime-gpu" else name)

    monkeypatch.setattr(importlib.metadata.Distribution, "from_name", classmethod(from_name))
    monkeypatch.setattr(importlib.metadata, "packages_distributions", lambda: {"onnxruntime": ["onnxruntime-gpu"]})
    assert build_engines.tool_versions()["onnxruntime"] == f"onnxruntime-gpu {onnxruntime.__version__}"


def test_a_missing_tool_is_named_in_one_line(tiny_dir, tmp_path, monkeypatch, capsys):
    real = importlib.metadata.Distribution.from_name.__func__

    def from_name(cls, name):
        if name == "onnxscript":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(cls, name)

    monkeypatch.setattr(importlib.metadata.Distribution, "from_name", classmethod(from_name))
    monkeypatch.setattr(importlib.metadata, "packages_distributions", dict)
    argv = ["--checkpoint", str(tiny_dir), "--out", str(tmp_path / "e"), "--components", "projector_image", "--quiet"]
    assert build_engines.main(argv) == 2
    # the last line: the checkpoint loader draws a progress bar above it
    assert capsys.readouterr().err.splitlines()[-1] == f"error: onnxscript is not installed; the build needs {', '.join(build_engines.TOOLS)}"


def test_a_plan_for_another_gpu_architecture_is_rebuilt(tiny_model, monkeypatch):
    spec = component_specs(tiny_model.config)["projector_image"]
    keys = set()
    for arch in ("sm80", "sm90"):
        monkeypatch.setattr(build_engines, "tensorrt_info", lambda arch=arch: {"version": "10.13.0", "gpu_arch": arch, "gpu": "GPU"})
        keys.add(build_engines.build_key(spec, {}, "tensorrt", "fp32"))
    assert len(keys) == 2
