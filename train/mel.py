"""AudioLDM's mel front end: a waveform as the log-mel spectrogram its VAE was trained to encode.

AudioLDM (haoheliu/AudioLDM, `audioldm/audio/tools.py` `wav_to_fbank` and `audioldm/audio/stft.py`
`TacotronSTFT`) normalizes the waveform, pads it to the clip length, takes a Hann-windowed magnitude
STFT with reflect padding (torch.stft's `center=True`), applies librosa's Slaney mel filters and
`log(clamp(x, min=1e-5))`, then cuts the frames to the target length. The sizes that depend on the
model (hop, mel bins, rate, clip length) come from the checkpoint config's `decoders.audio` section;
the rest are the front end's own constants below.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers.audio_utils import mel_filter_bank

N_FFT = 1024  # TacotronSTFT filter_length = win_length (AudioLDM's preprocessing config)
F_MIN, F_MAX = 0.0, 8000.0  # mel_fmin, mel_fmax (AudioLDM's preprocessing config)
LOG_FLOOR = 1e-5  # dynamic_range_compression's clip_val (audioldm/audio/audio_processing.py)
PEAK = 0.5  # normalize_wav scales the peak to 0.5 (audioldm/audio/tools.py)
PEAK_EPS = 1e-8  # normalize_wav's guard against a silent clip


def hop_length(section: dict[str, Any]) -> int:
    """Samples per mel frame: the vocoder turns one frame into the product of its upsample rates."""
    return math.prod(section["vocoder"]["upsample_rates"])


def frame_count(section: dict[str, Any]) -> int:
    """Mel frames of one clip, as AudioLDMPipeline.__call__ sizes its latents' `height`: the clip
    length over the vocoder's upsample factor, rounded up to a multiple of the VAE scale factor."""
    vocoder = section["vocoder"]
    height = int(section["audio_length_s"] / (hop_length(section) / vocoder["sampling_rate"]))
    scale = 2 ** (len(section["vae"]["block_out_channels"]) - 1)  # the pipeline's vae_scale_factor
    return math.ceil(height / scale) * scale


def log_mel(wave: Tensor, section: dict[str, Any]) -> Tensor:
    """(samples,) float waveform at the vocoder's rate -> (frames, mel bins) natural-log mel."""
    rate = section["vocoder"]["sampling_rate"]
    filters = mel_filter_bank(
        num_frequency_bins=N_FFT // 2 + 1,
        num_mel_filters=section["vocoder"]["model_in_dim"],
        min_frequency=F_MIN,
        max_frequency=min(F_MAX, rate / 2),
        sampling_rate=rate,
        norm="slaney",
        mel_scale="slaney",
    )  # (frequency bins, mel bins), librosa's filters
    window = torch.hann_window(N_FFT, dtype=wave.dtype)  # periodic, as scipy's get_window(fftbins=True)
    stft = torch.stft(
        wave, N_FFT, hop_length(section), window=window, center=True, pad_mode="reflect", return_complex=True
    )
    mel = torch.from_numpy(filters.T).to(wave.dtype) @ stft.abs()
    return torch.log(mel.clamp(min=LOG_FLOOR)).T


def clip_wave(wave: np.ndarray, section: dict[str, Any]) -> np.ndarray:
    """What AudioLDM takes a mel from: the waveform, mean removed, peak at PEAK, padded or cut to
    the frames of one clip (wav_to_fbank reads target_length × hop samples)."""
    wave = wave - wave.mean()
    wave = wave / (np.abs(wave).max() + PEAK_EPS) * PEAK
    samples = frame_count(section) * hop_length(section)
    padded = np.zeros(samples, np.float32)
    padded[: min(len(wave), samples)] = wave[:samples]
    return padded


def mel_target(wave: np.ndarray, section: dict[str, Any]) -> Tensor:
    """A clip at the vocoder's rate as the VAE's input (1, frames, mel bins), AudioLDM's layout
    (mel_spectrogram_to_waveform squeezes that channel axis before the vocoder)."""
    mel = log_mel(torch.from_numpy(clip_wave(wave, section)), section)
    return mel[: frame_count(section)][None]  # _pad_spec drops the extra frame
