"""runtime.media: round trips through real files, and the failures MediaError must report."""
from __future__ import annotations

import json
import struct
import subprocess
import wave
import zlib
from pathlib import Path

import imageio.v2 as iio
import imageio_ffmpeg
import numpy as np
import pytest
import soundfile
from PIL import Image

from runtime import media
from runtime.limits import Limits
from runtime.media import MediaError

RATE = 16000


def _raises_naming(path: Path, call, *args) -> str:
    """Run call(*args), expect MediaError, check its message is one line naming the file. A last
    argument that is a `Limits` (after a `pick`, for read_video) is passed as `limits=`."""
    kwargs = {}
    if args and isinstance(args[-1], Limits):
        *args, kwargs["limits"] = args
        if call is media.read_video and len(args) > 1:
            *args, kwargs["pick"] = args
    with pytest.raises(MediaError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def _blocks(count: int, size: int = 32) -> np.ndarray:
    """Frames of a few flat colours, each frame different (GIF palettes keep them exact)."""
    frames = np.zeros((count, size, size, 3), np.uint8)
    for i in range(count):
        frames[i, : size // 2] = (40 * i, 200, 30)
        frames[i, size // 2 :, : 8 + 2 * i] = (250, 10, 255 - 30 * i)
    return frames


def _gradient(count: int, height: int = 32, width: int = 32) -> np.ndarray:
    """Smooth moving frames, which H.264 keeps close."""
    y, x = np.mgrid[0:height, 0:width]
    frames = [np.stack([4 * x + 8 * i, 4 * y, np.full_like(x, 60 + 10 * i)], -1) for i in range(count)]
    return np.clip(frames, 0, 255).astype(np.uint8)


def _write_pcm(path: Path, ints: np.ndarray, width: int, rate: int = RATE) -> None:
    """A WAV with the given integer samples (frames × channels), written with the stdlib."""
    if width == 1:
        data = (ints + 128).astype(np.uint8).tobytes()
    else:
        data = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints.ravel())
    with wave.open(str(path), "wb") as w:
        w.setnchannels(ints.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)


# --- images


def test_png_round_trip(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    media.write_png(tmp_path / "a.png", image)
    out = media.read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("RGBA", "PNG"), ("P", "GIF"), ("RGB", "JPEG"), ("CMYK", "JPEG")])
def test_read_image_converts_any_mode_to_rgb(tmp_path, mode, fmt):
    path = tmp_path / f"a.{fmt.lower()}"
    Image.new("RGB", (7, 5), (200, 40, 90)).convert(mode).save(path, format=fmt)
    out = media.read_image(path)
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(Image.open(path).convert("RGB")))


def test_read_image_failures(tmp_path):
    media.write_png(tmp_path / "a.png", _blocks(1, 64)[0])
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really" * 20)
    assert "truncated" in _raises_naming(tmp_path / "cut.png", media.read_image, tmp_path / "cut.png")
    _raises_naming(tmp_path / "junk.png", media.read_image, tmp_path / "junk.png")
    assert "not found" in _raises_naming(tmp_path / "no.png", media.read_image, tmp_path / "no.png")
    _raises_naming(tmp_path, media.read_image, tmp_path)


