"""The three training stages on the tiny checkpoint: loss, freezing, checkpoint, engines, resume, DDP."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

from train.mel import N_FFT, frame_count, hop_length, mel_target
from train.model import load_checkpoint
from train.presets import TINY
from train.stages import signal_ids
from train.train import TrainError, main, run
from train.train_config import ConfigError, load_config

sys.path.insert(0, str(Path(__file__).parent))
from train_world import small_world  # noqa: E402

from tests.conftest import MIXED_PROJECTOR_MODES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "train" / "configs"
STAGE_PARTS = {
    1: {"input_projection.safetensors"},
    2: {"projector_image.safetensors", "projector_video.safetensors", "projector_audio.safetensors", "llm.safetensors"},
    3: {"lora.safetensors", "input_projection.safetensors", "llm.safetensors",
        "projector_image.safetensors", "projector_video.safetensors", "projector_audio.safetensors"},
}


def stage_config(folder: Path, stage: int, **overrides: object) -> Path:
    """The stage's real config, over which a test sets its own epochs and extras."""
    lines = [f"extends: {CONFIGS / f'stage_{stage}.yaml'}"] + [f"{k}: {v}" for k, v in overrides.items()]
    path = folder / f"stage_{stage}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dir) -> dict[int, tuple[Path, list[dict]]]:
    """Each stage run for 5 steps on one fixed batch of 4 (one batch per epoch, 5 epochs)."""
    runs = {}
    for stage in (1, 2, 3):
        folder = tmp_path_factory.mktemp(f"stage{stage}")
        data = small_world(folder / "data", stage, tiny_dir)
        # tiny_dir is the trained embedded model: Adam's first step moves every weight by about the
        # rate, and at the tiny preset's 1e-3 that overshoots its stage-3 minimum (loss 0.87 -> 1.46)
        config = stage_config(folder, stage, epochs=5, presets="{tiny: {optimizer: {lr: 3.0e-4}}}")
        rows = run(config, tiny_dir, folder / "out", data, progress=False)
        runs[stage] = (folder / "out", rows)
    return runs


