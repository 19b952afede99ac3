"""ImageBind's input preprocessing, reproduced in numpy (float32 outputs).

Follows `imagebind/data.py` (load_and_transform_{vision,video,audio}_data), with torchvision,
pytorchvideo and torchaudio replaced by numpy and Pillow. Sizes come from the caller (a preset's
`imagebind` section); the only literals are the CLIP normalisation, the Kaldi options ImageBind
fixes in its call to `torchaudio.compliance.kaldi.fbank`, and the window of the pitch-class rows a
preset may add below the log-mel (`pitch_classes`, `octaves`: not part of ImageBind).
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
from PIL import Image

from runtime.media import resample, resampled_length

CLIP_MEAN = np.array((0.48145466, 0.4578275, 0.40821073), dtype=np.float32)
CLIP_STD = np.array((0.26862954, 0.26130258, 0.27577711), dtype=np.float32)

# Kaldi fbank options: ImageBind passes frame_length=25, frame_shift=10, window_type="hanning",
# dither=0, use_energy=False, htk_compat=True; the rest are torchaudio's defaults (preemphasis
# 0.97, remove_dc_offset, round_to_power_of_two, snip_edges, power spectrum, low_freq 20,
# high_freq 0 = Nyquist, log floor = float32 epsilon).
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
PREEMPHASIS = 0.97
LOW_FREQ_HZ = 20.0
LOG_FLOOR = float(np.finfo(np.float32).eps)
_MS = 0.001

# Pitch rows (a preset's `pitch_classes` and `octaves`): a 25 ms frame cannot tell C3 from C sharp 3
# (7.8 Hz apart, inside its 125 Hz main lobe), and a mel band does not say which of twelve names a
# frequency has in any octave; a 256 ms window does (3.9 Hz bins), and folding the octaves onto one
# another does (docs/evaluation.md). The octaves start at C2 and are cut a quarter tone below each C,
# so that a note lies well inside its own.
PITCH_WINDOW_MS = 256.0
LOWEST_OCTAVE = 2
PITCH_FLOOR = 1e-2  # energy below this is silence: its frame's rows are zeros, not noise scaled up
_C0_HZ = 440.0 * 2 ** (-57 / 12)


def image_to_tensor(image: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 H×W×3 RGB → float32 (3, S, S), as torchvision's Resize(S, BICUBIC) on a PIL image,
    CenterCrop(S), ToTensor and Normalize(CLIP mean, std) compute it in ImageBind."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected uint8 H×W×3, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(normalise(resize_and_crop(image, image_size)).transpose(2, 0, 1))


def resize_and_crop(image: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 H×W×3 → uint8 S×S×3: the resize and centre crop of `image_to_tensor`."""
    return _centre_crop(np.asarray(_resize_short_side(Image.fromarray(image), image_size)), image_size)


def clip_timepoints(duration: float, clip_duration: float, clips: int) -> list[tuple[Fraction, Fraction]]:
    """(start, end) seconds of pytorchvideo's ConstantClipsPerVideoSampler, as ImageBind's
    `get_clip_timepoints` collects them.

    Clip i starts at i * max(duration - clip_duration, 0) / clips: the step divides by `clips`,
    not `clips - 1`, so the last clip ends before the media does. Its early stop
    (`step * i > max_start`) never fires, so there are always `clips` clips; media shorter than a
    clip gives `clips` copies of [0, clip_duration). Fractions as in pytorchvideo, so the callers'
    float and integer conversions round the same way.
    """
    length = Fraction(clip_duration)
    step = Fraction(max(float(duration) - float(clip_duration), 0.0)) / clips
    return [(step * i, step * i + length) for i in range(clips)]