def test_write_png_rejects_bad_input(tmp_path):
    _raises_naming(tmp_path / "a.png", media.write_png, tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    _raises_naming(tmp_path / "a.png", media.write_png, tmp_path / "a.png", np.zeros((4, 4, 3), np.float32))
    _raises_naming(tmp_path / "a.jpg", media.write_png, tmp_path / "a.jpg", np.zeros((4, 4, 3), np.uint8))


# --- audio


def test_wav_round_trip_and_clipping(tmp_path):
    wave_in = np.concatenate([np.sin(np.linspace(0, 20, 1000)) * 0.9, [1.5, -1.5]])
    media.write_wav(tmp_path / "a.wav", wave_in, RATE)
    out, rate = media.read_audio(tmp_path / "a.wav")
    assert rate == RATE and out.dtype == np.float32 and out.shape == wave_in.shape
    np.testing.assert_allclose(out[:-2], wave_in[:-2], atol=1 / 32768)
    np.testing.assert_allclose(out[-2:], [32767 / 32768, -1.0])


@pytest.mark.parametrize(
    "width,left,right,expected",
    [
        (1, [-128, 0, 127], [-128, 0, 127], [-1.0, 0.0, 127 / 128]),
        (2, [-32768, 100, 32767], [-32768, 300, 32767], [-1.0, 200 / 32768, 32767 / 32768]),
        (3, [-(1 << 23), -1, (1 << 23) - 1], [-(1 << 23), -3, 1], [-1.0, -2 / (1 << 23), 0.5]),
        (4, [-(1 << 31), 1 << 20, 0], [-(1 << 31), 3 << 20, 0], [-1.0, 2 / (1 << 11), 0.0]),
    ],
)
def test_read_audio_pcm_widths_and_channel_average(tmp_path, width, left, right, expected):
    _write_pcm(tmp_path / "a.wav", np.array([left, right]).T, width)
    out, rate = media.read_audio(tmp_path / "a.wav")
    assert rate == RATE
    np.testing.assert_allclose(out, expected, atol=1e-7)


def test_read_audio_failures(tmp_path):
    _write_pcm(tmp_path / "slow.wav", np.zeros((10, 1), int), 2, rate=1000)
    assert "sample rate" in _raises_naming(tmp_path / "slow.wav", media.read_audio, tmp_path / "slow.wav")
    _write_pcm(tmp_path / "empty.wav", np.zeros((0, 1), int), 2)
    assert "no audio" in _raises_naming(tmp_path / "empty.wav", media.read_audio, tmp_path / "empty.wav")
    media.write_wav(tmp_path / "a.wav", np.zeros(1000), RATE)
    data = (tmp_path / "a.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[:-301])
    assert "truncated" in _raises_naming(tmp_path / "cut.wav", media.read_audio, tmp_path / "cut.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFX" + bytes(100))
    _raises_naming(tmp_path / "junk.wav", media.read_audio, tmp_path / "junk.wav")
    _raises_naming(tmp_path / "no.wav", media.read_audio, tmp_path / "no.wav")


@pytest.mark.parametrize("placeholder", [0xFFFFFFFF, 0x7FFFF000])
def test_wav_written_to_a_pipe_is_read_to_its_end(tmp_path, placeholder):
    """ffmpeg and espeak-ng --stdout cannot seek back to write the sizes; a placeholder stands for them."""
    media.write_wav(tmp_path / "a.wav", _tone(440.0, RATE, 0.1), RATE)
    data = bytearray((tmp_path / "a.wav").read_bytes())
    at = data.index(b"data") + 4
    data[4:8] = data[at : at + 4] = placeholder.to_bytes(4, "little")
    (tmp_path / "piped.wav").write_bytes(bytes(data))
    np.testing.assert_array_equal(media.read_audio(tmp_path / "piped.wav")[0], media.read_audio(tmp_path / "a.wav")[0])


def test_write_wav_rejects_bad_input(tmp_path):
    path = tmp_path / "a.wav"
    _raises_naming(path, media.write_wav, path, np.array([0.1, np.nan]), RATE)
    _raises_naming(path, media.write_wav, path, np.zeros((2, 5)), RATE)
    _raises_naming(path, media.write_wav, path, np.zeros(5), 100)
    _raises_naming(tmp_path / "a.mp3", media.write_wav, tmp_path / "a.mp3", np.zeros(5), RATE)


def _tone(freq: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)


@pytest.mark.parametrize("src,dst,freq", [(44100, 16000, 440.0), (8000, 16000, 1000.0), (22050, 16000, 3000.0)])
def test_resample_keeps_a_sine(src, dst, freq):
    x = _tone(freq, src, 0.5)
    y = media.resample(x, src, dst)
    assert y.dtype == np.float32 and len(y) == -(-len(x) * dst // src)
    peak = np.argmax(np.abs(np.fft.rfft(y))) * dst / len(y)
    assert abs(peak - freq) <= dst / len(y)
    interior = slice(50, -50)  # the ends see the zero padding
    np.testing.assert_allclose(y[interior], _tone(freq, dst, 0.5)[: len(y)][interior], atol=2e-3)


def test_resample_removes_what_the_new_rate_cannot_hold():
    x = _tone(12000.0, 48000)  # above the 8 kHz Nyquist of 16 kHz
    naive_rms = np.sqrt(np.mean(x[::3] ** 2))  # plain decimation folds it down to 4 kHz
    filtered_rms = np.sqrt(np.mean(media.resample(x, 48000, 16000)[50:-50] ** 2))
    assert naive_rms > 0.5 and filtered_rms < 0.01


def test_resample_identity_and_bad_rates():
    x = np.linspace(-1, 1, 11)
    y = media.resample(x, RATE, RATE)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x.astype(np.float32))
    with pytest.raises(ValueError):
        media.resample(x, 0, RATE)


# --- video


@pytest.mark.parametrize("fps,read_fps", [(10.0, 10.0), (8.0, 1000 / 120)])
def test_gif_round_trip(tmp_path, fps, read_fps):
    frames = _blocks(6)
    media.write_video(tmp_path / "a.gif", frames, fps)
    out, got_fps = media.read_video(tmp_path / "a.gif")
    np.testing.assert_array_equal(out, frames)
    assert got_fps == pytest.approx(read_fps)  # GIF delays are whole centiseconds


def test_mp4_round_trip(tmp_path):
    frames = _gradient(8)
    media.write_video(tmp_path / "a.mp4", frames, 8.0)
    out, fps = media.read_video(tmp_path / "a.mp4")
    assert out.shape == frames.shape and out.dtype == np.uint8 and fps == 8.0
    assert np.abs(out.astype(int) - frames).mean() < 3


def test_mp4_pads_odd_sizes(tmp_path):
    frames = _gradient(3, 33, 31)
    media.write_video(tmp_path / "odd.mp4", frames, 4.0)
    out, _ = media.read_video(tmp_path / "odd.mp4")
    assert out.shape == (3, 34, 32, 3)
    assert np.abs(out[:, :33, :31].astype(int) - frames).mean() < 3


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.9])
def test_truncated_video(tmp_path, suffix, fraction):
    whole, cut = tmp_path / f"a{suffix}", tmp_path / f"cut{suffix}"
    media.write_video(whole, _gradient(6), 8.0)
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * fraction)])
    _raises_naming(cut, media.read_video, cut)


