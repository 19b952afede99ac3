"""runtime.preprocess: ImageBind's image, video and audio preprocessing in numpy."""
from __future__ import annotations

from fractions import Fraction

import kaldi_native_fbank as knf
import numpy as np
import pytest
import soundfile
from PIL import Image

from runtime import media
from runtime import preprocess as pp
from runtime.inputs import prepare_inputs
from train.presets import get_preset

RATE = 16000
MEL_BINS = 128
EPS = float(np.finfo(np.float32).eps)


@pytest.fixture(scope="module")
def imagebind() -> dict:
    return get_preset("tiny")["imagebind"]


def _clip_normalised(rgb: tuple[int, int, int]) -> np.ndarray:
    return (np.array(rgb, np.float32) / 255 - pp.CLIP_MEAN) / pp.CLIP_STD


def _tone(freq: float, seconds: float, rate: int = RATE) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate).astype(np.float32)


# --- images


@pytest.mark.parametrize("tall", [False, True])
def test_image_centre_crop_keeps_the_centre(tall):
    """The long side is twice the short one, so the crop keeps its middle half: all green."""
    green = (20, 220, 40)
    wide = np.empty((200, 400, 3), np.uint8)
    wide[:, :60], wide[:, 60:340], wide[:, 340:] = (250, 0, 0), green, (0, 0, 250)
    out = pp.image_to_tensor(wide.transpose(1, 0, 2) if tall else wide, 224)
    assert out.shape == (3, 224, 224) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.broadcast_to(_clip_normalised(green)[:, None, None], out.shape), atol=0.03)


@pytest.mark.parametrize("width,offset", [(224, 0), (225, 0), (226, 1), (227, 2)])
def test_centre_crop_offset_rounds_like_torchvision(width, offset):
    """Short side already 224, so no resize: the crop starts at round((w - 224) / 2), half to even."""
    image = np.zeros((224, width, 3), np.uint8)
    image[..., 0] = np.arange(width)[None, :]
    out = pp.image_to_tensor(image, 224)
    first_column = np.rint((out[0, 0, 0] * pp.CLIP_STD[0] + pp.CLIP_MEAN[0]) * 255)
    assert first_column == offset


def test_image_resize_truncates_and_crop_rounds_half_to_even():
    """200×305: the long side becomes int(224 * 305 / 200) = int(341.6) = 341 (not 342), and the
    crop starts at round(58.5) = 58 (not 59)."""
    image = np.random.default_rng(0).integers(0, 256, (200, 305, 3), dtype=np.uint8)
    resized = np.asarray(Image.fromarray(image).resize((341, 224), Image.Resampling.BICUBIC))
    expected = (resized[:, 58:282].astype(np.float32) / 255 - pp.CLIP_MEAN) / pp.CLIP_STD
    np.testing.assert_array_equal(pp.image_to_tensor(image, 224), expected.transpose(2, 0, 1))


# --- clip sampling and video


def test_clip_timepoints_divide_by_clips_not_clips_minus_one():
    assert pp.clip_timepoints(10.0, 2.0, 3) == [
        (Fraction(0), Fraction(2)),
        (Fraction(8, 3), Fraction(14, 3)),
        (Fraction(16, 3), Fraction(22, 3)),
    ]
    assert pp.clip_timepoints(1.0, 2.0, 3) == [(Fraction(0), Fraction(2))] * 3


def test_clip_frame_indices_for_a_ten_frame_video():
    # 10 frames at 2 fps = 5 s: starts 0, 0.6, 1.2, 1.8, 2.4 s cover frames ceil(2 t) .. ceil(2 (t + 2)) - 1
    np.testing.assert_array_equal(pp.clip_frame_indices(10, 2.0, 5, 2, 2.0), [[0, 3], [2, 5], [3, 6], [4, 7], [5, 8]])
    # linspace(0, 3, 3) = 0, 1.5, 3 truncates to 0, 1, 3
    np.testing.assert_array_equal(
        pp.clip_frame_indices(10, 2.0, 5, 3, 2.0), [[0, 1, 3], [2, 3, 5], [3, 4, 6], [4, 5, 7], [5, 6, 8]]
    )
    # 10 frames at 10 fps = 1 s, shorter than a clip: every clip spans the whole video
    np.testing.assert_array_equal(pp.clip_frame_indices(10, 10.0, 5, 2, 2.0), [[0, 9]] * 5)
    # more frames wanted than the clip holds: frames repeat
    np.testing.assert_array_equal(pp.clip_frame_indices(2, 10.0, 1, 4, 2.0), [[0, 0, 0, 1]])