def test_config_extends_base_and_preset(tmp_path):
    tiny = load_config(CONFIGS / "stage_3.yaml", "tiny")
    full = load_config(CONFIGS / "stage_3.yaml", "nextgpt-7b")
    assert full["optimizer"]["lr"] == 5e-4 and tiny["optimizer"]["lr"] == 1e-3  # the tiny preset's CPU rate
    assert full["optimizer"]["betas"] == [0.9, 0.95] and full["clip_grad_norm"] == 1.0
    assert full["loss"]["cap_scale"] == {"image": 1.0, "video": 2.0, "audio": 1.0}  # merged key by key
    assert load_config(CONFIGS / "stage_1.yaml", "nextgpt-7b")["train"] == ["input_projection"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: {CONFIGS / 'stage_1.yaml'}\nlearning_rate: 1\n")
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        load_config(bad, "tiny")
    bad.write_text(f"extends: {CONFIGS / 'stage_1.yaml'}\ntrain: [imagebind]\n")
    with pytest.raises(ConfigError, match="cannot train 'imagebind'"):
        load_config(bad, "tiny")
    assert load_config(CONFIGS / "stage_2.yaml", "tiny")["loss"]["gen_modalities"] == ["image", "video", "audio"]
    bad.write_text(f"extends: {CONFIGS / 'stage_2.yaml'}\nloss: {{gen_loss: true, gen_modalities: [text]}}\n")
    with pytest.raises(ConfigError, match="gen_modalities"):
        load_config(bad, "tiny")
    for repeat in ("{text: 2}", "{audio: 0}", "[audio]"):
        bad.write_text(f"extends: {CONFIGS / 'stage_2.yaml'}\nrepeat: {repeat}\n")
        with pytest.raises(ConfigError, match="repeat maps"):
            load_config(bad, "tiny")


def test_repeat_shows_a_modality_s_examples_more_often(tmp_path, tiny_dir, tiny_model):
    from train.train import make_dataset

    data = small_world(tmp_path / "data", 2, tiny_dir)
    config = load_config(CONFIGS / "stage_2.yaml", "tiny")
    once = make_dataset(tiny_model, config, data, report=False)
    thrice = make_dataset(tiny_model, {**config, "repeat": {"audio": 3}}, data, report=False)
    count = lambda ds, m: sum(m in e.targets for e in ds.examples)  # noqa: E731
    assert count(once, "audio") > 0 and count(thrice, "audio") == 3 * count(once, "audio")
    assert count(thrice, "image") == count(once, "image") and count(thrice, "video") == count(once, "video")


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_lowers_loss_on_a_fixed_batch(trained, stage):
    _, rows = trained[stage]
    assert len(rows) == 5
    assert rows[-1]["loss"] < rows[0]["loss"], [r["loss"] for r in rows]
    if stage > 1:  # the projectors are pulled towards the caption embeddings
        caps = [k for k in rows[0] if k.startswith("cap_")]
        assert caps and sum(rows[-1][k] for k in caps) < sum(rows[0][k] for k in caps)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_only_trained_parts_change(trained, tiny_dir, tiny_model, stage):
    out = trained[stage][0] / "checkpoint"
    load_checkpoint(out)  # every part still matches config.json
    before, after = file_hashes(tiny_dir), file_hashes(out)
    assert before.keys() == after.keys()
    changed = {name for name in before if before[name] != after[name]}
    assert changed == STAGE_PARTS[stage]
    if "llm.safetensors" in changed:  # only the signal-token rows of the embedding and lm_head
        old, new = load_file(tiny_dir / "llm.safetensors"), load_file(out / "llm.safetensors")
        rows = torch.tensor(signal_ids(tiny_model.config))
        frozen = torch.ones(old["lm_head.weight"].shape[0], dtype=torch.bool)
        frozen[rows] = False
        for key in old:
            if key in ("model.embed_tokens.weight", "lm_head.weight"):
                assert torch.equal(old[key][frozen], new[key][frozen]), key
                assert not torch.equal(old[key][rows], new[key][rows]), key
            else:
                assert torch.equal(old[key], new[key]), key


def test_trained_checkpoint_builds_engines_and_answers(trained, tiny_build, tmp_path):
    """Stage 3 rewrites every trainable part: rebuild the engines that read them over a copy of the
    session's build, and the runtime answers as the PyTorch reference does on the trained weights."""
    from export.build_engines import build
    from runtime.pipeline import Any2AnyPipeline
    from runtime.request import Request
    from train.demo import write_sample_inputs
    from train.reference import ReferencePipeline

    checkpoint = trained[3][0] / "checkpoint"
    engines = tmp_path / "engines"
    shutil.copytree(tiny_build[0], engines)
    outcomes = {o.name: o.status for o in build(checkpoint, engines, progress=False)}
    rebuilt = {n for n, status in outcomes.items() if status == "built"}
    assert rebuilt == {"imagebind_vision", "imagebind_audio", "llm", "projector_image", "projector_video", "projector_audio"}
    reference = ReferencePipeline(load_checkpoint(checkpoint), progress=False)
    files = write_sample_inputs(tmp_path / "inputs", reference.config["imagebind"]["audio"]["sample_rate"])
    request = Request(prompt="make a sound that fits this picture", files={"image": files["image"]}, output="audio", seed=0, steps=2)
    got, expected = Any2AnyPipeline(engines, "onnxruntime")(request), reference(request)
    assert got.token_ids == expected.token_ids and got.text == expected.text
    assert "audio" in got.media


def test_resumed_run_matches_uninterrupted(tmp_path, tiny_dir):
    """Stage 3 (LoRA dropout draws random numbers, so the RNG state must come back too)."""
    data = small_world(tmp_path / "data", 3, tiny_dir)
    args = (stage_config(tmp_path, 3, epochs=4), tiny_dir)
    whole = run(*args, tmp_path / "whole", data, progress=False)
    first = run(*args, tmp_path / "parts", data, max_steps=2, progress=False)
    rest = run(*args, tmp_path / "parts", data, resume=True, progress=False)
    assert [r["step"] for r in first + rest] == [1, 2, 3, 4]
    for a, b in zip(whole, first + rest):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7) and a["lr"] == b["lr"]
    assert file_hashes(tmp_path / "whole" / "checkpoint") == file_hashes(tmp_path / "parts" / "checkpoint")
    # the stages train with torch's deterministic kernels: without them two full stage-2 runs of the
    # recipe from one checkpoint ended with different weights (docs/notes/reproducibility.md)
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()