def test_truncated_faststart_mp4(tmp_path):
    """With the index at the front, ffmpeg would quietly decode the frames that survived."""
    whole, cut = tmp_path / "a.mp4", tmp_path / "cut.mp4"
    writer = iio.get_writer(whole, "ffmpeg", fps=8, codec="libx264", ffmpeg_params=["-movflags", "+faststart"])
    for frame in np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8):  # no tiny P-frames
        writer.append_data(frame)
    writer.close()
    data = whole.read_bytes()
    assert data[4:8] == b"ftyp" and b"moov" in data[: len(data) // 2]
    cut.write_bytes(data[: int(len(data) * 0.8)])
    assert "truncated" in _raises_naming(cut, media.read_video, cut)


def test_gif_cut_between_frames(tmp_path):
    """Pillow reads a GIF cut cleanly after a frame as a shorter one; the missing trailer tells."""
    whole, cut = tmp_path / "a.gif", tmp_path / "cut.gif"
    media.write_video(whole, _blocks(4), 10.0)
    data = whole.read_bytes()
    control = b"\x21\xf9\x04"  # graphic control extension: each frame starts with one
    cut.write_bytes(data[: data.index(control, data.index(control) + 1)])
    with Image.open(cut) as first:
        first.load()  # the first frame is whole, so Pillow alone would not complain
    assert "truncated" in _raises_naming(cut, media.read_video, cut)


def test_corrupt_empty_and_unsupported_video(tmp_path):
    junk_mp4, junk_gif = tmp_path / "junk.mp4", tmp_path / "junk.gif"
    junk_mp4.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    junk_gif.write_bytes(b"GIF89a" + bytes(40) + b";")
    _raises_naming(junk_mp4, media.read_video, junk_mp4)
    _raises_naming(junk_gif, media.read_video, junk_gif)
    (tmp_path / "empty.gif").write_bytes(b"")
    _raises_naming(tmp_path / "empty.gif", media.read_video, tmp_path / "empty.gif")
    _raises_naming(tmp_path / "a.flv", media.read_video, tmp_path / "a.flv")
    assert "not found" in _raises_naming(tmp_path / "no.mp4", media.read_video, tmp_path / "no.mp4")


def test_audio_only_mp4_has_no_frames(tmp_path):
    path = tmp_path / "audio.mp4"
    tone = ["-f", "lavfi", "-i", "sine=frequency=440:duration=0.2", "-c:a", "aac"]
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *tone, str(path)], check=True)
    _raises_naming(path, media.read_video, path)


