"""Reading and writing the media files the runtime takes in and hands back.

Reading: images with Pillow (PNG, JPEG, WebP, BMP, any mode); audio (WAV of any integer or float
sample format, WAVE_FORMAT_EXTENSIBLE included, FLAC, MP3, OGG Vorbis/Opus) and video (MP4, WebM,
MOV, MKV, AVI) with PyAV, ffmpeg's libraries in process: one decoder for every container and codec
users bring, which tells a stream's size, frame count and duration before anything is decoded and
lets decoding stop at any frame; GIF with Pillow, whose timing rules the reference shares. The
`Limits` (file bytes, image pixels, video frames and seconds, audio seconds) are checked from the
headers before decoding and again while decoding, which stops as soon as one is exceeded. A video
read with `pick` decodes only the frames the model uses and stops after the last of them.

Every problem that lies in the file itself (missing, corrupt, truncated, unsupported, empty, bad
sample rate, beyond a limit) surfaces as `MediaError`, whose one-line message names the file, so a
server can pass it straight back to the client instead of a decoder's traceback.
"""
from __future__ import annotations

import math
import os
import struct
import wave as _wav
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import imageio.v2 as iio
import numpy as np
from PIL import Image

from runtime.limits import Limits

MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 192000
VIDEO_SUFFIXES = (".gif", ".mp4", ".webm", ".mov", ".mkv", ".avi")  # what read_video takes
WRITTEN_VIDEO_SUFFIXES = (".gif", ".mp4")  # what write_video makes
DEFAULT_LIMITS = Limits()
FramePicker = Callable[[int, float], np.ndarray]  # (frames in the video, fps) -> indices of the frames to decode
SpanPicker = Callable[[int, int], list[tuple[int, int]]]  # (samples in the stream, rate) -> [start, stop) to keep

# Pillow reports damaged data through any of these, depending on the plugin and where it breaks.
_PIL_ERRORS = (
    OSError, SyntaxError, ValueError, IndexError, EOFError, struct.error, Image.DecompressionBombError
)
# ffmpeg's errors (InvalidDataError is also a ValueError, its EOFError an EOFError) and what PyAV
# raises around them on damaged input.
_AV_ERRORS = (av.FFmpegError, OSError, EOFError, ValueError, IndexError, RuntimeError)
# A stream that decodes to less than its header declares was cut short. The slack: a decoder may
# trim two codec frames of priming and padding (MP3 1152 samples, AAC 1024, Opus 960, Vorbis up to
# 2048; PCM and Vorbis report none, and RIFF and Ogg files are checked by their structure instead),
# and a video header's duration may be rounded to a frame or a few percent.
_CODEC_FRAMES_SLACK = 2
_MIN_CODEC_FRAME = 2048
_VIDEO_SLACK_FRACTION = 0.02
# GIF delays are whole centiseconds; browsers play delays of one tick or less at the default delay,
# so the writer never goes below two ticks and the reader reads short delays as browsers do.
_GIF_TICK_MS = 10
_GIF_MIN_DELAY_MS = 2 * _GIF_TICK_MS
_GIF_DEFAULT_DELAY_MS = 100
_GIF_TRAILER = b";"
_RIFF = b"RIFF"
_RIFF_HEADER_BYTES = 12  # "RIFF", the size, "WAVE"
# A WAV written to a pipe cannot seek back to fill in its sizes: writers leave a placeholder that
# means "to the end of the file" (ffmpeg 0xFFFFFFFF, espeak-ng --stdout 0x7FFFF000).
_RIFF_STREAMED_SIZE = 0x7FFFF000
_OGG_PAGE = b"OggS"
_OGG_HEADER_BYTES = 27
_OGG_END_OF_STREAM = 0x04
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