def clip_frame_indices(
    num_frames: int, fps: float, clips: int, frames_per_clip: int, clip_duration: float
) -> np.ndarray:
    """Frame indices (clips, frames_per_clip) that ImageBind's video loader picks.

    The video lasts num_frames / fps (decord's duration); a clip covers frames
    ceil(fps * start) .. ceil(fps * end) - 1, capped at the last frame (pytorchvideo's decord
    `get_clip`); UniformTemporalSubsample then takes linspace(0, n - 1, k) truncated toward zero,
    repeating frames when the clip has fewer than k. torch's linspace runs in float32 and ours in
    float64; they agree exactly for k = 2 (ImageBind's) and could differ by one only where a
    float32 value lands just under an integer.
    """
    if num_frames < 1 or not fps > 0:
        raise ValueError(f"need at least one frame and a positive frame rate, got {num_frames} at {fps}")
    rows = []
    for start, end in clip_timepoints(num_frames / fps, clip_duration, clips):
        # below one frame per clip a clip can hold no frame: take the next one (or the last)
        first = min(math.ceil(fps * float(start)), num_frames - 1)
        stop = max(min(math.ceil(fps * float(end)), num_frames), first + 1)
        rows.append(first + np.linspace(0, stop - first - 1, frames_per_clip).astype(np.int64))
    return np.stack(rows)


def video_to_clips(
    frames: np.ndarray, fps: float, image_size: int, clips: int, frames_per_clip: int, clip_duration: float
) -> np.ndarray:
    """uint8 T×H×W×3 frames → float32 (clips, 3, frames_per_clip, S, S): the frames that
    `clip_frame_indices` picks, through `picked_to_clips`."""
    index = clip_frame_indices(len(frames), fps, clips, frames_per_clip, clip_duration)
    return picked_to_clips(frames[index], image_size)


