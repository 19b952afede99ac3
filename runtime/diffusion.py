"""The diffusion decoders on engines: projector embeddings -> image, video frames or waveform.

`Decoder.generate` is diffusers' StableDiffusionPipeline, TextToVideoSDPipeline and AudioLDMPipeline
(0.42.1) fed `prompt_embeds` and the unconditional embedding as `negative_prompt_embeds`, as
train/decoders.py runs them, with the UNet, the VAE decoder and AudioLDM's vocoder as engines.
The schedulers are diffusers' own: run-time code, not weights. One denoising loop serves all three;
what differs (conditioning input, latent shape, what follows the VAE) is in `_FINISH` and the manifest.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from safetensors.numpy import load_file

from runtime.backends import Engines
from runtime.manifest import Build
from runtime.stop import ShouldStop, check

StepCallback = Callable[[int, int], None]  # (steps done, steps in all)


def _unet_inputs(build: Build, name: str, section: dict[str, Any]) -> tuple[tuple[int, ...], str]:
    """One sample's latent shape and the conditioning input's name, as the manifest declares the
    UNet engine (batch 1; the frame axis at the section's frame count)."""
    sample, _, cond = build.component(f"{name}_unet")["inputs"]
    sizes = {"batch": 1, "frames": section.get("frames")}
    return tuple(sizes[d] if isinstance(d, str) else d for d in sample["shape"]), cond["name"]


def _waveform_length(section: dict[str, Any]) -> int:
    return int(section["audio_length_s"] * section["vocoder"]["sampling_rate"])


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """VAE output (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3): VaeImageProcessor.postprocess's
    denormalize and layout for output_type="np", then train/decoders.py's rounding."""
    frames = np.clip(pixels * 0.5 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    return (frames * 255).round().astype(np.uint8)


def _image(decoder: Decoder, pixels: np.ndarray) -> np.ndarray:
    return _to_uint8(pixels)[0]


def _video(decoder: Decoder, pixels: np.ndarray) -> np.ndarray:
    # one video: the VAE batch is its frames in order, which is the (frames, H, W, 3) of output_type="np"
    return _to_uint8(pixels)


def _audio(decoder: Decoder, pixels: np.ndarray) -> np.ndarray:
    # mel_spectrogram_to_waveform: (1, 1, frames, mel bins) -> squeeze the channel -> vocoder
    waveform = decoder.engines[f"{decoder.name}_vocoder"].run({"mel": pixels[:, 0]})["waveform"]
    return waveform[0, : _waveform_length(decoder.section)].astype(np.float32)


# What follows the VAE decoder, by decoder name; the rest of the differences (latent shape,
# conditioning input) are read from the manifest's UNet IO.
_FINISH: dict[str, Callable[[Decoder, np.ndarray], np.ndarray]] = {"sd": _image, "zeroscope": _video, "audioldm": _audio}


def _frames_as_batch(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, F, h, w) -> (B*F, C, h, w) as TextToVideoSDPipeline folds frames; 4-D latents as they are."""
    if latents.ndim == 4:
        return latents
    b, c, f, h, w = latents.shape
    return latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def _extra_step_kwargs(scheduler: SchedulerMixin, generator: torch.Generator) -> dict[str, Any]:
    """The pipelines' prepare_extra_step_kwargs: eta=0.0 and the generator, where step() takes them."""
    accepted = inspect.signature(scheduler.step).parameters
    return {k: v for k, v in {"eta": 0.0, "generator": generator}.items() if k in accepted}


def _step(
    scheduler: SchedulerMixin, noise: torch.Tensor, t: torch.Tensor, latents: torch.Tensor, extra: dict[str, Any]
) -> torch.Tensor:
    """scheduler.step on 4-D latents; video frames are folded into the batch around it and back."""
    prev = scheduler.step(_frames_as_batch(noise), t, _frames_as_batch(latents), **extra).prev_sample
    if latents.ndim == 4:
        return prev
    b, c, f, h, w = latents.shape
    return prev[None, :].reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


class Decoder:
    """One modality's diffusion decoder over a build's engines."""

    def __init__(self, engines: Engines, build: Build, modality: str) -> None:
        decoders = build.config["decoders"]
        if modality not in decoders:
            raise ValueError(f"the build has no {modality!r} decoder (has: {', '.join(decoders)})")
        self.engines, self.modality, self.section = engines, modality, decoders[modality]
        self.name = self.section["name"]
        if self.name not in _FINISH:
            raise ValueError(f"unknown decoder {self.name!r}; known: {', '.join(_FINISH)}")
        self.finish = _FINISH[self.name]
        self.latent_shape, self.condition = _unet_inputs(build, self.name, self.section)
        config = self.section["scheduler"]
        self.scheduler: SchedulerMixin = getattr(diffusers, config["_class_name"]).from_config(config)
        # (embed_tokens, embed_dim): the decoder's text encoder on "", the negative prompt
        self.negative = load_file(build.path(build.data["constants"]["file"]))[f"uncond_{modality}"]
        self.vae_batch = build.component(f"{self.name}_vae_decoder")["dims"]["batch"][2]

    @property
    def embeds_shape(self) -> tuple[int, int, int]:
        return 1, self.section["embed_tokens"], self.section["embed_dim"]

    def generate(
        self,
        prompt_embeds: np.ndarray,
        seed: int,
        steps: int | None = None,
        guidance: float | None = None,
        on_step: StepCallback | None = None,
        should_stop: ShouldStop | None = None,
    ) -> np.ndarray:
        """Image uint8 (H, W, 3), video uint8 (frames, H, W, 3) or audio float32 (samples,).

        Steps and guidance default to the section's. `on_step(done, total)` follows each UNet step;
        `total` is the scheduler's timestep count (PNDM without PRK steps runs `steps + 1`).
        `should_stop` is asked before every UNet step and the VAE; a reason it names raises
        `runtime.stop.Stopped`.
        """
        self._check(prompt_embeds)
        steps = self.section["steps"] if steps is None else steps
        guidance = self.section["guidance"] if guidance is None else guidance
        if steps < 1:
            raise ValueError(f"{self.name}: steps must be at least 1, got {steps}")
        latents = self._denoise(prompt_embeds, seed, steps, guidance, on_step, should_stop)
        check(should_stop)
        return self.finish(self, self._decode(latents))

    def _check(self, prompt_embeds: np.ndarray) -> None:
        expected = self.embeds_shape
        if not isinstance(prompt_embeds, np.ndarray):
            raise ValueError(f"{self.name}: prompt_embeds must be a float32 numpy array {expected}")
        if prompt_embeds.dtype != np.float32 or prompt_embeds.shape != expected:
            got = f"{prompt_embeds.dtype} {prompt_embeds.shape}"
            raise ValueError(f"{self.name}: prompt_embeds must be float32 {expected}, got {got}")

    def _condition(self, prompt_embeds: np.ndarray, guided: bool) -> np.ndarray:
        # negatives first, as the pipelines concatenate them for the one batched UNet call
        cond = np.concatenate([self.negative[None], prompt_embeds]) if guided else prompt_embeds
        return cond.reshape(len(cond), -1) if self.condition == "class_labels" else cond

    def _denoise(
        self,
        prompt_embeds: np.ndarray,
        seed: int,
        steps: int,
        guidance: float,
        on_step: StepCallback | None,
        should_stop: ShouldStop | None,
    ) -> torch.Tensor:
        # a scheduler per call: PNDM keeps state between steps, and a fresh one makes generate reentrant
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(steps)
        generator = torch.Generator().manual_seed(seed)
        latents = randn_tensor(self.latent_shape, generator=generator, dtype=torch.float32) * scheduler.init_noise_sigma
        extra = _extra_step_kwargs(scheduler, generator)
        guided = guidance > 1.0  # the pipelines' do_classifier_free_guidance
        cond = self._condition(prompt_embeds, guided)
        unet = self.engines[f"{self.name}_unet"]
        total = len(scheduler.timesteps)
        for i, t in enumerate(scheduler.timesteps):
            check(should_stop)
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
            feeds = {
                "sample": model_input.contiguous().numpy(),
                "timestep": np.full(len(model_input), float(t), np.float32),
                self.condition: cond,
            }
            noise = torch.from_numpy(unet.run(feeds)["noise_pred"])
            if guided:
                uncond, text = noise.chunk(2)
                noise = uncond + guidance * (text - uncond)
            latents = _step(scheduler, noise, t, latents, extra)
            if on_step is not None:
                on_step(i + 1, total)
        return latents

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        """VAE decoder output (N, C, H, W), video frames in chunks the engine's batch range allows."""
        flat = _frames_as_batch(latents).contiguous().numpy()
        vae = self.engines[f"{self.name}_vae_decoder"]
        starts = range(0, len(flat), self.vae_batch)
        return np.concatenate([vae.run({"latent": flat[i : i + self.vae_batch]})["pixels"] for i in starts])