def test_write_video_rejects_bad_input(tmp_path):
    good = _blocks(2)
    _raises_naming(tmp_path / "a.webm", media.write_video, tmp_path / "a.webm", good, 8.0)
    _raises_naming(tmp_path / "a.mp4", media.write_video, tmp_path / "a.mp4", good[:0], 8.0)
    _raises_naming(tmp_path / "a.gif", media.write_video, tmp_path / "a.gif", good[0], 8.0)
    _raises_naming(tmp_path / "a.gif", media.write_video, tmp_path / "a.gif", good, 0.0)
    missing_dir = tmp_path / "no" / "a.mp4"
    _raises_naming(missing_dir, media.write_video, missing_dir, good, 8.0)


@pytest.mark.parametrize(
    "suffix,trials",
    [(".png", 40), (".wav", 40), (".gif", 40), (".mp4", 12), (".flac", 12), (".mp3", 12), (".ogg", 12), (".webm", 12), (".avi", 12)],
)
def test_damaged_files_fail_only_with_media_error(tmp_path, suffix, trials):
    """Random cuts and byte flips either still decode or raise MediaError, never a decoder's own error."""
    whole = tmp_path / f"a{suffix}"
    audio_codecs = {".flac": "flac", ".mp3": "libmp3lame", ".ogg": "libvorbis"}
    if suffix == ".png":
        media.write_png(whole, _blocks(1)[0])
    elif suffix == ".wav":
        media.write_wav(whole, _tone(440.0, RATE, 0.1), RATE)
    elif suffix in audio_codecs:
        _write_audio(whole, _stereo_tone(RATE, 0.5), RATE, f"ffmpeg {audio_codecs[suffix]}")
    elif suffix in (".webm", ".avi"):
        _write_ffmpeg_video(whole, _gradient(4), 8, "libvpx" if suffix == ".webm" else "mpeg4")
    else:
        media.write_video(whole, _gradient(4), 8.0)
    read = {".png": media.read_image, ".wav": media.read_audio, **dict.fromkeys(audio_codecs, media.read_audio)}.get(suffix, media.read_video)
    data, rng = bytearray(whole.read_bytes()), np.random.default_rng(1)
    for trial in range(trials):
        damaged = data[: rng.integers(len(data))] if trial % 2 else data.copy()
        if not trial % 2:
            for at in rng.integers(len(data), size=4):
                damaged[at] ^= 0xFF
        path = tmp_path / f"damaged{suffix}"
        path.write_bytes(bytes(damaged))
        try:
            read(path)
        except MediaError as err:
            assert str(path) in str(err) and "\n" not in str(err)


# --- media as users bring them: files made by ffmpeg's command line and by libsndfile (soundfile),
# two encoders independent of the PyAV decoder under test, compared with the signal they were made from

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
TONE_HZ = 440.0


def _ffmpeg(args: list[str], stdin: bytes | None = None) -> None:
    subprocess.run([FFMPEG, "-v", "error", "-y", *args], input=stdin, check=True)


def _stereo_tone(rate: int, seconds: float) -> np.ndarray:
    """(samples, 2): a 440 Hz tone on the left, a quieter 1 kHz tone on the right."""
    t = np.arange(int(rate * seconds)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * TONE_HZ * t), 0.2 * np.sin(2 * np.pi * 1000 * t)], 1).astype(np.float32)