def picked_to_clips(picked: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 (clips, frames_per_clip, H, W, 3), the frames `clip_frame_indices` picked, → float32
    (clips, 3, frames_per_clip, S, S), each frame through `image_to_tensor`.

    Two departures from the reference: it scales with pytorchvideo's ShortSideScale (bilinear, no
    antialiasing) and takes three spatial crops (left/centre/right, SpatialCrop) per clip; we resize
    as images are (bicubic, antialiased) and take the centre crop only, so a video gives `clips`
    clips, not 3 × `clips`.
    """
    tensors = np.stack([[image_to_tensor(frame, image_size) for frame in clip] for clip in picked])
    return np.ascontiguousarray(tensors.transpose(0, 2, 1, 3, 4))


def kaldi_fbank(wave: np.ndarray, sample_rate: int, num_mel_bins: int) -> np.ndarray:
    """Log mel filterbank (frames, num_mel_bins) float32, as torchaudio.compliance.kaldi.fbank
    computes it with ImageBind's options.

    Per frame of 25 ms every 10 ms (only whole frames, snip_edges): subtract the frame mean,
    pre-emphasise x[j] - 0.97 x[j-1] (x[-1] := x[0]), multiply by the symmetric Hann window
    0.5 - 0.5 cos(2πn / (N - 1)) (torch.hann_window(periodic=False), not Kaldi's povey), zero-pad
    to the next power of two, take |rfft|², apply Kaldi's triangular mel banks, floor at float32
    epsilon and take the log. torchaudio works in float32 throughout; this works in float64, so
    the two agree to float32 rounding, not bit for bit. A waveform shorter than one frame gives
    zero frames (torchaudio asserts instead).
    """
    window = int(sample_rate * FRAME_LENGTH_MS * _MS)  # torchaudio's expression, truncated
    shift = int(sample_rate * FRAME_SHIFT_MS * _MS)
    n_fft = 1 << (window - 1).bit_length()
    x = np.asarray(wave, dtype=np.float64)
    if x.size < window:
        return np.zeros((0, num_mel_bins), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(x, window)[::shift]
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames = frames - PREEMPHASIS * np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / (window - 1)))
    power = np.abs(np.fft.rfft(frames, n=n_fft)) ** 2
    energies = power @ _mel_banks(num_mel_bins, n_fft, sample_rate).T
    return np.log(np.maximum(energies, LOG_FLOOR)).astype(np.float32)


def waveform_to_fbank_clips(
    wave: np.ndarray,
    rate: int,
    sample_rate: int,
    clips: int,
    clip_duration: float,
    num_mel_bins: int,
    target_length: int,
    mean: float,
    std: float,
    pitch: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Mono waveform → float32 (clips, 1, num_mel_bins + sum(pitch), target_length), as ImageBind's
    `load_and_transform_audio_data` and `waveform2melspec` compute it: resample the whole waveform
    to `sample_rate`, cut the clips at `audio_clip_spans`, then `fbank_clips`."""
    x = resample(wave, rate, sample_rate)
    if x.size == 0:
        raise ValueError("empty waveform")
    spans = audio_clip_spans(len(wave), rate, sample_rate, clips, clip_duration)
    cut = [x[start:stop] for start, stop in spans]
    return fbank_clips(cut, sample_rate, num_mel_bins, target_length, mean, std, pitch)


def audio_clip_spans(samples: int, rate: int, sample_rate: int, clips: int, clip_duration: float) -> list[tuple[int, int]]:
    """Each clip's samples [start, stop) in a `samples`-long waveform at `rate` once resampled to
    `sample_rate`: int(start * sample_rate) .. int(end * sample_rate) of `clip_timepoints`, fewer
    where the audio ends."""
    length = resampled_length(samples, rate, sample_rate)
    times = clip_timepoints(length / sample_rate, clip_duration, clips)
    return [(int(start * sample_rate), min(int(end * sample_rate), length)) for start, end in times]


def audio_rows(audio: dict[str, Any]) -> int:
    """The rows of an audio clip as the encoder takes it: the log-mel and any pitch rows."""
    return audio["num_mel_bins"] + sum(pitch_shape(audio))


def pitch_shape(audio: dict[str, Any]) -> tuple[int, int]:
    """A preset's pitch rows: (pitch classes, octaves), (0, 0) for ImageBind's own front end."""
    shape = audio.get("pitch_classes", 0), audio.get("octaves", 0)
    if (shape[0] > 0) != (shape[1] > 0):
        raise ValueError(f"pitch rows need both pitch_classes and octaves, or neither: got {shape}")
    return shape


def audio_input(clips: list[np.ndarray], audio: dict[str, Any]) -> np.ndarray:
    """`fbank_clips` with a preset's `imagebind.audio` section: (clips, 1, audio_rows, target_length)."""
    keys = ("sample_rate", "num_mel_bins", "target_length", "mean", "std")
    return fbank_clips(clips, *(audio[k] for k in keys), pitch=pitch_shape(audio))


def fbank_clips(
    clips: list[np.ndarray],
    sample_rate: int,
    num_mel_bins: int,
    target_length: int,
    mean: float,
    std: float,
    pitch: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Clips at `sample_rate` → float32 (clips, 1, num_mel_bins + sum(pitch), target_length).

    Subtract each clip's mean, take `kaldi_fbank`, transpose to (mel, frames), zero-pad on the
    right or crop to `target_length` frames (the padding is in the log domain, before normalising,
    as in the reference), then (x - mean) / std.

    The reference subtracts the mean in place on a view of the shared waveform, so where clips
    overlap (audio shorter than clips × clip_duration) a later clip sees samples an earlier clip
    already shifted. We subtract from a copy; the difference is a constant step that the per-frame
    DC removal cancels except in the frames straddling it.

    With `pitch` (classes, octaves), each clip's `pitch_rows` (frame for frame) follow its normalised
    log-mel.
    """
    mels = []
    for clip in clips:
        centred = clip - clip.mean()
        fbank = kaldi_fbank(centred, sample_rate, num_mel_bins).T[:, :target_length]
        frames = fbank.shape[1]
        fbank = np.pad(fbank, ((0, 0), (0, target_length - frames)))
        rows = [(fbank - np.float32(mean)) / np.float32(std)]
        if any(pitch):
            rows.append(np.pad(pitch_rows(centred, sample_rate, *pitch, frames), ((0, 0), (0, target_length - frames))))
        mels.append(np.concatenate(rows))
    return np.stack(mels)[:, None].astype(np.float32)


def pitch_rows(wave: np.ndarray, sample_rate: int, classes: int, octaves: int, frames: int) -> np.ndarray:
    """(classes + octaves, frames) float32: for each of `kaldi_fbank`'s frames, the power spectrum of
    a `PITCH_WINDOW_MS` Hann window centred on it (zeros beyond the wave) over `octaves` octaves from
    `LOWEST_OCTAVE`, folded onto `classes` pitch classes (class 0 is C; each FFT bin shared by its
    two nearest) and summed per octave, both divided by the frame's whole energy plus `PITCH_FLOOR`:
    each frame's share of energy per pitch class and per octave, whatever the level."""
    window = int(sample_rate * PITCH_WINDOW_MS * _MS)
    shift, length = int(sample_rate * FRAME_SHIFT_MS * _MS), int(sample_rate * FRAME_LENGTH_MS * _MS)
    x = np.pad(np.asarray(wave, dtype=np.float64), window)
    starts = window + np.arange(frames) * shift + length // 2 - window // 2
    segments = np.lib.stride_tricks.sliding_window_view(x, window)[starts]
    power = np.abs(np.fft.rfft(segments * np.hanning(window), axis=1)) ** 2
    classes_bank, octaves_bank = _pitch_banks(classes, octaves, window, sample_rate)
    total = power.sum(axis=1, keepdims=True) + PITCH_FLOOR
    return (np.concatenate([power @ classes_bank.T, power @ octaves_bank.T], axis=1) / total).T.astype(np.float32)


def _pitch_banks(classes: int, octaves: int, n_fft: int, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights (classes, n_fft // 2 + 1) and (octaves, n_fft // 2 + 1): each FFT bin in range to its
    two nearest pitch classes, linearly by its distance from their centres on the circle of an
    octave, and to its octave."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    semitones = 12 * np.log2(np.maximum(freqs, 1.0) / _C0_HZ) - 12 * LOWEST_OCTAVE  # 0 at the lowest C
    octave = np.floor((semitones + 0.5) / 12)
    inside = (octave >= 0) & (octave < octaves)
    distance = (classes * semitones[None, :] / 12 - np.arange(classes)[:, None] + classes / 2) % classes - classes / 2
    classes_bank = np.maximum(0.0, 1.0 - np.abs(distance)) * inside[None, :]
    octaves_bank = (octave[None, :] == np.arange(octaves)[:, None]).astype(np.float64)
    return classes_bank, octaves_bank


def _resize_short_side(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)  # torchvision truncates the long side, it does not round
    return image.resize((size, new_long) if w <= h else (new_long, size), Image.Resampling.BICUBIC)


def _centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    # torchvision's offsets: Python's round, so a half-pixel surplus rounds to even
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image[top : top + size, left : left + size]


def normalise(image: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) → float32, CLIP-normalised."""
    # float32 at every step, as ToTensor (÷255) and Normalize do, so the values match bit for bit
    return (image.astype(np.float32) / np.float32(255) - CLIP_MEAN) / CLIP_STD


def _mel_banks(num_bins: int, n_fft: int, sample_rate: int) -> np.ndarray:
    """Kaldi's triangular filters (num_bins, n_fft // 2 + 1), as torchaudio's `get_mel_banks`.

    Centres are evenly spaced on the 1127 ln(1 + f / 700) mel scale between LOW_FREQ_HZ and
    Nyquist, with num_bins + 1 steps so the outer slopes fit inside. Weights are taken at the FFT
    bins 0 .. n_fft/2 - 1 and the Nyquist bin gets a zero column, as torchaudio pads it.
    """
    mel_low, mel_high = _mel(LOW_FREQ_HZ), _mel(sample_rate / 2)
    delta = (mel_high - mel_low) / (num_bins + 1)
    bins = np.arange(num_bins)[:, None]
    left, centre, right = (mel_low + (bins + k) * delta for k in range(3))
    mel = _mel(sample_rate / n_fft * np.arange(n_fft // 2))[None, :]
    banks = np.maximum(0.0, np.minimum((mel - left) / (centre - left), (right - mel) / (right - centre)))
    return np.pad(banks, ((0, 0), (0, 1)))


def _mel(freq: float | np.ndarray) -> float | np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(freq) / 700.0)
