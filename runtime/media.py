"""Reading and writing the media files the runtime takes in and hands back.

Every problem that lies in the file itself (missing, corrupt, truncated, unsupported, empty, bad
sample rate) surfaces as `MediaError`, whose one-line message names the file, so a server can pass
it straight back to the client instead of a decoder's traceback.
"""
from __future__ import annotations

import math
import os
import struct
import wave as _wav
from pathlib import Path

import imageio.v2 as iio
import numpy as np
from PIL import Image, ImageSequence

MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 192000
VIDEO_SUFFIXES = (".gif", ".mp4")

# Pillow reports damaged data through any of these, depending on the plugin and where it breaks.
_PIL_ERRORS = (
    OSError, SyntaxError, ValueError, IndexError, EOFError, struct.error, Image.DecompressionBombError
)
# GIF delays are whole centiseconds; browsers play delays of one tick or less at the default delay,
# so the writer never goes below two ticks and the reader reads short delays as browsers do.
_GIF_TICK_MS = 10
_GIF_MIN_DELAY_MS = 2 * _GIF_TICK_MS
_GIF_DEFAULT_DELAY_MS = 100
_GIF_TRAILER = b";"
# torchaudio.functional.resample's defaults (Hann-windowed sinc), so resampled audio matches the
# reference ImageBind pipeline.
_LOWPASS_ZEROS = 6
_ROLLOFF = 0.99
_RESAMPLE_CHUNK = 1 << 13  # output samples per step: bounds the taps matrix to a few MiB
_PCM16_SCALE = 1 << 15


