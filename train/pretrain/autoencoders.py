"""Stage 0, autoencoders: the VAEs (pixels and AudioLDM's log-mel) and the HiFi-GAN vocoder.

A VAE learns reconstruction (L1 + MSE) with a light KL term, from a narrow posterior,, as SD's does (without its GAN and LPIPS
terms). Its latents are then put at the scale the decoder's pipeline assumes: the encoder's output
is multiplied and the decoder's input divided by one factor, an exact reparametrisation after which
`latent × scaling_factor` has unit variance over the world. SD and ZeroScope share one VAE, trained
on images and video frames, as ZeroScope reuses SD's. The vocoder learns mel → waveform with the
multi-resolution spectral convergence loss alone (Parallel WaveGAN's STFT loss without its
log-magnitude term), see `pretrain_vocoder`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import Tensor, nn

from train.model import NextGPT
from train.pretrain.loop import fit
from train.pretrain.world_data import WorldData

STFT_SIZES = ((512, 128), (1024, 256), (256, 64))  # (n_fft, hop) of the multi-resolution STFT loss


INITIAL_LOG_VARIANCE = -6.0  # the posterior starts narrow (std 0.05), see _train_vae
Batch = Callable[[dict[str, Any]], Tensor]  # draws a training batch for one phase's settings (_phases)


def _vae_loss(vae: AutoencoderKL, x: Tensor, kl_weight: float) -> dict[str, Tensor]:
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample()).sample
    l1, kl = F.l1_loss(recon, x), posterior.kl().mean() / x[0].numel()
    return {"loss": l1 + F.mse_loss(recon, x) + kl_weight * kl, "l1": l1, "kl": kl}


def _crops(x: Tensor, size: int | None, gen: torch.Generator) -> Tensor:
    """A random `size` × `size` square of each sample; None: the whole. The VAE is convolutional, so it
    learns on parts what it then does on the whole, at a quarter of the work for half the side (SD's
    VAE was trained on 256-pixel crops for 512-pixel images)."""
    if size is None:
        return x
    corners = torch.randint(min(x.shape[-2:]) - size + 1, (len(x), 2), generator=gen).tolist()
    return torch.stack([sample[..., i : i + size, j : j + size] for sample, (i, j) in zip(x, corners)])


def _frames(data: WorldData, index: Tensor, modality: str) -> Tensor:
    x = data.pixels(modality, index)
    if modality == "video":  # one random frame of each video
        pick = torch.randint(x.shape[2], (len(x),))
        x = x[torch.arange(len(x)), :, pick]
    return x


@torch.no_grad()
def rescale_latents(vae: AutoencoderKL, samples: Tensor) -> float:
    """Scale the latent space so that `mean latent × scaling_factor` has unit standard deviation over
    `samples`; returns the factor. quant_conv's mean channels and log-variance move with it."""
    std = vae.encode(samples).latent_dist.mean.std().item()
    factor = 1.0 / (vae.config.scaling_factor * std)
    channels = vae.config.latent_channels
    vae.quant_conv.weight[:channels] *= factor
    vae.quant_conv.bias[:channels] *= factor
    vae.quant_conv.bias[channels:] += 2 * math.log(factor)
    vae.post_quant_conv.weight /= factor
    return factor


