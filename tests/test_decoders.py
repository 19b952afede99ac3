"""The tiny diffusion decoders: shapes, unconditional embeddings, save/load, reference generation."""
from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from train.decoders import (
    TEXT_PARTS,
    UNCOND_FILE,
    DecoderPipeline,
    build_decoder,
    build_pipeline,
    caption_tokenizer,
    generate,
    load_decoder,
    load_text_encoder,
    save_decoder,
    unconditional_embedding,
)
from train.presets import get_preset

SECTIONS = get_preset("tiny")["decoders"]
MODALITIES = list(SECTIONS)
STEPS = 2  # the whole denoising loop with guidance, at a quarter of the preset's steps


@pytest.fixture(scope="module")
def built() -> dict[str, dict[str, Any]]:
    torch.manual_seed(0)
    return {m: build_decoder(SECTIONS[m]) for m in MODALITIES}


@pytest.fixture(scope="module")
def saved(built: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decoders")
    for m in MODALITIES:
        save_decoder(built[m], root / m)
    return {m: root / m for m in MODALITIES}


def _prompt_embeds(section: dict[str, Any]) -> torch.Tensor:
    shape = (1, section["embed_tokens"], section["embed_dim"])
    return torch.randn(shape, generator=torch.Generator().manual_seed(7))


def _generate(decoder: DecoderPipeline, modality: str, seed: int) -> np.ndarray:
    section = SECTIONS[modality]
    generator = torch.Generator().manual_seed(seed)
    return generate(decoder, section, _prompt_embeds(section), steps=STEPS, generator=generator)


def _pipeline(components: dict[str, Any], modality: str) -> DecoderPipeline:
    return build_pipeline(components, SECTIONS[modality], progress=False)


def _latent_side(section: dict[str, Any], pixels: int) -> int:
    return pixels // 2 ** (len(section["vae"]["block_out_channels"]) - 1)


@torch.no_grad()
def test_image_shapes(built: dict[str, dict[str, Any]]) -> None:
    s, c = SECTIONS["image"], built["image"]
    pixels = torch.randn(1, 3, s["height"], s["width"])
    latents = c["vae"].encode(pixels).latent_dist.mode()
    h, w = _latent_side(s, s["height"]), _latent_side(s, s["width"])
    assert latents.shape == (1, s["vae"]["latent_channels"], h, w)
    assert c["vae"].decode(latents).sample.shape == pixels.shape
    text = torch.randn(2, s["embed_tokens"], s["embed_dim"])
    noise = c["unet"](latents.repeat(2, 1, 1, 1), 10, encoder_hidden_states=text).sample
    assert noise.shape == (2, s["unet"]["out_channels"], h, w)


@torch.no_grad()
def test_video_shapes(built: dict[str, dict[str, Any]]) -> None:
    s, c = SECTIONS["video"], built["video"]
    frames = torch.randn(s["frames"], 3, s["height"], s["width"])  # the VAE is 2D: frames go as a batch
    latents = c["vae"].encode(frames).latent_dist.mode()
    h, w = _latent_side(s, s["height"]), _latent_side(s, s["width"])
    assert latents.shape == (s["frames"], s["vae"]["latent_channels"], h, w)
    assert c["vae"].decode(latents).sample.shape == frames.shape
    video_latents = latents.permute(1, 0, 2, 3).unsqueeze(0)  # (batch, channels, frames, h, w)
    text = torch.randn(1, s["embed_tokens"], s["embed_dim"])
    noise = c["unet"](video_latents, 10, encoder_hidden_states=text).sample
    assert noise.shape == (1, s["unet"]["out_channels"], s["frames"], h, w)


@torch.no_grad()
def test_audio_shapes(built: dict[str, dict[str, Any]]) -> None:
    s, c = SECTIONS["audio"], built["audio"]
    hop = int(np.prod(s["vocoder"]["upsample_rates"]))
    mel_frames, mel_bins = int(s["audio_length_s"] * s["sample_rate"]) // hop, s["vocoder"]["model_in_dim"]
    mel = torch.randn(1, 1, mel_frames, mel_bins)
    latents = c["vae"].encode(mel).latent_dist.mode()
    h, w = _latent_side(s, mel_frames), _latent_side(s, mel_bins)
    assert latents.shape == (1, s["vae"]["latent_channels"], h, w)
    assert c["vae"].decode(latents).sample.shape == mel.shape
    # AudioLDM conditions through class_labels; its cross-attention blocks get no text (as in the pipeline)
    labels = torch.randn(1, s["embed_dim"])
    noise = c["unet"](latents, 10, encoder_hidden_states=None, class_labels=labels).sample
    assert noise.shape == (1, s["unet"]["out_channels"], h, w)
    # odd kernel-minus-stride transposed convs overshoot a little (16032 here); the pipeline trims to length
    waveform = c["vocoder"](mel[:, 0])
    assert waveform.shape[0] == 1 and waveform.shape[1] >= mel_frames * hop


@pytest.mark.parametrize("modality", MODALITIES)
def test_unconditional_embedding_shape_and_seed(modality: str) -> None:
    s = SECTIONS[modality]
    torch.manual_seed(3)
    first = unconditional_embedding(s)
    torch.manual_seed(3)
    again = unconditional_embedding(s)
    torch.manual_seed(4)
    other = unconditional_embedding(s)
    assert first.shape == (s["embed_tokens"], s["embed_dim"])
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_audio_unconditional_embedding_is_l2_normalised() -> None:
    torch.manual_seed(0)
    norms = unconditional_embedding(SECTIONS["audio"]).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_text_encoder_must_match_the_embedding_size() -> None:
    section = copy.deepcopy(SECTIONS["image"])
    section["text_encoder"]["max_position_embeddings"] = 16
    with pytest.raises(ValueError, match="embedding is"):
        unconditional_embedding(section)


@pytest.mark.parametrize("modality", MODALITIES)
def test_save_load_round_trip(
    modality: str, built: dict[str, dict[str, Any]], saved: dict[str, Path]
) -> None:
    assert not list(saved[modality].rglob("*.bin"))  # safetensors only
    loaded = load_decoder(saved[modality], SECTIONS[modality])
    original = built[modality]
    assert loaded.keys() == original.keys() - set(TEXT_PARTS)  # the text encoder is for training only
    assert torch.equal(loaded["uncond_embedding"], original["uncond_embedding"])
    for name in ("unet", "vae", "vocoder"):
        if name in original:
            for key, value in original[name].state_dict().items():
                assert torch.equal(loaded[name].state_dict()[key], value), f"{name}.{key}"
    before = _generate(_pipeline(original, modality), modality, seed=0)
    after = _generate(_pipeline(loaded, modality), modality, seed=0)
    np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize(
    ("modality", "component", "field", "value"),
    [
        ("image", "unet", "cross_attention_dim", 48),
        ("image", "vae", "latent_channels", 8),
        ("image", "scheduler", "prediction_type", "epsilon"),
        ("video", "unet", "block_out_channels", [32, 32]),
        ("audio", "vocoder", "model_in_dim", 64),
    ],
)
def test_load_rejects_a_different_section(
    modality: str, component: str, field: str, value: Any, saved: dict[str, Path]
) -> None:
    section = copy.deepcopy(SECTIONS[modality])
    section[component][field] = value
    with pytest.raises(ValueError, match=rf"{component}: config field '{field}'"):
        load_decoder(saved[modality], section)


def test_load_rejects_a_different_embedding_size(saved: dict[str, Path]) -> None:
    section = copy.deepcopy(SECTIONS["image"])
    section["embed_tokens"] = 77
    with pytest.raises(ValueError, match=UNCOND_FILE):
        load_decoder(saved["image"], section)


@pytest.mark.parametrize("missing", ["vae", "scheduler", "vocoder", UNCOND_FILE])
def test_load_names_a_missing_part(missing: str, saved: dict[str, Path], tmp_path: Path) -> None:
    folder = shutil.copytree(saved["audio"], tmp_path / "audio")
    target = folder / missing
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        load_decoder(folder, SECTIONS["audio"])


def _expected_shape(modality: str) -> tuple[int, ...]:
    s = SECTIONS[modality]
    if modality == "audio":
        return (int(s["sample_rate"] * s["audio_length_s"]),)
    frames = (s["frames"],) if modality == "video" else ()
    return (*frames, s["height"], s["width"], 3)


@pytest.mark.parametrize("modality", MODALITIES)
def test_generate_shape_dtype_and_seed(modality: str, built: dict[str, dict[str, Any]]) -> None:
    decoder = _pipeline(built[modality], modality)
    first, again, other = (_generate(decoder, modality, seed) for seed in (0, 0, 1))
    assert first.shape == _expected_shape(modality)
    assert first.dtype == (np.float32 if modality == "audio" else np.uint8)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_generate_rejects_a_wrong_embedding_shape(built: dict[str, dict[str, Any]]) -> None:
    decoder = _pipeline(built["image"], "image")
    with pytest.raises(ValueError, match="prompt_embeds is"):
        generate(decoder, SECTIONS["image"], torch.zeros(1, 77, 768))


@pytest.mark.parametrize("modality", MODALITIES)
def test_the_text_encoder_is_kept_and_saved(modality: str, built: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """build_decoder keeps the encoder the unconditional embedding came from; load_text_encoder reads it
    back with the tokenizer a caller adds."""
    section = SECTIONS[modality]
    components = dict(built[modality])
    components["tokenizer"] = caption_tokenizer(["a red circle", "a blue square"], section, ["red", "blue"])
    save_decoder(components, tmp_path / modality)
    encoder, tokenizer = load_text_encoder(tmp_path / modality, section)
    for key, value in built[modality]["text_encoder"].state_dict().items():
        assert torch.equal(encoder.state_dict()[key], value), key
    assert tokenizer("a red circle").input_ids[0] == section["text_encoder"]["bos_token_id"]


def test_a_decoder_without_text_encoder_is_named(saved: dict[str, Path], tmp_path: Path) -> None:
    folder = shutil.copytree(saved["image"], tmp_path / "sd")
    shutil.rmtree(folder / "text_encoder")
    with pytest.raises(FileNotFoundError, match=r"sd/text_encoder: missing; caption embeddings need"):
        load_text_encoder(folder, SECTIONS["image"])