class MediaError(ValueError):
    """A media file that cannot be read or written; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: object) -> None:
        super().__init__(f"{path}: {' '.join(str(problem).split())}")


def read_image(path: str | Path) -> np.ndarray:
    """The image as uint8 H×W×3 RGB (any Pillow-readable format, any mode; alpha dropped, EXIF
    orientation ignored, as ImageBind's `Image.open(...).convert("RGB")` does)."""
    p = _existing(path)
    try:
        with Image.open(p) as im:
            im.load()  # Pillow decodes lazily: decode all of it inside the try, so damage is a MediaError
            return np.array(im.convert("RGB"))
    except _PIL_ERRORS as err:
        raise MediaError(p, f"cannot decode image: {err}") from err


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write a uint8 H×W×3 image as PNG."""
    p = _with_suffix(path, (".png",))
    frame = _rgb_uint8(p, np.asarray(image), ndim=3)
    try:
        Image.fromarray(frame).save(p, format="PNG")
    except OSError as err:
        raise MediaError(p, f"cannot write PNG: {err}") from err


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """A PCM WAV file (8/16/24/32-bit) as float32 mono in [-1, 1] and its sample rate.

    Channels are averaged. Integer samples are scaled as torchaudio.load does (unsigned 8-bit
    centred on 128, signed n-bit divided by 2**(n-1)).
    """
    p = _existing(path)
    try:
        with _wav.open(str(p), "rb") as w:
            channels, width, rate, frames = w.getparams()[:4]
            data = w.readframes(frames)
    except (_wav.Error, EOFError, OSError, struct.error) as err:
        raise MediaError(p, f"not a readable PCM WAV file: {err}") from err
    _check_rate(p, rate)
    if frames == 0:
        raise MediaError(p, "no audio frames")
    if len(data) < frames * channels * width:
        raise MediaError(p, f"truncated: {len(data) // (channels * width)} of {frames} frames present")
    samples = _pcm_to_float(p, data, width).reshape(frames, channels)
    return samples.mean(axis=1, dtype=np.float64).astype(np.float32), rate


def write_wav(path: str | Path, wave: np.ndarray, rate: int) -> None:
    """Write a mono waveform in [-1, 1] as 16-bit PCM WAV; samples beyond full scale are clipped."""
    p = _with_suffix(path, (".wav",))
    _check_rate(p, rate)
    samples = np.asarray(wave, dtype=np.float64)
    if samples.ndim != 1 or samples.size == 0 or not np.isfinite(samples).all():
        raise MediaError(p, f"expected a non-empty finite 1-D waveform, got shape {samples.shape}")
    pcm = np.clip(np.round(samples * _PCM16_SCALE), -_PCM16_SCALE, _PCM16_SCALE - 1).astype("<i2")
    try:
        with _wav.open(str(p), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(pcm.itemsize)
            w.setframerate(rate)
            w.writeframes(pcm.tobytes())
    except OSError as err:
        raise MediaError(p, f"cannot write WAV: {err}") from err


def resample(wave: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited resampling, the same filter as torchaudio.functional.resample's defaults.

    Output sample j is the Hann-windowed sinc interpolation of the input at time j / dst_rate,
    with the cutoff at 0.99 of the lower Nyquist frequency and 6 zero crossings each side; the
    output has ceil(len * dst_rate / src_rate) samples. The kernel is evaluated per output sample
    rather than as torchaudio's polyphase table, whose size grows with the reduced rates (a
    16000×44100 table for 44101 Hz → 16 kHz); the taps are the same.
    """
    if src_rate <= 0 or dst_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {src_rate} and {dst_rate}")
    x = np.asarray(wave, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {x.shape}")
    if src_rate == dst_rate:
        return x.astype(np.float32)
    gcd = math.gcd(src_rate, dst_rate)
    down, up = src_rate // gcd, dst_rate // gcd
    cutoff = min(down, up) * _ROLLOFF
    width = math.ceil(_LOWPASS_ZEROS * down / cutoff)
    padded = np.pad(x, width)
    taps = np.arange(-width, width + 1)
    out = np.empty(-(-up * x.size // down))
    for start in range(0, out.size, _RESAMPLE_CHUNK):
        j = np.arange(start, min(start + _RESAMPLE_CHUNK, out.size))[:, None]
        i = j * down // up + taps  # input samples around output time j / dst_rate
        t = np.clip((i * up - j * down) * (cutoff / (up * down)), -_LOWPASS_ZEROS, _LOWPASS_ZEROS)
        kernel = np.sinc(t) * np.cos(t * np.pi / (2 * _LOWPASS_ZEROS)) ** 2 * (cutoff / down)
        out[start : start + len(j)] = (padded[i + width] * kernel).sum(axis=1)
    return out.astype(np.float32)


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """The frames as uint8 T×H×W×3 RGB and the frame rate, from .gif (Pillow) or .mp4 (ffmpeg).

    A GIF's frame rate is its mean one (frames / total delay), as decord's average fps is in the
    reference pipeline.
    """
    suffix = _video_suffix(Path(path))
    p = _existing(path)
    frames, fps = _read_gif(p) if suffix == ".gif" else _read_mp4(p)
    if not frames:
        raise MediaError(p, "no video frames")
    return np.stack(frames), fps


def write_video(path: str | Path, frames: np.ndarray, fps: float) -> None:
    """Write uint8 T×H×W×3 frames; the extension picks GIF (looping) or MP4 (H.264, yuv420p).

    GIF delays are rounded to whole centiseconds (at least two), its colours to a 256-colour
    palette per frame, and Pillow folds a frame identical to the one before into that frame's
    delay. MP4 frames of odd height or width get their last row or column repeated, because
    yuv420p needs even sizes.
    """
    p = Path(path)
    suffix = _video_suffix(p)
    video = _rgb_uint8(p, np.asarray(frames), ndim=4)
    if not (math.isfinite(fps) and fps > 0):
        raise MediaError(p, f"frame rate must be positive, got {fps}")
    try:
        (_write_gif if suffix == ".gif" else _write_mp4)(p, video, fps)
    except OSError as err:
        raise MediaError(p, f"cannot write video: {_last_line(err)}") from err


def _existing(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise MediaError(p, "file not found")
    if not p.is_file():
        raise MediaError(p, "not a regular file")
    return p


def _with_suffix(path: str | Path, suffixes: tuple[str, ...]) -> Path:
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise MediaError(p, f"unsupported extension {p.suffix!r}; expected {' or '.join(suffixes)}")
    return p


def _video_suffix(path: Path) -> str:
    return _with_suffix(path, VIDEO_SUFFIXES).suffix.lower()


def _last_line(err: Exception) -> str:
    # ffmpeg failures carry its whole log; the last line is the one that says what went wrong.
    lines = str(err).strip().splitlines()
    return lines[-1] if lines else type(err).__name__


def _check_rate(path: Path, rate: int) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise MediaError(path, f"sample rate {rate} Hz outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")


def _pcm_to_float(path: Path, data: bytes, width: int) -> np.ndarray:
    if width == 1:  # 8-bit WAV is the one unsigned width
        return (np.frombuffer(data, np.uint8).astype(np.float64) - 128) / 128
    if width == 3:  # numpy has no int24: put each sample in the top three bytes of an int32
        wide = np.zeros((len(data) // 3, 4), np.uint8)
        wide[:, 1:] = np.frombuffer(data, np.uint8).reshape(-1, 3)
        return (wide.view("<i4")[:, 0] >> 8) / float(1 << 23)
    if width in (2, 4):
        return np.frombuffer(data, f"<i{width}") / float(1 << (8 * width - 1))
    raise MediaError(path, f"unsupported sample width of {8 * width} bits")


def _rgb_uint8(path: Path, array: np.ndarray, ndim: int) -> np.ndarray:
    if array.dtype != np.uint8 or array.ndim != ndim or array.shape[-1] != 3 or 0 in array.shape:
        shape = "H×W×3" if ndim == 3 else "T×H×W×3"
        raise MediaError(path, f"expected non-empty uint8 {shape}, got {array.dtype} {array.shape}")
    return array


def _read_gif(path: Path) -> tuple[list[np.ndarray], float]:
    frames, delays = [], []
    try:
        with Image.open(path) as im:
            fmt = im.format
            for frame in ImageSequence.Iterator(im):
                frames.append(np.array(frame.convert("RGB")))
                delay = frame.info.get("duration", 0)
                delays.append(delay if delay > _GIF_TICK_MS else _GIF_DEFAULT_DELAY_MS)
    except _PIL_ERRORS as err:
        raise MediaError(path, f"cannot decode GIF: {err}") from err
    if fmt != "GIF":
        raise MediaError(path, f"not a GIF file but {fmt}")
    with path.open("rb") as f:
        f.seek(-len(_GIF_TRAILER), os.SEEK_END)
        if f.read() != _GIF_TRAILER:
            # Pillow stops quietly at a cut between two frames; the missing trailer gives it away.
            raise MediaError(path, "truncated GIF (no trailer)")
    return frames, 1000 * len(delays) / sum(delays)  # Pillow opened it, so there is a frame


def _read_mp4(path: Path) -> tuple[list[np.ndarray], float]:
    _check_mp4_boxes(path)
    try:
        reader = iio.get_reader(path, "ffmpeg")
        try:
            fps = float(reader.get_meta_data().get("fps", 0))
            frames = list(reader.iter_data())
        finally:
            reader.close()
    except (OSError, RuntimeError, ValueError) as err:
        raise MediaError(path, f"cannot decode MP4: {_last_line(err)}") from err
    if not (math.isfinite(fps) and fps > 0):
        raise MediaError(path, f"no usable frame rate ({fps})")
    return frames, fps


def _check_mp4_boxes(path: Path) -> None:
    """Walk the top-level ISO-BMFF boxes: one running past the end of the file means the file was
    cut short, which ffmpeg would otherwise decode quietly as a shorter video."""
    size = path.stat().st_size
    offset = 0
    with path.open("rb") as f:
        while offset < size:
            f.seek(offset)
            head = f.read(16)
            if len(head) < 8:
                raise MediaError(path, f"truncated MP4: {len(head)} stray bytes at byte {offset}")
            box, header = int.from_bytes(head[:4], "big"), 8
            if box == 0:  # "extends to the end of the file", allowed for the last box
                return
            if box == 1:  # a 64-bit size follows the type
                box, header = int.from_bytes(head[8:16], "big"), 16
            if len(head) < header or box < header or offset + box > size:
                problem = f"box at byte {offset} claims {box} bytes of a {size}-byte file"
                raise MediaError(path, f"truncated or corrupt MP4: {problem}")
            offset += box


def _write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    delay = max(round(1000 / fps / _GIF_TICK_MS) * _GIF_TICK_MS, _GIF_MIN_DELAY_MS)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=delay, loop=0)


def _write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    _, h, w, _ = frames.shape
    even = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    # macro_block_size=1: imageio would otherwise rescale frames to multiples of 16
    writer = iio.get_writer(
        path, "ffmpeg", fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1
    )
    try:
        for frame in even:
            writer.append_data(frame)
    finally:
        writer.close()
