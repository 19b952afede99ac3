"""The denoising objective shared by stage 0 (training the UNets) and the generation loss of stages 2-3
(training the projectors through the frozen UNets): latents from the VAE, the MSE of the UNet's
prediction (ε or v, as the decoder's scheduler says) at a random timestep, Min-SNR weighting where asked."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import Tensor, nn


def predicts_velocity(scheduler: DDPMScheduler) -> bool:
    return scheduler.config.prediction_type == "v_prediction"


def min_snr_weight(scheduler: DDPMScheduler, timesteps: Tensor, gamma: float) -> Tensor:
    """Min-SNR-γ (Hang et al. 2023): min(SNR, γ) / SNR for ε-prediction, min(SNR, γ) / (SNR + 1) for
    v-prediction; either way the x0 error is weighted by min(SNR, γ)."""
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas / (1 - alphas)
    return torch.clamp(snr, max=gamma) / (snr + 1 if predicts_velocity(scheduler) else snr)


@torch.no_grad()
def vae_latents(vae: nn.Module, x: Tensor) -> Tensor:
    """Scaled latents of images (B, C, H, W) or videos (B, C, F, H, W), the frames encoded one by one
    as the video pipelines decode them."""
    video = x.ndim == 5
    frames = x.shape[2] if video else 1
    flat = x.transpose(1, 2).flatten(0, 1) if video else x
    latents = vae.encode(flat).latent_dist.sample() * vae.config.scaling_factor
    return latents.unflatten(0, (-1, frames)).transpose(1, 2) if video else latents


def sample_timesteps(count: int, total: int, skew: float = 1.0, device: torch.device | None = None) -> Tensor:
    """`count` training timesteps in [0, total): uniform at `skew` 1; above 1, t = total·(1 − u^skew)
    for uniform u, which puts more of them at high noise (skew 2: 71% in the noisier half), where a
    sample's layout is decided and, for a video, its motion."""
    if skew == 1.0:
        return torch.randint(0, total, (count,), device=device)
    u = torch.rand(count, device=device)
    return ((1 - u**skew) * total).long().clamp(0, total - 1)


def noise_prediction_error(
    unet: nn.Module,
    scheduler: DDPMScheduler,
    latents: Tensor,
    conditions: Tensor,
    class_labels: bool,
    snr_gamma: float | None = None,
    skew: float = 1.0,
) -> Tensor:
    """(B,) per-sample MSE of the UNet's prediction against the scheduler's target: the noise for
    ε-prediction, the velocity for v-prediction, at timesteps drawn by `sample_timesteps`.
    `class_labels`: the conditioning enters as AudioLDM's class labels (B, dim), else through
    cross-attention (B, tokens, dim)."""
    noise = torch.randn_like(latents)
    steps = sample_timesteps(latents.shape[0], scheduler.config.num_train_timesteps, skew, latents.device)
    noisy = scheduler.add_noise(latents, noise, steps)
    if class_labels:
        prediction = unet(noisy, steps, encoder_hidden_states=None, class_labels=conditions.flatten(1)).sample
    else:
        prediction = unet(noisy, steps, encoder_hidden_states=conditions).sample
    target = scheduler.get_velocity(latents, noise, steps) if predicts_velocity(scheduler) else noise
    error = F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(1)
    return error * min_snr_weight(scheduler, steps, snr_gamma) if snr_gamma else error