def _write_audio(path: Path, signal: np.ndarray, rate: int, how: str) -> None:
    """`how`: a soundfile format/subtype pair ("WAVEX/FLOAT"), or "ffmpeg CODEC" encoding float32 PCM from stdin."""
    if how.startswith("ffmpeg "):
        raw = ["-f", "f32le", "-ar", str(rate), "-ac", str(signal.shape[1]), "-i", "-"]
        _ffmpeg([*raw, "-c:a", how.split()[1], str(path)], np.ascontiguousarray(signal, "<f4").tobytes())
    else:
        fmt, subtype = how.split("/")
        soundfile.write(path, signal, rate, format=fmt, subtype=subtype)


LOSSLESS_AUDIO = [
    ("a.wav", 22050, "WAV/PCM_16", 1 / 32768),
    ("a.wav", 44100, "WAVEX/FLOAT", 1e-7),  # WAVE_FORMAT_EXTENSIBLE, float32 samples
    ("a.wav", 48000, "WAVEX/PCM_24", 1 / (1 << 23)),
    ("a.wav", 16000, "WAV/DOUBLE", 1e-7),
    ("a.flac", 44100, "FLAC/PCM_16", 1 / 32768),
    ("b.flac", 22050, "ffmpeg flac", 1 / 32768),
]
LOSSY_AUDIO = [("a.mp3", 44100, "ffmpeg libmp3lame"), ("a.ogg", 44100, "OGG/VORBIS"), ("b.ogg", 48000, "ffmpeg libopus"), ("c.ogg", 22050, "ffmpeg libvorbis")]


@pytest.mark.parametrize("name,rate,how,tolerance", LOSSLESS_AUDIO)
def test_lossless_audio_decodes_to_the_source_samples(tmp_path, name, rate, how, tolerance):
    signal = _stereo_tone(rate, 0.5)
    _write_audio(tmp_path / name, signal, rate, how)
    wave_out, got_rate = media.read_audio(tmp_path / name)
    assert got_rate == rate and wave_out.dtype == np.float32 and wave_out.shape == (len(signal),)
    np.testing.assert_allclose(wave_out, signal.mean(axis=1), atol=tolerance)


def _peak_hz(x: np.ndarray, rate: int) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(x))) * rate / len(x))


@pytest.mark.parametrize("name,rate,how", LOSSY_AUDIO)
def test_lossy_audio_keeps_the_tone_and_the_length(tmp_path, name, rate, how):
    signal = _stereo_tone(rate, 1.0)[:, :1] * 1.6  # mono, 0.8 full scale
    _write_audio(tmp_path / name, signal, rate, how)
    wave_out, got_rate = media.read_audio(tmp_path / name)
    assert got_rate == rate and abs(len(wave_out) - len(signal)) <= 2 * 1152  # encoder priming, trimmed or not
    assert abs(_peak_hz(wave_out, rate) - TONE_HZ) <= rate / len(wave_out)
    rms = np.sqrt(np.mean(wave_out[2048:-2048] ** 2))
    assert rms == pytest.approx(0.8 / np.sqrt(2), rel=0.1)


@pytest.mark.parametrize("name,rate,how", [*[(n, r, h) for n, r, h, _ in LOSSLESS_AUDIO[::2]], *LOSSY_AUDIO])
@pytest.mark.parametrize("fraction", [0.3, 0.7])
def test_truncated_audio_of_every_format_is_refused(tmp_path, name, rate, how, fraction):
    whole, cut = tmp_path / name, tmp_path / f"cut{Path(name).suffix}"
    _write_audio(whole, _stereo_tone(rate, 2.0), rate, how)
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * fraction)])
    _raises_naming(cut, media.read_audio, cut)