@pytest.mark.parametrize("stage", [1, 2])
def test_two_gloo_processes_match_one(tmp_path, tiny_dir, stage):
    """torch.distributed.run with 2 CPU processes: each gets half of the global batch, DDP averages.
    In stage 2 the halves hold different output modalities, so their loss terms differ.

    Adam divides by the gradient's running magnitude, so a gradient that is zero in exact arithmetic
    (the attention's key bias) turns float noise into a full-size step; eps 1 (and lr 1) makes each
    step about the gradient itself, which is what the two runs must agree on."""
    data = small_world(tmp_path / "data", stage, tiny_dir)
    config = stage_config(tmp_path, stage, epochs=3, presets="{tiny: {optimizer: {lr: 1.0, eps: 1.0}}}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "train/train.py", "--config", str(config), "--checkpoint", str(tiny_dir),
               "--out", str(tmp_path / "ddp"), "--data", str(data)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run(config, tiny_dir, tmp_path / "single", data, progress=False)
    for part in STAGE_PARTS[stage]:
        two = load_file(tmp_path / "ddp" / "checkpoint" / part)
        one = load_file(tmp_path / "single" / "checkpoint" / part)
        start = load_file(tiny_dir / part)
        assert any(not torch.equal(one[k], start[k]) for k in one), part
        for key in one:
            torch.testing.assert_close(two[key], one[key], atol=1e-6, rtol=1e-6)


def test_generation_loss_switch(tmp_path, tiny_dir):
    """gen_loss: the frozen UNet's noise prediction on the target's latents, through the projector;
    every batch of the stage-2 world holds a text→audio record, so each step has an audio term."""
    data = small_world(tmp_path / "data", 2, tiny_dir)
    config = stage_config(tmp_path, 2, epochs=2, loss="{gen_loss: true}")
    rows = run(config, tiny_dir, tmp_path / "out", data, progress=False)
    assert {"gen_image", "gen_video", "gen_audio"} <= set(rows[0])
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    audio = torch.tensor([r["gen_audio"] for r in rows])
    assert torch.isfinite(audio).all() and (audio > 0).all(), audio
    decoders = tmp_path / "out" / "checkpoint" / "decoders"
    assert file_hashes(decoders) == file_hashes(tiny_dir / "decoders")


def test_gen_audio_mel_front_end():
    """AudioLDM's log-mel against transformers' numpy spectrogram with the same settings; a pure
    tone peaks in the mel filter that weighs its frequency most; loudness is normalized away."""
    section = TINY["decoders"]["audio"]
    rate, n_mels = section["vocoder"]["sampling_rate"], section["vocoder"]["model_in_dim"]
    tone_hz = 1000.0
    wave = 0.3 * np.sin(2 * np.pi * tone_hz * np.arange(rate) / rate)
    mel = mel_target(wave, section)
    assert mel.shape == (1, frame_count(section), n_mels)
    assert frame_count(section) == section["audio_length_s"] * rate // hop_length(section)  # 32, a multiple of 2

    filters = mel_filter_bank(N_FFT // 2 + 1, n_mels, 0.0, rate / 2, rate, norm="slaney", mel_scale="slaney")
    normalized = (wave - wave.mean()) / np.abs(wave - wave.mean()).max() * 0.5
    window = window_function(N_FFT, "hann")
    expected = spectrogram(normalized.astype(np.float32), window, N_FFT, hop_length(section),
                           power=1.0, mel_filters=filters, mel_floor=1e-5, log_mel="log")
    torch.testing.assert_close(mel[0], torch.from_numpy(expected.T[: mel.shape[1]]), atol=1e-3, rtol=1e-4)

    peak = mel[0, mel.shape[1] // 2].argmax().item()
    assert peak == filters[round(tone_hz / rate * N_FFT)].argmax()
    # float32 rounding only (3.5e-4 at most, in the log of a near-empty bin); unnormalized, log 3 = 1.1 apart
    torch.testing.assert_close(mel_target(3 * wave, section), mel, atol=1e-3, rtol=1e-4)


def test_bad_runs_stop_with_one_line(tmp_path, tiny_dir, capsys):
    small_world(tmp_path / "data", 1, tiny_dir)
    base = ["--config", str(CONFIGS / "stage_1.yaml"), "--checkpoint", str(tiny_dir), "--data", str(tmp_path / "data")]
    assert main([*base, "--out", str(tmp_path / "a"), "--deepspeed", str(CONFIGS / "deepspeed_zero2.json")]) == 2
    assert "pip install deepspeed==" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    (tmp_path / "c" / "state").mkdir(parents=True)
    assert main([*base, "--out", str(tmp_path / "c"), "--force"]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main([*base[:4], "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "d")]) == 2
    assert "no records" in capsys.readouterr().err.strip()
    shutil.rmtree(tmp_path / "data" / "embeddings" / "sd")  # the image records lose their targets
    with pytest.raises(TrainError, match="fewer than one batch"):
        run(CONFIGS / "stage_2.yaml", tiny_dir, tmp_path / "e", tmp_path / "data")


def test_without_data_uses_the_cached_world(tmp_path, tiny_dir, monkeypatch):
    """No --data: the world of seed 0 from its cache ($ANY2ANY_CACHE), caption embeddings computed for
    the checkpoint on first use. A small world stands in the cache's place, so the test stays fast."""
    from train.synthetic import default_world_dir

    monkeypatch.setenv("ANY2ANY_CACHE", str(tmp_path / "cache"))
    world = small_world(tmp_path / "small", 2, tiny_dir)
    shutil.copytree(world, default_world_dir(0))
    shutil.rmtree(default_world_dir(0) / "embeddings")
    assert main(["--config", str(CONFIGS / "stage_2.yaml"), "--checkpoint", str(tiny_dir),
                 "--out", str(tmp_path / "out"), "--max-steps", "1"]) == 0
    assert (default_world_dir(0) / "embeddings" / "sd" / "index.json").is_file()
    assert (tmp_path / "out" / "log.jsonl").read_text().count("\n") == 1
    assert (tmp_path / "out" / "checkpoint" / "config.json").is_file()


@pytest.mark.parametrize("stage", [2, 3])
def test_stages_2_and_3_train_the_linear_and_qformer_projectors(tmp_path, tiny_dir, mixed_projector_dir, stage):
    data = small_world(tmp_path / "data", stage, tiny_dir)  # the same decoders: their caption embeddings
    rows = run(stage_config(tmp_path, stage, epochs=5), mixed_projector_dir, tmp_path / "out", data, progress=False)
    caps = [k for k in rows[0] if k.startswith("cap_")]
    assert caps and sum(rows[-1][k] for k in caps) < sum(rows[0][k] for k in caps), [[r[k] for k in caps] for r in rows]
    out = tmp_path / "out" / "checkpoint"
    assert load_checkpoint(out).config["projector"]["modes"] == MIXED_PROJECTOR_MODES
    before, after = file_hashes(mixed_projector_dir), file_hashes(out)
    assert all(before[f"projector_{m}.safetensors"] != after[f"projector_{m}.safetensors"] for m in MIXED_PROJECTOR_MODES)
