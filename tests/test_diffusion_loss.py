"""The denoising objective against the scheduler's prediction type, and the tiny decoders' schedules."""
from __future__ import annotations

from types import SimpleNamespace

import diffusers
import pytest
import torch
from diffusers import DDPMScheduler
from torch import nn

from train.diffusion_loss import min_snr_weight, noise_prediction_error, sample_timesteps
from train.presets import get_preset


class Oracle(nn.Module):
    """A 'UNet' that knows the clean latents and the noise, and answers with one of them."""

    def __init__(self, scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, answer: str) -> None:
        super().__init__()
        self.scheduler, self.latents, self.noise, self.answer = scheduler, latents, noise, answer

    def forward(self, noisy: torch.Tensor, steps: torch.Tensor, encoder_hidden_states: torch.Tensor) -> SimpleNamespace:
        velocity = self.answer == "velocity"
        return SimpleNamespace(sample=self.scheduler.get_velocity(self.latents, self.noise, steps) if velocity else self.noise)


def _tiny_training_scheduler(modality: str) -> DDPMScheduler:
    return DDPMScheduler.from_config(get_preset("tiny")["decoders"][modality]["scheduler"])


@pytest.mark.parametrize("answer", ["velocity", "noise"])
def test_the_target_follows_the_prediction_type(answer: str) -> None:
    scheduler = _tiny_training_scheduler("image")
    latents = torch.randn(4, 4, 8, 8)
    torch.manual_seed(0)
    noise = torch.randn_like(latents)
    torch.manual_seed(0)  # noise_prediction_error draws the same noise first
    error = noise_prediction_error(Oracle(scheduler, latents, noise, answer), scheduler, latents, torch.zeros(4, 2, 3), False)
    if answer == "velocity":
        assert torch.all(error < 1e-10)
    else:
        assert torch.all(error > 1e-3)


def test_min_snr_weighs_the_x0_error_by_min_snr_gamma_for_both_prediction_types() -> None:
    gamma = 5.0
    v = _tiny_training_scheduler("image")
    eps = DDPMScheduler.from_config(get_preset("nextgpt-7b")["decoders"]["image"]["scheduler"])
    steps = torch.tensor([0, 100, 500, 900, 999])
    for scheduler, x0_per_target in ((v, lambda snr: 1 / (snr + 1)), (eps, lambda snr: 1 / snr)):
        alphas = scheduler.alphas_cumprod[steps]
        snr = alphas / (1 - alphas)
        weight = min_snr_weight(scheduler, steps, gamma)
        assert torch.isfinite(weight).all()
        # the target's MSE is the x0 error over x0_per_target(snr); the weight leaves min(snr, gamma) on x0
        finite = snr > 0
        torch.testing.assert_close(weight[finite] / x0_per_target(snr[finite]), torch.clamp(snr[finite], max=gamma))


def test_tiny_decoders_sample_from_zero_terminal_snr_and_the_released_ones_keep_theirs() -> None:
    for modality, section in get_preset("tiny")["decoders"].items():
        config = section["scheduler"]
        sampler = getattr(diffusers, config["_class_name"]).from_config(config)
        assert config["prediction_type"] == "v_prediction", modality
        assert sampler.alphas_cumprod[-1] == 0.0, modality  # pure noise at t = 999, as sampling starts
        sampler.set_timesteps(section["steps"])
        assert sampler.timesteps[0] == config["num_train_timesteps"] - 1, modality
    released = get_preset("nextgpt-7b")["decoders"]
    assert released["image"]["scheduler"]["_class_name"] == "PNDMScheduler"
    assert all(s["scheduler"].get("prediction_type", "epsilon") == "epsilon" for s in released.values())


def test_skewed_timesteps_favour_high_noise_and_skew_one_is_the_uniform_draw() -> None:
    torch.manual_seed(0)
    uniform = torch.randint(0, 1000, (20000,))
    torch.manual_seed(0)
    assert torch.equal(sample_timesteps(20000, 1000, 1.0), uniform)  # the draw the recipe made before
    skewed = sample_timesteps(20000, 1000, 2.0)
    assert skewed.min() >= 0 and skewed.max() <= 999 and skewed.dtype == torch.long
    assert abs((skewed >= 500).float().mean().item() - 0.5**0.5) < 0.01  # 71% in the noisier half
    assert (skewed >= 900).float().mean() > 2 * (uniform >= 900).float().mean()