def _moving(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    frames = [np.stack([3 * x + 12 * i, 4 * y, np.full_like(x, 40 + 15 * i)], -1) for i in range(count)]
    return np.clip(frames, 0, 255).astype(np.uint8)


def _write_ffmpeg_video(path: Path, frames: np.ndarray, fps: int, codec: str) -> None:
    _, h, w, _ = frames.shape
    raw = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-"]
    quality = ["-q:v", "2"] if codec in ("mpeg4", "mjpeg") else ["-crf", "10", "-b:v", "0"] if "vpx" in codec else ["-crf", "10"]
    pix = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    _ffmpeg([*raw, "-c:v", codec, *quality, "-pix_fmt", pix, str(path)], frames.tobytes())


VIDEOS = [("a.mp4", "libx264"), ("a.webm", "libvpx-vp9"), ("b.webm", "libvpx"), ("a.mov", "libx264"), ("a.mkv", "libx264"),
          ("a.avi", "mpeg4"), ("b.avi", "mjpeg")]


@pytest.mark.parametrize("name,codec", VIDEOS)
def test_video_containers_decode_to_the_source_frames(tmp_path, name, codec):
    frames = _moving(10)
    _write_ffmpeg_video(tmp_path / name, frames, 5, codec)
    out, fps = media.read_video(tmp_path / name)
    assert fps == 5.0 and out.shape == frames.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - frames).mean() < 4


class _CountingAv:
    """av.open, counting the frames each container decodes."""

    def __init__(self, real_open):
        self.real_open, self.decoded = real_open, 0

    def __call__(self, *args, **kwargs):
        counter = self

        class Container:
            def __init__(self, inner):
                self.inner = inner

            def __enter__(self):
                self.inner.__enter__()
                return self

            def __exit__(self, *exc):
                return self.inner.__exit__(*exc)

            def __getattr__(self, name):
                return getattr(self.inner, name)

            def decode(self, *streams):
                for frame in self.inner.decode(*streams):
                    counter.decoded += 1
                    yield frame

        return Container(self.real_open(*args, **kwargs))


@pytest.mark.parametrize("name,codec", [("a.mp4", "libx264"), ("a.webm", "libvpx-vp9"), ("a.avi", "mjpeg")])
def test_picked_frames_are_decoded_up_to_the_last_one_only(tmp_path, name, codec, monkeypatch):
    frames = _moving(30)
    _write_ffmpeg_video(tmp_path / name, frames, 10, codec)
    everything, _ = media.read_video(tmp_path / name)
    counting = _CountingAv(media.av.open)
    monkeypatch.setattr(media.av, "open", counting)
    seen = []
    picked, fps = media.read_video(tmp_path / name, pick=lambda count, fps: seen.append((count, fps)) or np.array([[3, 3], [1, 12]]))
    assert seen == [(30, 10.0)] and fps == 10.0
    np.testing.assert_array_equal(picked, everything[[3, 3, 1, 12]])
    assert counting.decoded == 13  # frames 0..12, none after the last one picked


def test_gif_pick_keeps_the_order_asked(tmp_path):
    frames = _blocks(6)
    media.write_video(tmp_path / "a.gif", frames, 10.0)
    picked, fps = media.read_video(tmp_path / "a.gif", pick=lambda count, fps: np.array([5, 0, 5]))
    np.testing.assert_array_equal(picked, frames[[5, 0, 5]])
    assert fps == pytest.approx(10.0)


@pytest.mark.parametrize("name,codec", VIDEOS[1:])  # MP4 has its own truncation tests above
@pytest.mark.parametrize("fraction", [0.4, 0.75])
def test_truncated_video_of_every_container_is_refused(tmp_path, name, codec, fraction):
    whole, cut = tmp_path / name, tmp_path / f"cut{Path(name).suffix}"
    _write_ffmpeg_video(whole, np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8), 8, codec)
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * fraction)])
    _raises_naming(cut, media.read_video, cut)


def test_corrupt_files_of_every_kind_are_refused(tmp_path):
    junk = np.random.default_rng(2).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    for suffix in (".webm", ".mov", ".mkv", ".avi"):
        (tmp_path / f"junk{suffix}").write_bytes(junk)
        _raises_naming(tmp_path / f"junk{suffix}", media.read_video, tmp_path / f"junk{suffix}")
    for suffix in (".flac", ".mp3", ".ogg", ".wav"):
        (tmp_path / f"junk{suffix}").write_bytes(junk)
        _raises_naming(tmp_path / f"junk{suffix}", media.read_audio, tmp_path / f"junk{suffix}")
    _write_audio(tmp_path / "tone.mkv", _stereo_tone(16000, 0.2), 16000, "ffmpeg flac")
    assert "no video stream" in _raises_naming(tmp_path / "tone.mkv", media.read_video, tmp_path / "tone.mkv")