def _phases(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The settings, then with `whole` its steps on whole samples (no crop, no warm-up, its own batch
    and rate): trained on crops only, the pixel VAE's mid-block attention and group norms meet other
    statistics on a whole image (held-out L1 0.18 against 0.05 on crops), which 300 steps mend."""
    if "whole" not in settings:
        return [settings]
    return [settings, {**settings, "crop": None, "warmup": 0.0, **settings["whole"]}]


def _train_vae(vae: AutoencoderKL, batch: Batch, settings: dict[str, Any], desc: str, progress: bool) -> dict[str, float]:
    # From a unit-variance posterior the decoder first learns from latents drowned in noise, and the
    # light KL term lets the variance fall only slowly: most of a short run is lost to that
    with torch.no_grad():
        vae.quant_conv.bias[vae.config.latent_channels :] = INITIAL_LOG_VARIANCE
    vae.requires_grad_(True).train()
    for i, phase in enumerate(_phases(settings)):

        def terms(step: int, phase: dict[str, Any] = phase) -> dict[str, Tensor]:
            return _vae_loss(vae, batch(phase), settings["kl_weight"])

        result = fit(vae.parameters(), terms, phase, desc if i == 0 else f"{desc}, whole", progress)
    vae.requires_grad_(False).eval()
    return result


def pretrain_vaes(model: NextGPT, data: WorldData, settings: dict[str, Any], seed: int, progress: bool = True) -> dict[str, float]:
    """`settings` for the `pixels` VAE (images and video frames, half and half; optionally `crop`, the
    side of the random square it trains on, see `_crops`, and `whole`, see `_phases`), which
    ZeroScope shares with SD (`shared_vae`), and the `mel` one."""
    gen = torch.Generator().manual_seed(seed)

    def pixels(phase: dict[str, Any]) -> Tensor:
        picks = {m: torch.randint(data.count(m), (phase["batch"] // 2,), generator=gen) for m in ("image", "video")}
        return _crops(torch.cat([_frames(data, i, m) for m, i in picks.items()]), phase.get("crop"), gen)

    def mels(phase: dict[str, Any]) -> Tensor:
        return data.mels[torch.randint(len(data.mels), (phase["batch"],), generator=gen)]

    image_vae, audio_vae = model.decoders["image"]["vae"], model.decoders["audio"]["vae"]
    results = {"pixels": _train_vae(image_vae, pixels, settings["pixels"], "stage 0: image/video vae", progress)["l1"]}
    rescale_latents(image_vae, pixels({"batch": settings["pixels"]["batch"]}))
    results["mel"] = _train_vae(audio_vae, mels, settings["mel"], "stage 0: audio vae", progress)["l1"]
    rescale_latents(audio_vae, data.mels)
    return results


def _spectral_convergence(fake: Tensor, real: Tensor) -> Tensor:
    total = fake.new_zeros(())
    for n_fft, hop in STFT_SIZES:
        window = torch.hann_window(n_fft)
        f, r = (torch.stft(w, n_fft, hop, window=window, return_complex=True).abs() for w in (fake, real))
        total = total + (f - r).norm() / r.norm()
    return total / len(STFT_SIZES)


def pretrain_vocoder(model: NextGPT, data: WorldData, settings: dict[str, Any], seed: int, progress: bool = True) -> dict[str, float]:
    """AudioLDM's vocoder on the world's sounds: the mel the VAE reconstructs in, the waveform out."""
    vocoder: nn.Module = model.decoders["audio"]["vocoder"]
    mels = data.mels[:, 0]  # (N, frames, mel bins), as the pipeline hands the vocoder
    waves = data.waves
    gen = torch.Generator().manual_seed(seed)

    # Only the linear spectral convergence: HiFi-GAN's log-mel term and the log-magnitude STFT term
    # make near silence a basin (a tone drawn with any noise floor pays for every empty bin on a log
    # scale): with them the vocoder's tones ended at RMS 0.001 against the world's 0.35, and with a
    # 0.3-power magnitude term at 0.005; with convergence alone at 0.19-0.31 (docs/notes/training-recipe.md)
    def loss(step: int) -> dict[str, Tensor]:
        index = torch.randint(len(mels), (settings["batch"],), generator=gen)
        real = waves[index]
        fake = vocoder(mels[index])[:, : real.shape[1]]  # the pipeline trims what the upsampling overshoots
        convergence = _spectral_convergence(fake, real)
        return {"loss": convergence, "convergence": convergence}

    # transformers initialises HiFi-GAN's convolutions at std 0.01: at this width the stack's output
    # and its gradient are zero to float precision, and nothing trains; PyTorch's own init passes signal
    for module in vocoder.modules():
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            module.reset_parameters()
    vocoder.requires_grad_(True).train()
    result = fit(vocoder.parameters(), loss, settings, "stage 0: vocoder", progress)
    vocoder.requires_grad_(False).eval()
    return {"convergence": result["convergence"]}
