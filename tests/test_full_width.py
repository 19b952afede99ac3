"""Full width on the CPU: checkpoints load without drawing random weights first, and the full-width,
reduced-depth preset (`nextgpt-7b-shallow`, over 2 GB in fp32) builds with ONNX Runtime.

The build is `slow` (excluded by pyproject's addopts, so CI skips it); run it with

    .venv/bin/python -m pytest tests/test_full_width.py -m slow

It makes the random checkpoint first unless `FULL_WIDTH_CHECKPOINT` names one made by
`train/make_tiny.py --preset nextgpt-7b-shallow`.
"""
import os
from pathlib import Path

import onnx
import pytest
import torch
from torch.overrides import TorchFunctionMode

from export.build_engines import build
from export.onnx_export import EXTERNAL_DATA_BYTES, onnx_bytes
from runtime.manifest import read_manifest
from train.checkpoint import read_config
from train.model import load_checkpoint

RANDOM_FILLS = {"normal_", "uniform_", "trunc_normal_", "bernoulli_", "exponential_", "random_", "randn", "rand"}
FULL_WIDTH = ("llm", "sd_unet", "audioldm_vocoder")  # the >2 GB part, a UNet at 64x64 latents, the vocoder


class RandomFills(TorchFunctionMode):
    """Records every random fill of a tensor that holds memory (not on the meta device)."""

    def __init__(self) -> None:
        super().__init__()
        self.real: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = getattr(func, "__name__", "")
        if name in RANDOM_FILLS and args and isinstance(args[0], torch.Tensor) and not args[0].is_meta:
            self.real.append(f"{name}{tuple(args[0].shape)}")
        return func(*args, **(kwargs or {}))


def test_load_checkpoint_draws_no_random_weights(tiny_dir):
    with RandomFills() as fills:
        model = load_checkpoint(tiny_dir)
    assert fills.real == []
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])


@pytest.fixture(scope="module")
def full_width_checkpoint(tmp_path_factory) -> Path:
    given = os.environ.get("FULL_WIDTH_CHECKPOINT")
    if given:
        return Path(given)
    from train.make_tiny import make_tiny

    out = tmp_path_factory.mktemp("ckpt") / "nextgpt-7b-shallow"
    make_tiny(out, seed=0, preset_name="nextgpt-7b-shallow")
    return out


@pytest.mark.slow
def test_full_width_build_with_external_data(full_width_checkpoint, tmp_path):
    config = read_config(full_width_checkpoint)
    assert config["preset"] == "nextgpt-7b-shallow" and config["llm"]["hidden_size"] == 4096
    out = tmp_path / "engines"
    outcomes = build(full_width_checkpoint, out, components=list(FULL_WIDTH), progress=False)
    assert [o.name for o in outcomes] == list(FULL_WIDTH) and all(o.max_abs_error < 1e-4 for o in outcomes)
    manifest = read_manifest(out)
    manifest.verify_files()
    llm = manifest.component("llm")
    for rel in (llm["onnx"], llm["engine"]):  # both over 2 GB: the graph with its weights beside it
        path = out / rel
        assert onnx_bytes(path) > 2 * 2**30 and path.stat().st_size < EXTERNAL_DATA_BYTES
        assert f"{rel}.data" in llm["files"]
        onnx.checker.check_model(str(path))


@pytest.mark.slow
def test_every_other_full_width_component_verifies_at_the_profile_minimum(full_width_checkpoint, tmp_path):
    # at opt, ZeroScope's UNet attends over 2880 positions in 64 heads for 48 frames: ONNX Runtime's
    # decomposed attention holds about 100 GB of scores, so the full-width build checks at min
    from export.specs import component_specs

    rest = [n for n in component_specs(read_config(full_width_checkpoint)) if n not in FULL_WIDTH]
    outcomes = build(full_width_checkpoint, tmp_path / "engines", components=rest, progress=False, verify_at="min")
    assert [o.name for o in outcomes] == rest and all(o.max_abs_error < 1e-4 for o in outcomes)
    manifest = read_manifest(tmp_path / "engines")
    assert {manifest.component(n)["verify"]["point"] for n in rest} == {"min"}


def test_attention_scores_are_counted_from_the_traced_shapes(tiny_dir):
    from export.build_engines import attention_score_bytes
    from export.specs import component_specs
    from train.components import build_component

    model = load_checkpoint(tiny_dir)
    spec = component_specs(model.config)["zeroscope_unet"]
    module = build_component(model, spec.name)
    sizes = {p: attention_score_bytes(spec, module, p) for p in ("min", "opt")}
    # the tiny UNet's first block: 8x8 latents, 4 heads of 8 channels, 64 queries over 64 keys, per frame
    # and per batch row (batch x frames: 1 at min, 2 x 8 at opt)
    assert sizes == {"min": 1 * 4 * 64 * 64 * 4, "opt": 16 * 4 * 64 * 64 * 4}


def test_a_portable_onnx_whose_attention_is_too_big_is_checked_at_min(tiny_dir, tmp_path, monkeypatch):
    import export.build_engines as build_engines

    monkeypatch.setattr(build_engines, "VERIFY_ATTENTION_BYTES", 1)  # every attention is too big
    build(tiny_dir, tmp_path / "engines", components=["zeroscope_unet"], progress=False)
    entry = read_manifest(tmp_path / "engines").component("zeroscope_unet")
    points = {f: e["point"] for f, e in entry["verify"]["by_file"].items()}
    assert points == {"zeroscope_unet/model.opt.onnx": "opt", "zeroscope_unet/model.onnx": "min"}
    assert entry["verify"]["point"] == "opt"  # what the build was asked for, and the fused file's check


@pytest.mark.slow
def test_zeroscope_at_full_width_verifies_at_opt_with_its_fused_attention(full_width_checkpoint, tmp_path):
    # 8 GB of scores in the portable file's decomposed attention at opt: that file is checked at min
    outcomes = build(full_width_checkpoint, tmp_path / "engines", components=["zeroscope_unet"], progress=False)
    assert outcomes[0].max_abs_error < 1e-4
    by_file = read_manifest(tmp_path / "engines").component("zeroscope_unet")["verify"]["by_file"]
    assert {e["point"] for e in by_file.values()} == {"opt", "min"}


def test_the_full_width_encoders_are_imagebind_huge():
    """ImageBind huge as released (NEXTGPT-FACTS.md): 224-pixel frames in 14-pixel patches, and the
    trunks' widths; the tiny preset's smaller frames must not leak into it."""
    from train.presets import get_preset

    for name in ("nextgpt-7b", "nextgpt-7b-shallow"):
        vision, audio = (get_preset(name)["imagebind"][t] for t in ("vision", "audio"))
        assert (vision["image_size"], vision["kernel"], vision["embed_dim"], vision["num_heads"]) == (224, [2, 14, 14], 1280, 16)
        assert (vision["video_clips"], vision["num_frames"], audio["clips"]) == (5, 2, 3)
        assert (audio["num_mel_bins"], audio["target_length"], audio["embed_dim"], audio["num_heads"]) == (128, 204, 768, 12)
    assert get_preset("nextgpt-7b")["imagebind"]["vision"]["num_blocks"] == 32