def read_image(path: str | Path, *, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """The image as uint8 H×W×3 RGB (any Pillow-readable format, any mode; alpha dropped, EXIF
    orientation ignored, as ImageBind's `Image.open(...).convert("RGB")` does). Its size is checked
    against `max_image_pixels` from the header, before the pixels are decoded."""
    p = _existing(path, limits)
    try:
        with Image.open(p) as im:
            _check_pixels(p, *im.size, limits)
            im.load()  # Pillow decodes lazily: decode all of it inside the try, so damage is a MediaError
            return np.array(im.convert("RGB"))
    except Image.DecompressionBombError as err:  # Pillow's own bound, checked as it opens: above any limit
        raise MediaError(p, f"{err} (limit max_image_pixels={limits.max_image_pixels})") from err
    except _PIL_ERRORS as err:
        raise MediaError(p, f"cannot decode image: {err}") from err


def write_png(path: str | Path, image: np.ndarray, compress_level: int = 6) -> None:
    """Write a uint8 H×W×3 image as PNG; `compress_level` is zlib's, 6 PIL's default (1 encodes a
    noisy 1,024-pixel frame in a third of the time, 15% larger, the same pixels)."""
    p = _with_suffix(path, (".png",))
    frame = _rgb_uint8(p, np.asarray(image), ndim=3)
    try:
        Image.fromarray(frame).save(p, format="PNG", compress_level=compress_level)
    except OSError as err:
        raise MediaError(p, f"cannot write PNG: {err}") from err


def read_audio(path: str | Path, *, limits: Limits = DEFAULT_LIMITS) -> tuple[np.ndarray, int]:
    """The first audio stream as float32 mono in [-1, 1] and its sample rate.

    Channels are averaged. Integer samples are scaled as torchaudio.load does (unsigned 8-bit
    centred on 128, signed n-bit divided by 2**(n-1)); float samples are taken as they are. More
    than `max_audio_seconds`, by the header or while decoding, is refused; so is a stream that
    decodes to less than its header declares (a cut file).
    """
    p = _existing(path, limits)
    chunks, rate = [], 0
    for mono, rate in _mono_frames(p, limits):
        chunks.append(mono)
    return np.concatenate(chunks), rate


def read_audio_spans(
    path: str | Path, spans: SpanPicker, *, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[np.ndarray], int, int]:
    """Only the samples [start, stop) of each span `spans(samples in the stream, rate)` asks for,
    as `read_audio` would give them, with the stream's length and rate. The stream is decoded
    twice: once to count (and check) its samples, once up to the end of the last span, keeping
    only the spans."""
    p = _existing(path, limits)
    total, rate = 0, 0
    for mono, rate in _mono_frames(p, limits):
        total += len(mono)
    ranges = spans(total, rate)
    kept: list[list[np.ndarray]] = [[] for _ in ranges]
    at, end = 0, max((stop for _, stop in ranges), default=0)
    for mono, _ in _mono_frames(p, limits):
        for pieces, (start, stop) in zip(kept, ranges):
            low, high = max(start, at), min(stop, at + len(mono))
            if low < high:
                pieces.append(mono[low - at : high - at])
        at += len(mono)
        if at >= end:
            break
    return [np.concatenate(pieces) if pieces else np.zeros(0, np.float32) for pieces in kept], total, rate


def _mono_frames(path: Path, limits: Limits) -> Iterator[tuple[np.ndarray, int]]:
    """(float32 mono samples, rate) of each decoded frame, the limits checked as they come; a
    stream with no samples or fewer than its header declares is refused at its end."""
    _check_container_end(path)
    with _decoding(path, "audio"), av.open(str(path)) as container:
        stream = _first_stream(path, container.streams.audio, "audio")
        rate = stream.codec_context.sample_rate
        _check_rate(path, rate)
        declared = _declared_seconds(stream, container)
        _check_seconds(path, declared or 0.0, limits.max_audio_seconds, "max_audio_seconds")
        samples = 0
        for frame in container.decode(stream):
            mono = _mono(frame)
            samples += len(mono)
            _check_seconds(path, samples / rate, limits.max_audio_seconds, "max_audio_seconds")
            yield mono, rate
        if samples == 0:
            raise MediaError(path, "no audio frames")
        slack = _CODEC_FRAMES_SLACK * max(stream.codec_context.frame_size, _MIN_CODEC_FRAME)
        _check_complete(path, samples, None if declared is None else declared * rate, slack, "samples")


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
    x = np.asarray(wave, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {x.shape}")
    return resample_span(x, 0, x.size, src_rate, dst_rate, 0, resampled_length(x.size, src_rate, dst_rate))


def resampled_length(samples: int, src_rate: int, dst_rate: int) -> int:
    down, up = _rates(src_rate, dst_rate)
    return -(-up * samples // down)


def source_span(start: int, stop: int, total: int, src_rate: int, dst_rate: int) -> tuple[int, int]:
    """The input samples [first, last) of a `total`-sample waveform that output samples
    [start, stop) of `resample` are made from."""
    down, up = _rates(src_rate, dst_rate)
    width = _filter_width(down, up)
    first, last = start * down // up - width, (stop - 1) * down // up + width + 1
    return (start, stop) if down == up else (max(first, 0), min(last, total))


def resample_span(
    part: np.ndarray, first: int, total: int, src_rate: int, dst_rate: int, start: int, stop: int
) -> np.ndarray:
    """Output samples [start, stop) of `resample(whole, src_rate, dst_rate)`, bit for bit, from
    `part` = whole[first : last] (`source_span`) of a `total`-sample waveform: the same taps
    over the same samples, zeros only beyond the whole waveform's ends."""
    down, up = _rates(src_rate, dst_rate)
    x = np.asarray(part, dtype=np.float64)
    if down == up:
        return x[start - first : stop - first].astype(np.float32)
    cutoff = min(down, up) * _ROLLOFF
    width = _filter_width(down, up)
    padded = np.pad(x, width)
    taps = np.arange(-width, width + 1)
    out = np.empty(stop - start)
    for begin in range(start, stop, _RESAMPLE_CHUNK):
        j = np.arange(begin, min(begin + _RESAMPLE_CHUNK, stop))[:, None]
        i = j * down // up + taps  # input samples around output time j / dst_rate
        t = np.clip((i * up - j * down) * (cutoff / (up * down)), -_LOWPASS_ZEROS, _LOWPASS_ZEROS)
        kernel = np.sinc(t) * np.cos(t * np.pi / (2 * _LOWPASS_ZEROS)) ** 2 * (cutoff / down)
        out[begin - start : begin - start + len(j)] = (padded[i - first + width] * kernel).sum(axis=1)
    return out.astype(np.float32)


def _rates(src_rate: int, dst_rate: int) -> tuple[int, int]:
    """(down, up): the two rates reduced by their common divisor."""
    if src_rate <= 0 or dst_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {src_rate} and {dst_rate}")
    gcd = math.gcd(src_rate, dst_rate)
    return src_rate // gcd, dst_rate // gcd


def _filter_width(down: int, up: int) -> int:
    return math.ceil(_LOWPASS_ZEROS * down / (min(down, up) * _ROLLOFF))


def read_video(
    path: str | Path, *, pick: FramePicker | None = None, limits: Limits = DEFAULT_LIMITS
) -> tuple[np.ndarray, float]:
    """Frames as uint8 N×H×W×3 RGB and the frame rate: every frame, or with `pick` only the frames
    at `pick(frames in the video, fps)`, in that order (an index may repeat).

    The frames are counted and the limits checked (`max_image_pixels` per frame,
    `max_video_frames`, `max_video_seconds`) before any is decoded; decoding then stops after the
    last picked frame. GIF through Pillow, with its mean frame rate (frames / total delay), as
    decord's average fps is in the reference pipeline; the other containers through PyAV, with
    the stream's average frame rate.
    """
    suffix = _video_suffix(Path(path))
    p = _existing(path, limits)
    read = _read_gif if suffix == ".gif" else _read_av_video
    return read(p, pick or (lambda count, fps: np.arange(count)), limits)


def write_video(path: str | Path, frames: np.ndarray, fps: float) -> None:
    """Write uint8 T×H×W×3 frames; the extension picks GIF (looping) or MP4 (H.264, yuv420p).

    GIF delays are rounded to whole centiseconds (at least two), its colours to a 256-colour
    palette per frame, and Pillow folds a frame identical to the one before into that frame's
    delay. MP4 frames of odd height or width get their last row or column repeated, because
    yuv420p needs even sizes.
    """
    p = Path(path)
    suffix = _video_suffix(p, WRITTEN_VIDEO_SUFFIXES)
    video = _rgb_uint8(p, np.asarray(frames), ndim=4)
    if not (math.isfinite(fps) and fps > 0):
        raise MediaError(p, f"frame rate must be positive, got {fps}")
    try:
        (_write_gif if suffix == ".gif" else _write_mp4)(p, video, fps)
    except OSError as err:
        raise MediaError(p, f"cannot write video: {_last_line(err)}") from err


def _existing(path: str | Path, limits: Limits) -> Path:
    p = Path(path)
    if not p.exists():
        raise MediaError(p, "file not found")
    if not p.is_file():
        raise MediaError(p, "not a regular file")
    size = p.stat().st_size
    if size > limits.max_file_bytes:
        raise MediaError(p, f"{size} bytes exceeds the limit max_file_bytes={limits.max_file_bytes}")
    return p


def _with_suffix(path: str | Path, suffixes: tuple[str, ...]) -> Path:
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise MediaError(p, f"unsupported extension {p.suffix!r}; expected {' or '.join(suffixes)}")
    return p


def _video_suffix(path: Path, suffixes: tuple[str, ...] = VIDEO_SUFFIXES) -> str:
    return _with_suffix(path, suffixes).suffix.lower()


def _last_line(err: Exception) -> str:
    # ffmpeg failures carry its whole log; the last line is the one that says what went wrong.
    lines = str(err).strip().splitlines()
    return lines[-1] if lines else type(err).__name__


def _check_rate(path: Path, rate: int) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise MediaError(path, f"sample rate {rate} Hz outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")


@contextmanager
def _decoding(path: Path, what: str) -> Iterator[None]:
    """A decoder's own exception as a MediaError naming the file."""
    try:
        yield
    except MediaError:
        raise
    except _AV_ERRORS as err:
        problem = getattr(err, "strerror", None) or _last_line(err)
        raise MediaError(path, f"cannot decode {what}: {problem}") from err


def _check_pixels(path: Path, width: int, height: int, limits: Limits) -> None:
    if width * height > limits.max_image_pixels:
        raise MediaError(path, f"{width}×{height} pixels exceeds the limit max_image_pixels={limits.max_image_pixels}")


def _check_seconds(path: Path, seconds: float, limit: float, name: str) -> None:
    if seconds > limit:
        raise MediaError(path, f"{seconds:.1f} s exceeds the limit {name}={limit:g}")


def _declared_seconds(stream: av.stream.Stream, container: av.container.InputContainer) -> float | None:
    """The duration the headers give the stream (or the whole file), None when they give none."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return container.duration / av.time_base if container.duration is not None else None


def _check_complete(path: Path, got: int, declared: float | None, slack: float, unit: str) -> None:
    if declared is not None and got + slack < declared:
        raise MediaError(path, f"truncated: {got} of the {declared:.0f} {unit} its header declares")


def _mono(frame: av.AudioFrame) -> np.ndarray:
    """One decoded audio frame as float32 mono, integer formats scaled by their full range."""
    fmt, channels = frame.format, frame.layout.nb_channels
    x = frame.to_ndarray()
    x = x if fmt.is_planar else x.reshape(-1, channels).T  # packed samples interleave the channels
    if fmt.name.startswith("u8"):  # 8-bit is the one unsigned width
        x = (x.astype(np.float64) - 128) / 128
    elif not fmt.name.startswith(("flt", "dbl")):
        x = x / float(1 << (fmt.bits - 1))
    return x.mean(axis=0, dtype=np.float64).astype(np.float32)


def _check_container_end(path: Path) -> None:
    """ffmpeg decodes a RIFF (WAV) or Ogg file cut short quietly, as a shorter one whose duration
    it takes from what is left; their own structure tells."""
    with path.open("rb") as f:
        magic = f.read(4)
    if magic == _RIFF:
        _check_riff_chunks(path)
    elif magic == _OGG_PAGE:
        _check_ogg_end(path)


def _check_riff_chunks(path: Path) -> None:
    """Walk the chunks of a RIFF file: one running past the end means the file was cut."""
    size = path.stat().st_size
    offset = _RIFF_HEADER_BYTES
    with path.open("rb") as f:
        while offset + 8 <= size:
            f.seek(offset)
            head = f.read(8)
            length = int.from_bytes(head[4:], "little")
            if length >= _RIFF_STREAMED_SIZE:
                return
            if offset + 8 + length > size:
                problem = f"chunk {head[:4]!r} at byte {offset} claims {length} bytes of a {size}-byte file"
                raise MediaError(path, f"truncated: {problem}")
            offset += 8 + length + length % 2  # chunks are padded to even sizes


def _check_ogg_end(path: Path) -> None:
    """An Ogg stream ends with a whole page flagged end-of-stream."""
    size = path.stat().st_size
    with path.open("rb") as f:
        f.seek(max(0, size - (1 << 16)))  # an Ogg page is at most 65307 bytes
        tail = f.read()
    start = tail.rfind(_OGG_PAGE)
    header = tail[start : start + _OGG_HEADER_BYTES]
    if start < 0 or len(header) < _OGG_HEADER_BYTES:
        raise MediaError(path, "truncated Ogg: no whole page at the end")
    segments = tail[start + _OGG_HEADER_BYTES : start + _OGG_HEADER_BYTES + header[26]]
    page_end = start + _OGG_HEADER_BYTES + header[26] + sum(segments)
    if page_end != len(tail) or not header[5] & _OGG_END_OF_STREAM:
        raise MediaError(path, "truncated Ogg: the last page is cut or is not the end of the stream")


def _rgb_uint8(path: Path, array: np.ndarray, ndim: int) -> np.ndarray:
    if array.dtype != np.uint8 or array.ndim != ndim or array.shape[-1] != 3 or 0 in array.shape:
        shape = "H×W×3" if ndim == 3 else "T×H×W×3"
        raise MediaError(path, f"expected non-empty uint8 {shape}, got {array.dtype} {array.shape}")
    return array


def _read_gif(path: Path, pick: FramePicker, limits: Limits) -> tuple[np.ndarray, float]:
    try:
        with Image.open(path) as im:
            if im.format != "GIF":
                raise MediaError(path, f"not a GIF file but {im.format}")
            _check_pixels(path, *im.size, limits)
            delays = _gif_delays(path, im, limits)
            fps = 1000 * len(delays) / sum(delays)  # Pillow opened it, so there is a frame
            index = np.asarray(pick(len(delays), fps))
            decoded = {}
            for i in sorted(set(index.ravel().tolist())):  # forward only: each seek continues from the last
                im.seek(i)
                decoded[i] = np.array(im.convert("RGB"))
    except _PIL_ERRORS as err:
        if isinstance(err, MediaError):
            raise
        raise MediaError(path, f"cannot decode GIF: {err}") from err
    with path.open("rb") as f:
        f.seek(-len(_GIF_TRAILER), os.SEEK_END)
        if f.read() != _GIF_TRAILER:
            # Pillow stops quietly at a cut between two frames; the missing trailer gives it away.
            raise MediaError(path, "truncated GIF (no trailer)")
    return np.stack([decoded[i] for i in index.ravel()]), fps


def _gif_delays(path: Path, im: Image.Image, limits: Limits) -> list[int]:
    """Each frame's delay in ms, frame by frame: the frame and duration limits stop the count."""
    delays: list[int] = []
    while True:
        delay = im.info.get("duration", 0)
        delays.append(delay if delay > _GIF_TICK_MS else _GIF_DEFAULT_DELAY_MS)
        if len(delays) > limits.max_video_frames:
            raise MediaError(path, f"more than {limits.max_video_frames} frames exceeds the limit max_video_frames")
        _check_seconds(path, sum(delays) / 1000, limits.max_video_seconds, "max_video_seconds")
        try:
            im.seek(im.tell() + 1)
        except EOFError:
            return delays


def _read_av_video(path: Path, pick: FramePicker, limits: Limits) -> tuple[np.ndarray, float]:
    if path.suffix.lower() in (".mp4", ".mov"):
        _check_mp4_boxes(path)
    with _decoding(path, "video"):
        with av.open(str(path)) as container:
            count, fps = _count_frames(path, container, limits)
        index = np.asarray(pick(count, fps))
        with av.open(str(path)) as container:
            frames = _decode_frames(path, container, index, count, limits)
    return frames, fps


def _first_stream(path: Path, streams: tuple[av.stream.Stream, ...], kind: str) -> av.stream.Stream:
    """The first stream of a kind, with a decoder for its codec."""
    if not streams:
        raise MediaError(path, f"no {kind} stream")
    if streams[0].codec_context is None:
        raise MediaError(path, f"the {kind} stream's codec is unknown")
    return streams[0]


def _count_frames(path: Path, container: av.container.InputContainer, limits: Limits) -> tuple[int, float]:
    """Frames (packets, demuxed without decoding) and the frame rate, every limit checked first."""
    stream = _first_stream(path, container.streams.video, "video")
    _check_pixels(path, stream.codec_context.width, stream.codec_context.height, limits)
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    if not (math.isfinite(fps) and fps > 0):
        raise MediaError(path, f"no usable frame rate ({fps})")
    declared = _declared_seconds(stream, container)
    _check_seconds(path, declared or 0.0, limits.max_video_seconds, "max_video_seconds")
    count = 0
    for packet in container.demux(stream):
        count += packet.size > 0  # the demuxer ends with an empty flush packet
        if count > limits.max_video_frames:
            raise MediaError(path, f"more than {limits.max_video_frames} frames exceeds the limit max_video_frames")
        _check_seconds(path, count / fps, limits.max_video_seconds, "max_video_seconds")
    if count == 0:
        raise MediaError(path, "no video frames")
    expected = stream.frames or (None if declared is None else declared * fps)
    _check_complete(path, count, expected, 1 + _VIDEO_SLACK_FRACTION * (expected or 0), "frames")
    return count, fps


def _decode_frames(
    path: Path, container: av.container.InputContainer, index: np.ndarray, count: int, limits: Limits
) -> np.ndarray:
    """The frames at `index` (any shape), decoding up to the last of them and no further."""
    wanted = set(index.ravel().tolist())
    decoded: dict[int, np.ndarray] = {}
    for i, frame in enumerate(container.decode(_first_stream(path, container.streams.video, "video"))):
        if i in wanted:
            _check_pixels(path, frame.width, frame.height, limits)  # a stream may change size midway
            decoded[i] = frame.to_ndarray(format="rgb24")
            if len(decoded) == len(wanted):
                break
    missing = sorted(wanted - decoded.keys())
    if missing:
        raise MediaError(path, f"corrupt video: frame {missing[0]} of {count} cannot be decoded")
    return np.stack([decoded[i] for i in index.ravel()])


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
