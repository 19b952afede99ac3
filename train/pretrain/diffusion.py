"""Stage 0, diffusion: each decoder's UNet learns to denoise the world's media, conditioned on its own
text encoder's caption embedding, which is replaced by the unconditional one (the encoder on "") for
a fraction of samples, so that classifier-free guidance has both predictions to mix.

ZeroScope starts from the trained SD UNet, as ModelScope's text-to-video UNet starts from Stable
Diffusion's: every spatial layer (ResNets, spatial and cross attention, time embedding, in and out
convolutions) takes SD's weights, and only the temporal layers start new."""
from __future__ import annotations

from typing import Any

import torch
from diffusers import DDPMScheduler
from torch import Tensor

from train.decoders import encode_captions, takes_class_labels
from train.diffusion_loss import noise_prediction_error
from train.model import NextGPT
from train.pretrain.loop import fit
from train.pretrain.world_data import WorldData


@torch.no_grad()
def _latent_moments(vae: torch.nn.Module, media: Tensor, chunk: int = 64) -> tuple[Tensor, Tensor]:
    """The VAE posterior's mean and std of every medium (images, frames of videos, mels), encoded once;
    a training step samples from them as `vae_latents` would."""
    video = media.ndim == 5
    frames = media.shape[2] if video else 1
    flat = media.transpose(1, 2).flatten(0, 1) if video else media
    means, stds = [], []
    for x in flat.split(chunk):
        dist = vae.encode(x).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    scale = vae.config.scaling_factor
    mean, std = torch.cat(means) * scale, torch.cat(stds) * scale
    if video:
        mean, std = (t.unflatten(0, (-1, frames)).transpose(1, 2) for t in (mean, std))
    return mean, std


def _media(data: WorldData, modality: str) -> Tensor:
    if modality == "audio":
        return data.mels
    return torch.cat([data.pixels(modality, i) for i in torch.arange(data.count(modality)).split(256)])


@torch.no_grad()
def init_from_image_part(video_part: torch.nn.Module, image_part: torch.nn.Module) -> int:
    """Copy every weight of SD's `image_part` (UNet or text encoder) whose name ZeroScope's `video_part`
    shares; a 1×1 convolution's weight goes into the Linear that takes its place (UNet3D's spatial
    transformers project with Linear). Returns how many tensors were copied; a shared name of another
    size is an error."""
    own = video_part.state_dict()
    shared = {k: v for k, v in image_part.state_dict().items() if k in own}
    wrong = [k for k, v in shared.items() if v.numel() != own[k].numel()]
    if wrong:
        raise ValueError(f"image and video parts differ in {wrong[0]} ({len(wrong)} tensors): not one spatial layout")
    video_part.load_state_dict({k: v.reshape(own[k].shape) for k, v in shared.items()}, strict=False)
    return len(shared)


def jitter(conditions: Tensor, scale: float, gen: torch.Generator) -> Tensor:
    """Each conditioning token moved by a random vector of expected norm `scale` (`cond_noise`): the
    UNet learns to draw the same medium from near its caption's embedding, which is where a projector
    lands on a request it has not seen. No draw is made at 0, so other decoders' batches stay as they were."""
    if not scale:
        return conditions
    return conditions + scale * torch.randn(conditions.shape, generator=gen) / conditions.shape[-1] ** 0.5


def pretrain_unets(model: NextGPT, data: WorldData, settings: dict[str, dict[str, Any]], seed: int, progress: bool = True) -> dict[str, float]:
    """`settings` per modality (steps, batch, lr, drop: the fraction trained unconditionally, snr_gamma,
    optionally cond_noise, see `jitter`, and skew, see `sample_timesteps`)."""
    gen = torch.Generator().manual_seed(seed)
    results = {}
    for modality, section in model.config["decoders"].items():
        components = model.decoders[modality]
        part = settings[modality]
        mean, std = _latent_moments(components["vae"], _media(data, modality))
        captions = encode_captions(components["text_encoder"], components["tokenizer"], data.captions[modality], section)
        uncond = components["uncond_embedding"].float()[None]
        unet, scheduler = components["unet"], DDPMScheduler.from_config(components["scheduler"].config)
        labels = takes_class_labels(section)
        if modality == "video" and "image" in model.decoders:
            init_from_image_part(unet, model.decoders["image"]["unet"])

        def loss(step: int, mean: Tensor = mean, std: Tensor = std, captions: Tensor = captions, uncond: Tensor = uncond, unet: Any = unet, scheduler: Any = scheduler, labels: bool = labels, part: dict = part) -> dict[str, Tensor]:
            index = torch.randint(len(mean), (part["batch"],), generator=gen)
            latents = mean[index] + std[index] * torch.randn(mean[index].shape, generator=gen)
            dropped = torch.rand(len(index), generator=gen) < part["drop"]
            cond = torch.where(dropped[:, None, None], uncond, jitter(captions[index], part.get("cond_noise", 0.0), gen))
            return {"loss": noise_prediction_error(unet, scheduler, latents, cond, labels, part["snr_gamma"], part.get("skew", 1.0)).mean()}

        unet.requires_grad_(True).train()
        results[modality] = fit(unet.parameters(), loss, part, f"stage 0: {section['name']} unet", progress)["loss"]
        unet.requires_grad_(False).eval()
    return results
