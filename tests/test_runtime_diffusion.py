"""runtime/diffusion.py against the diffusers pipelines of train/decoders.py, on the tiny build."""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from runtime.backends import Engines
from runtime.diffusion import Decoder
from runtime.manifest import Build, read_manifest
from train.decoders import build_pipeline, generate

MODALITIES = ("image", "video", "audio")
STEPS, SEED = 3, 11
MIN_PSNR = {"onnxruntime": 40.0, "torch": 60.0}  # the torch backend runs the reference's own modules


@pytest.fixture(scope="module")
def build(tiny_build) -> Build:
    return read_manifest(tiny_build[0])


@pytest.fixture(scope="module")
def engines(build: Build) -> dict[str, Engines]:
    return {backend: Engines(build, backend, threads=2) for backend in MIN_PSNR}


def _embeds(section: dict[str, Any]) -> np.ndarray:
    """Seeded random projector output."""
    shape = (1, section["embed_tokens"], section["embed_dim"])
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def reference(tiny_model: Any) -> Callable[[str, float], np.ndarray]:
    """modality, guidance -> the diffusers pipeline's output at STEPS and SEED, computed once."""
    cache: dict[tuple[str, float], np.ndarray] = {}

    def get(modality: str, guidance: float) -> np.ndarray:
        if (modality, guidance) not in cache:
            section = tiny_model.config["decoders"][modality]
            pipeline = build_pipeline(tiny_model.decoders[modality], section, progress=False)
            embeds, generator = torch.from_numpy(_embeds(section)), torch.Generator().manual_seed(SEED)
            cache[modality, guidance] = generate(
                pipeline, section, embeds, steps=STEPS, guidance=guidance, generator=generator
            )
        return cache[modality, guidance]

    return get


def psnr(output: np.ndarray, reference: np.ndarray) -> float:
    """10·log10(peak² / mean((output - reference)²)) in dB; peak 255 for uint8 pixels, max |reference|
    for a waveform (whose scale is the vocoder's, not a fixed range)."""
    a, b = output.astype(np.float64), reference.astype(np.float64)
    peak = 255.0 if reference.dtype == np.uint8 else np.abs(b).max()
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))


class Spy:
    """Engines that record every call as (engine name, feeds), to see how the decoder drives them."""

    def __init__(self, engines: Engines) -> None:
        self.engines, self.calls = engines, []

    def __getitem__(self, name: str) -> Recording:
        return Recording(name, self.engines[name], self.calls)


class Recording:
    def __init__(self, name: str, engine: Any, calls: list[tuple[str, dict[str, np.ndarray]]]) -> None:
        self.name, self.engine, self.calls = name, engine, calls

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append((self.name, feeds))
        return self.engine.run(feeds)


@pytest.mark.parametrize("backend", list(MIN_PSNR))
@pytest.mark.parametrize("modality", MODALITIES)
def test_matches_the_diffusers_pipeline(engines, build, reference, modality, backend) -> None:
    decoder = Decoder(engines[backend], build, modality)
    guidance = decoder.section["guidance"]
    out = decoder.generate(_embeds(decoder.section), SEED, steps=STEPS, guidance=guidance)
    ref = reference(modality, guidance)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert psnr(out, ref) >= MIN_PSNR[backend], f"{modality} on {backend}: {psnr(out, ref):.1f} dB"


def test_guidance_one_skips_classifier_free_guidance_like_the_pipeline(engines, build, reference) -> None:
    spy = Spy(engines["onnxruntime"])
    decoder = Decoder(spy, build, "image")
    out = decoder.generate(_embeds(decoder.section), SEED, steps=STEPS, guidance=1.0)
    assert psnr(out, reference("image", 1.0)) >= 40.0
    unet_feeds = [feeds for name, feeds in spy.calls if name == "sd_unet"]
    assert all(len(feeds["sample"]) == 1 for feeds in unet_feeds)


@pytest.mark.parametrize("modality", MODALITIES)
def test_one_batched_unet_call_per_step_negatives_first(engines, build, modality) -> None:
    spy = Spy(engines["onnxruntime"])
    decoder = Decoder(spy, build, modality)
    steps: list[tuple[int, int]] = []
    decoder.generate(_embeds(decoder.section), SEED, steps=STEPS, on_step=lambda i, n: steps.append((i, n)))
    unet_feeds = [feeds for name, feeds in spy.calls if name.endswith("_unet")]
    total = len(unet_feeds)  # the scheduler's timestep count: PNDM without PRK steps adds one
    decoder.scheduler.set_timesteps(STEPS)
    assert total == len(decoder.scheduler.timesteps) >= STEPS
    assert steps == [(i, total) for i in range(1, total + 1)]
    cond = unet_feeds[0][decoder.condition]
    assert len(cond) == 2 and len(unet_feeds[0]["sample"]) == 2
    np.testing.assert_array_equal(cond[0].reshape(decoder.negative.shape), decoder.negative)


def test_video_frames_decode_in_chunks_of_the_vae_batch_range(engines, build) -> None:
    spy = Spy(engines["onnxruntime"])
    decoder = Decoder(spy, build, "video")
    embeds = _embeds(decoder.section)
    whole = decoder.generate(embeds, SEED, steps=1)
    decoder.vae_batch = 3
    chunked = decoder.generate(embeds, SEED, steps=1)
    vae_batches = [len(feeds["latent"]) for name, feeds in spy.calls if name == "zeroscope_vae_decoder"]
    frames = decoder.section["frames"]
    assert vae_batches == [frames, *[3] * (frames // 3), *([frames % 3] if frames % 3 else [])]
    assert psnr(chunked, whole) >= 40.0


@pytest.mark.parametrize("modality", MODALITIES)
def test_a_seed_fixes_the_output(engines, build, modality) -> None:
    decoder = Decoder(engines["onnxruntime"], build, modality)
    embeds = _embeds(decoder.section)
    first, again, other = (decoder.generate(embeds, seed, steps=2) for seed in (1, 1, 2))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_bad_requests_are_refused(engines, build) -> None:
    decoder = Decoder(engines["onnxruntime"], build, "image")
    embeds = _embeds(decoder.section)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        decoder.generate(embeds, SEED, steps=0)
    want = re.escape(f"float32 {tuple(embeds.shape)}")
    with pytest.raises(ValueError, match=want):
        decoder.generate(embeds[:, :4], SEED, steps=1)
    with pytest.raises(ValueError, match=want):
        decoder.generate(embeds.astype(np.float64), SEED, steps=1)
    with pytest.raises(ValueError, match="no 'smell' decoder"):
        Decoder(engines["onnxruntime"], build, "smell")
