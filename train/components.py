"""The exportable units of a NExT-GPT as modules with a flat tensors-in, tensors-out forward.

They hold no sizes and no IO names (export/specs.py owns those); they only fix calling
conventions: which keyword a UNet's conditioning goes to, the VAE's latent scaling, constants
folded in. The torch backend of the runtime and the exporter build them from the same table.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet3DConditionModel
from torch import Tensor, nn
from transformers import SpeechT5HifiGan

from train.llm_step import LlmStep, merged_llm


class EncoderWithProjection(nn.Module):
    """ImageBind trunk and the input projection fused: clips -> one LLM token per input."""

    def __init__(self, encode: Callable[[Tensor], Tensor], projection: nn.Linear) -> None:
        super().__init__()
        self.encode, self.projection = encode, projection

    def forward(self, clips: Tensor) -> Tensor:
        return self.projection(self.encode(clips))


class ProjectorWithSignalEmbeds(nn.Module):
    """An output projector with its signal tokens' input embeddings folded in as a constant."""

    def __init__(self, model: nn.Module, modality: str) -> None:
        super().__init__()
        self.projector = model.projectors[modality]
        ids = torch.tensor(model.config["tokens"]["signal_ids"][modality], device=model.embed_tokens.weight.device)
        self.register_buffer("signal_embeds", model.embed_tokens(ids).detach()[None].clone())

    def forward(self, hidden: Tensor) -> Tensor:
        return self.projector(hidden, self.signal_embeds.expand(hidden.shape[0], -1, -1))


@contextmanager
def _repeat_interleave_as_expand() -> Iterator[None]:
    """UNet3D repeats the text embeddings per frame with `repeat_interleave`; the dynamo export of
    that op with a dynamic frame count fails at run time in an Expand node. unsqueeze/expand/reshape
    computes the same thing and exports cleanly (shared/PLATFORM.md)."""
    original = torch.Tensor.repeat_interleave

    def expand(self: Tensor, repeats: int, dim: int | None = None, output_size: int | None = None) -> Tensor:
        if dim != 0 or isinstance(repeats, Tensor):
            return original(self, repeats, dim=dim, output_size=output_size)
        return self.unsqueeze(1).expand(self.shape[0], repeats, *self.shape[1:]).reshape(-1, *self.shape[1:])

    torch.Tensor.repeat_interleave = expand
    try:
        yield
    finally:
        torch.Tensor.repeat_interleave = original


class UNetStep(nn.Module):
    """One noise prediction. AudioLDM's UNet takes its conditioning as class labels, the others
    through cross-attention."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.class_conditioned = unet.config.get("class_embed_type") is not None
        self.video = isinstance(unet, UNet3DConditionModel)

    def forward(self, sample: Tensor, timestep: Tensor, cond: Tensor) -> Tensor:
        kwargs = {"class_labels": cond, "encoder_hidden_states": None} if self.class_conditioned else {
            "encoder_hidden_states": cond
        }
        if not self.video:
            return self.unet(sample, timestep, return_dict=False, **kwargs)[0]
        with _repeat_interleave_as_expand():
            return self.unet(sample, timestep, return_dict=False, **kwargs)[0]


class VaeDecode(nn.Module):
    """Latents as the scheduler leaves them -> decoder output in [-1, 1] (pixels or a mel spectrogram)."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent: Tensor) -> Tensor:
        return self.vae.decode(latent / self.vae.config.scaling_factor, return_dict=False)[0]


class Vocoder(nn.Module):
    def __init__(self, vocoder: SpeechT5HifiGan) -> None:
        super().__init__()
        self.vocoder = vocoder

    def forward(self, mel: Tensor) -> Tensor:
        return self.vocoder(mel)


def _diffusion_builders(modality: str, name: str) -> dict[str, Callable[[Any], nn.Module]]:
    builders = {
        f"{name}_unet": lambda m: UNetStep(m.decoders[modality]["unet"]),
        f"{name}_vae_decoder": lambda m: VaeDecode(m.decoders[modality]["vae"]),
    }
    if modality == "audio":
        builders[f"{name}_vocoder"] = lambda m: Vocoder(m.decoders[modality]["vocoder"])
    return builders


def component_builders(config: dict[str, Any]) -> dict[str, Callable[[Any], nn.Module]]:
    """Component name -> factory of its flat-IO module from a loaded NextGPT."""
    builders: dict[str, Callable[[Any], nn.Module]] = {
        "imagebind_vision": lambda m: EncoderWithProjection(m.encoder.encode_vision, m.input_projection),
        "imagebind_audio": lambda m: EncoderWithProjection(m.encoder.encode_audio, m.input_projection),
        "llm": lambda m: LlmStep(merged_llm(m)),
    }
    for modality, dec in config["decoders"].items():
        builders[f"projector_{modality}"] = lambda m, mod=modality: ProjectorWithSignalEmbeds(m, mod)
        builders.update(_diffusion_builders(modality, dec["name"]))
    return builders


def build_component(model: Any, name: str) -> nn.Module:
    builders = component_builders(model.config)
    if name not in builders:
        raise KeyError(f"unknown component {name!r}; known: {', '.join(builders)}")
    return builders[name](model).eval()