def test_video_to_clips_uses_the_sampled_frames(imagebind):
    vision = imagebind["vision"]
    frames = np.stack([np.full((60, 80, 3), 20 * i, np.uint8) for i in range(10)])
    out = pp.video_to_clips(frames, 2.0, vision["image_size"], vision["video_clips"], vision["num_frames"], 2.0)
    size = vision["image_size"]
    assert out.shape == (vision["video_clips"], 3, vision["num_frames"], size, size) and out.dtype == np.float32
    grey = (out[:, 0, :, size // 2, size // 2] * pp.CLIP_STD[0] + pp.CLIP_MEAN[0]) * 255
    np.testing.assert_array_equal(np.rint(grey / 20), pp.clip_frame_indices(10, 2.0, 5, 2, 2.0))
    np.testing.assert_array_equal(out[1, :, 0], pp.image_to_tensor(frames[2], size))


# --- Kaldi fbank


def _kaldi_native_fbank(wave: np.ndarray, rate: int, bins: int) -> np.ndarray:
    """kaldi-native-fbank, an independent C++ Kaldi fbank, with ImageBind's options."""
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq, opts.frame_opts.dither, opts.frame_opts.window_type = rate, 0.0, "hanning"
    opts.frame_opts.frame_length_ms, opts.frame_opts.frame_shift_ms = 25.0, 10.0
    opts.mel_opts.num_bins, opts.mel_opts.low_freq, opts.mel_opts.high_freq = bins, 20.0, 0.0
    opts.use_energy, opts.htk_compat = False, True
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(rate, wave.tolist())
    fbank.input_finished()
    return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])