# --- limits, applied from the headers before anything is decoded


def _png_claiming(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width × height; its pixel data is that of a 4×4 image."""
    media.write_png(path, _blocks(1, 4)[0])
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    path.write_bytes(bytes(data))


def test_image_pixels_are_refused_from_the_header(tmp_path):
    _png_claiming(tmp_path / "big.png", 8000, 6000)
    message = _raises_naming(tmp_path / "big.png", media.read_image, tmp_path / "big.png")
    assert "8000×6000 pixels exceeds the limit max_image_pixels=40000000" in message
    _png_claiming(tmp_path / "huge.png", 20000, 20000)  # beyond Pillow's own bound too, which it checks first
    assert "limit max_image_pixels" in _raises_naming(tmp_path / "huge.png", media.read_image, tmp_path / "huge.png")
    media.write_png(tmp_path / "a.png", _blocks(1, 64)[0])
    small = Limits(max_image_pixels=64 * 63)
    assert "max_image_pixels=4032" in _raises_naming(tmp_path / "a.png", media.read_image, tmp_path / "a.png", small)
    assert media.read_image(tmp_path / "a.png", limits=Limits(max_image_pixels=64 * 64)).shape == (64, 64, 3)


def test_file_bytes_are_refused_before_reading(tmp_path):
    media.write_wav(tmp_path / "a.wav", _tone(440.0, RATE, 0.1), RATE)
    size = (tmp_path / "a.wav").stat().st_size
    message = _raises_naming(tmp_path / "a.wav", media.read_audio, tmp_path / "a.wav", Limits(max_file_bytes=size - 1))
    assert f"{size} bytes exceeds the limit max_file_bytes={size - 1}" in message
    assert len(media.read_audio(tmp_path / "a.wav", limits=Limits(max_file_bytes=size))[0]) == 1600


@pytest.mark.parametrize("name,how", [("a.wav", "WAV/PCM_16"), ("a.mp3", "ffmpeg libmp3lame"), ("a.ogg", "OGG/VORBIS")])
def test_audio_seconds_are_limited(tmp_path, name, how):
    _write_audio(tmp_path / name, _stereo_tone(16000, 3.0), 16000, how)
    message = _raises_naming(tmp_path / name, media.read_audio, tmp_path / name, Limits(max_audio_seconds=2.5))
    assert "exceeds the limit max_audio_seconds=2.5" in message
    assert len(media.read_audio(tmp_path / name, limits=Limits(max_audio_seconds=3.5))[0]) > 2.9 * 16000


@pytest.mark.parametrize("name", ["a.mkv", "a.gif"])
def test_video_frames_and_seconds_are_limited(tmp_path, name):
    frames = _moving(12, 32, 32)
    if name.endswith(".gif"):
        media.write_video(tmp_path / name, frames, 4.0)
    else:
        _write_ffmpeg_video(tmp_path / name, frames, 4, "libx264")
    path = tmp_path / name
    assert "limit max_video_frames" in _raises_naming(path, media.read_video, path, None, Limits(max_video_frames=11))
    assert "limit max_video_seconds=2.5" in _raises_naming(path, media.read_video, path, None, Limits(max_video_seconds=2.5))
    assert "limit max_image_pixels" in _raises_naming(path, media.read_video, path, None, Limits(max_image_pixels=32 * 31))
    assert len(media.read_video(path, limits=Limits(max_video_frames=12, max_video_seconds=3.0))[0]) == 12


def test_an_answer_replaces_the_media_of_the_last_one_in_its_folder(tmp_path):
    from runtime.response import write_response

    meta = {"audio": {"sample_rate": 16000}}
    write_response(tmp_path, "a picture", {"image": np.zeros((8, 8, 3), np.uint8)}, meta)
    (tmp_path / "notes.txt").write_text("mine")
    body = write_response(tmp_path, "a sound", {"audio": np.zeros(160, np.float32)}, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio.wav", "notes.txt", "response.json"]
    assert json.loads((tmp_path / "response.json").read_text()) == body