@pytest.mark.parametrize("bins", [64, 80, 128])
def test_fbank_matches_kaldi_native_fbank(bins):
    """A tone with noise, against an independent implementation (1e-3 in the log domain: float32
    rounding in its power spectrum, largest in the quietest bins; a wrong window, pre-emphasis or
    mel scale is off by 1e-2 and more)."""
    rng = np.random.default_rng(0)
    wave = (0.5 * _tone(440.0, 1.0) + 0.05 * rng.standard_normal(RATE)).astype(np.float32)
    fbank = pp.kaldi_fbank(wave, RATE, bins)
    reference = _kaldi_native_fbank(wave, RATE, bins)
    assert fbank.shape == reference.shape == (1 + (len(wave) - 400) // 160, bins) and fbank.dtype == np.float32
    np.testing.assert_allclose(fbank, reference, atol=1e-3, rtol=0)


def test_fbank_of_a_1khz_tone_peaks_in_the_bin_around_1khz():
    mel = 1127.0 * np.log(1.0 + np.array([20.0, RATE / 2, 1000.0]) / 700.0)
    centres = mel[0] + np.arange(1, MEL_BINS + 1) * (mel[1] - mel[0]) / (MEL_BINS + 1)
    expected = int(np.argmin(np.abs(centres - mel[2])))
    fbank = pp.kaldi_fbank(_tone(1000.0, 0.5), RATE, MEL_BINS)
    assert set(np.argmax(fbank, axis=1)) == {expected}


def test_fbank_of_silence_and_dc_is_the_log_floor():
    for wave in (np.zeros(RATE // 2, np.float32), np.full(RATE // 2, 0.3, np.float32)):
        fbank = pp.kaldi_fbank(wave, RATE, MEL_BINS)
        assert np.isfinite(fbank).all()
        np.testing.assert_allclose(fbank, np.log(EPS), rtol=1e-6)
    assert pp.kaldi_fbank(np.zeros(399, np.float32), RATE, MEL_BINS).shape == (0, MEL_BINS)


# --- audio clips


def _audio_clips(wave: np.ndarray, rate: int, audio: dict, **override) -> np.ndarray:
    a = {**audio, **override}
    keys = ("sample_rate", "clips", "clip_duration", "num_mel_bins", "target_length", "mean", "std")
    return pp.waveform_to_fbank_clips(wave, rate, *(a[k] for k in keys))


def test_audio_clips_for_the_tiny_preset_resample_first(imagebind):
    audio = imagebind["audio"]
    out = _audio_clips(_tone(440.0, 10.0, 44100), 44100, audio)
    assert out.shape == (audio["clips"], 1, audio["num_mel_bins"], audio["target_length"])
    assert out.dtype == np.float32 and np.isfinite(out).all()
    native = _audio_clips(_tone(440.0, 10.0), RATE, audio)
    np.testing.assert_array_equal(out.argmax(axis=2), native.argmax(axis=2))


def test_audio_pads_in_the_log_domain_then_normalises(imagebind):
    audio = imagebind["audio"]
    out = _audio_clips(np.zeros(RATE * 4, np.float32), RATE, audio)
    frames = 1 + (int(audio["clip_duration"] * RATE) - 400) // 160  # 198 for 2 s
    assert frames < audio["target_length"]
    np.testing.assert_allclose(out[..., :frames], (np.log(EPS) - audio["mean"]) / audio["std"], rtol=1e-6)
    np.testing.assert_allclose(out[..., frames:], -audio["mean"] / audio["std"], rtol=1e-6)


def test_audio_crops_to_target_length(imagebind):
    audio = imagebind["audio"]
    wave = np.random.default_rng(0).standard_normal(RATE * 3).astype(np.float32)
    out = _audio_clips(wave, RATE, audio, clips=1, clip_duration=3.0)
    fbank = pp.kaldi_fbank(wave - wave.mean(), RATE, audio["num_mel_bins"]).T[:, : audio["target_length"]]
    np.testing.assert_allclose(out[0, 0], (fbank - audio["mean"]) / audio["std"], rtol=1e-5, atol=1e-5)


def test_audio_clips_sit_where_the_sampler_puts_them(imagebind):
    """10 s of silence then tone from 5 s: clips at 0, 8/3 and 16/3 s put only the last in the tone
    (clips at 0, 4 and 8 s, a clips - 1 spacing, would put two there)."""
    audio = imagebind["audio"]
    wave = np.concatenate([np.zeros(RATE * 5, np.float32), _tone(1000.0, 5.0)])
    out = _audio_clips(wave, RATE, audio)
    silent = (np.log(EPS) - audio["mean"]) / audio["std"]
    assert np.allclose(out[0, ..., :198], silent) and np.allclose(out[1, ..., :198], silent)
    assert out[2].max() > 1.0


# --- pitch rows


def _note(octave: int, pitch: int) -> float:
    return 440.0 * 2 ** ((12 * (octave + 1) + pitch - 69) / 12)


@pytest.mark.parametrize("octave", [2, 3, 4, 5, 6, 7])
def test_pitch_rows_name_every_pitch_class_and_its_octave(octave):
    for pitch in range(12):
        rows = pp.pitch_rows(_tone(_note(octave, pitch), 1.0), RATE, 12, 6, 60)
        assert rows.shape == (18, 60) and rows.dtype == np.float32
        assert set(rows[:12, 10:50].argmax(axis=0)) == {pitch}
        # at C2 a semitone is one FFT bin, and its lowest notes spill below the rows' range
        lowest = octave == pp.LOWEST_OCTAVE
        assert rows[pitch, 10:50].min() > (0.4 if lowest else 0.6)
        assert set(rows[12:, 10:50].argmax(axis=0)) == {octave - pp.LOWEST_OCTAVE}
        assert rows[12 + octave - pp.LOWEST_OCTAVE, 10:50].min() > (0.6 if lowest else 0.9)


def test_pitch_rows_are_a_share_of_energy_whatever_the_level_and_zero_in_silence():
    loud, quiet = (pp.pitch_rows(a * _tone(293.66, 1.0), RATE, 12, 6, 60) for a in (1.0, 10 ** (-35 / 20)))
    np.testing.assert_allclose(loud[:12].sum(axis=0)[10:50], 1.0, rtol=1e-3)
    np.testing.assert_allclose(loud[12:].sum(axis=0)[10:50], 1.0, rtol=1e-3)
    np.testing.assert_allclose(quiet, loud, atol=1e-3)
    np.testing.assert_array_equal(pp.pitch_rows(np.zeros(RATE, np.float32), RATE, 12, 6, 60), 0.0)
    assert pp.pitch_rows(_tone(_note(8, 3), 1.0), RATE, 12, 6, 60)[:, 10:50].max() < 1e-3  # above the octaves


def test_pitch_rows_of_a_rising_sweep_climb_through_the_classes():
    """An octave sweep from D3 over one second: the loudest class climbs a semitone every 83 ms."""
    t = np.arange(RATE) / RATE
    k = np.log(2)
    wave = np.sin(2 * np.pi * _note(3, 2) * np.expm1(k * t) / k).astype(np.float32)
    rows = pp.pitch_rows(wave, RATE, 12, 6, 98)
    expected = (2 + 12 * (np.arange(98) * 0.01 + 0.0125)).round() % 12
    assert np.mean(rows[:12].argmax(axis=0)[15:85] == expected[15:85]) > 0.9
    assert rows[12 + 1, 15] > 0.9 and rows[12 + 2, 95] > 0.5  # starts in octave 3, ends in 4


def test_pitch_rows_need_both_counts():
    with pytest.raises(ValueError, match="both"):
        pp.pitch_shape({"pitch_classes": 12})


def test_pitch_rows_follow_the_log_mel_frame_for_frame(imagebind):
    audio = imagebind["audio"]
    assert pp.pitch_shape(audio) == (12, 6)
    wave = _tone(440.0, 0.5)
    out = pp.audio_input([wave], audio)
    mel = pp.fbank_clips([wave], *(audio[k] for k in ("sample_rate", "num_mel_bins", "target_length", "mean", "std")))
    assert out.shape == (1, 1, pp.audio_rows(audio), audio["target_length"])
    np.testing.assert_array_equal(out[:, :, : audio["num_mel_bins"]], mel)
    frames, rows = 1 + (RATE // 2 - 400) // 160, out[0, 0, audio["num_mel_bins"] :]
    np.testing.assert_array_equal(rows[:, :frames], pp.pitch_rows(wave - wave.mean(), RATE, 12, 6, frames))
    assert (rows[:, frames:] == 0).all()
    assert set(rows[:12, 5 : frames - 5].argmax(axis=0)) == {9}  # a
    assert set(rows[12:, 5 : frames - 5].argmax(axis=0)) == {4 - pp.LOWEST_OCTAVE}


def test_short_audio_repeats_the_same_clip(imagebind):
    audio = imagebind["audio"]
    out = _audio_clips(_tone(440.0, 0.5), RATE, audio)
    assert (out == out[0]).all()
    frames = 1 + (RATE // 2 - 400) // 160
    np.testing.assert_allclose(out[..., frames:], -audio["mean"] / audio["std"], rtol=1e-6)
    with pytest.raises(ValueError):
        _audio_clips(np.zeros(0, np.float32), RATE, audio)


@pytest.mark.parametrize("rate,seconds", [(44100, 0.7), (22050, 3.0), (16000, 12.5), (8000, 30.0), (48000, 20.0)])
def test_audio_input_keeps_only_its_clips_and_equals_the_whole_waveform_path(tmp_path, imagebind, rate, seconds):
    """prepare_inputs decodes only the samples the clips are made from, and gives bit for bit what
    resampling the whole waveform and cutting it gives."""
    rng = np.random.default_rng(1)
    wave = (0.4 * _tone(523.0, seconds, rate) + 0.05 * rng.standard_normal(int(rate * seconds))).astype(np.float32)
    soundfile.write(tmp_path / "a.flac", wave, rate)
    audio = imagebind["audio"]
    whole, got_rate = media.read_audio(tmp_path / "a.flac")
    keys = ("sample_rate", "clips", "clip_duration", "num_mel_bins", "target_length", "mean", "std")
    expected = pp.waveform_to_fbank_clips(whole, got_rate, *(audio[k] for k in keys), pp.pitch_shape(audio))
    np.testing.assert_array_equal(prepare_inputs(imagebind, {"audio": tmp_path / "a.flac"})["audio"][0], expected)
    spans = lambda total, r: [(0, 10), (total - 5, total)]  # noqa: E731
    parts, total, got = media.read_audio_spans(tmp_path / "a.flac", spans)
    assert (total, got) == (len(whole), rate) and [len(p) for p in parts] == [10, 5]
    np.testing.assert_array_equal(np.concatenate(parts), np.concatenate([whole[:10], whole[-5:]]))


@pytest.mark.parametrize("name,fps,count", [("a.mp4", 4.0, 16), ("a.gif", 10.0, 7), ("b.mp4", 30.0, 90)])
def test_video_input_decodes_its_picked_frames_and_equals_the_every_frame_path(tmp_path, imagebind, name, fps, count):
    frames = np.zeros((count, 40, 56, 3), np.uint8)
    for i in range(count):
        frames[i, :, : 2 + (i * 50) // count] = (200, 30 + i, 90)
    media.write_video(tmp_path / name, frames, fps)
    vision = imagebind["vision"]
    every, got_fps = media.read_video(tmp_path / name)
    keys = (vision["image_size"], vision["video_clips"], vision["num_frames"], vision["clip_duration"])
    expected = pp.video_to_clips(every, got_fps, *keys)
    np.testing.assert_array_equal(prepare_inputs(imagebind, {"video": tmp_path / name})["video"][0], expected)
