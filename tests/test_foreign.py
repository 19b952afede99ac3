"""The foreign test set: held-out combinations made by other tools, in real formats, showing what
their captions say (checked by measuring the media, not by the model)."""
from pathlib import Path

import numpy as np
import pytest

from runtime import media, preprocess
from train import foreign, synthetic
from train.data.records import read_records
from train.evaluate import samples

HELD = synthetic.combination_splits(0)


@pytest.fixture(scope="module")
def foreign_set(tmp_path_factory) -> Path:
    return foreign.write_foreign(tmp_path_factory.mktemp("foreign"), seed=5, per_modality=4, progress=False)


def test_the_plan_is_held_out_combinations_only_and_fixed_by_its_seed():
    items = foreign.plan(1)
    assert len(items) == 3 * foreign.PER_MODALITY and items == foreign.plan(1) and items != foreign.plan(2)
    for modality, a, _ in items:
        assert a in HELD[modality]["heldout"]
    sounds = [a for m, a, _ in items if m == "audio"]  # 60 from 29 combinations: each while they last
    assert len({synthetic.CAPTION["audio"](a) for a in sounds}) == len(HELD["audio"]["heldout"])
    assert len({s for _, _, s in items}) == len(items)


def test_media_are_real_files_read_as_a_user_s(foreign_set):
    records = list(read_records(foreign_set / foreign.RECORDS_FILE))
    assert len(records) == 12 and {r.split for r in records} == {"heldout"}
    for r in records:
        (modality, rel), = r.inputs.items()
        assert synthetic.CAPTION[modality](r.attributes) == r.caption
        path = foreign_set / rel
        if modality == "image":
            assert path.suffix in (".png", ".jpg") and media.read_image(path).ndim == 3
        elif modality == "video":
            assert path.suffix in (".mp4", ".webm") and media.read_video(path)[0].shape[0] >= 2
        else:
            wave, rate = media.read_audio(path)
            assert path.suffix in foreign.AUDIO_CODECS and rate in foreign.SAMPLE_RATES and wave.size >= 0.9 * rate
    assert {s.task for s in samples(foreign_set, None, foreign.RECORDS_FILE)} == {"image_to_text", "video_to_text", "audio_to_text"}


def _centroid(image: np.ndarray, colour: str) -> np.ndarray:
    """Centre of the pixels nearest the named colour, as a fraction of the frame, from its centre."""
    names = list(synthetic.RGB)
    nearest = np.argmin(np.linalg.norm(image[..., None, :].astype(float) - np.array(list(synthetic.RGB.values())), axis=-1), axis=-1)
    ys, xs = np.nonzero(nearest == names.index(colour))
    return np.array([ys.mean() / image.shape[0] - 0.5, xs.mean() / image.shape[1] - 0.5])


@pytest.mark.parametrize("index", range(12))
def test_a_picture_shows_its_caption_after_the_model_s_resize_and_crop(index):
    a = HELD["image"]["heldout"][index * 7]
    rng = np.random.default_rng(index)
    width, height = foreign._frame_size(rng, foreign.IMAGE_LONG_SIDE)
    offset = foreign._jittered(synthetic.POSITIONS[a["position"]], rng)
    image = foreign.draw_picture(a, width, height, offset, rng.uniform(*foreign.SCALES), foreign.colours(a, rng))
    seen = preprocess.resize_and_crop(image, 64)
    where = _centroid(seen, a["colour"])
    assert min(synthetic.POSITIONS, key=lambda p: np.linalg.norm(where - synthetic.POSITIONS[p])) == a["position"], (a, where)
    corner = seen[:3, :3].reshape(-1, 3).mean(0)
    assert min(synthetic.RGB, key=lambda c: np.linalg.norm(corner - synthetic.RGB[c])) == a["background"]


@pytest.mark.parametrize("motion", list(synthetic.MOTIONS))
def test_a_video_moves_as_its_caption_says(motion, tmp_path):
    a = {"shape": "square", "colour": "red", "background": "blue", "motion": motion}
    path = foreign.write_video(tmp_path / "v", a, np.random.default_rng(3))
    frames, _ = media.read_video(path)
    first, last = _centroid(frames[0], "red"), _centroid(frames[-1], "red")
    area = [np.mean(np.all(np.abs(f.astype(int) - synthetic.RGB["red"]) < 60, axis=-1)) for f in (frames[0], frames[-1])]
    start, end, s0, s1 = synthetic.MOTIONS[motion]
    if s0 == s1:  # along the named axis; across it no more than the jitter moves it
        axis = int(np.argmax(np.abs(np.subtract(end, start))))
        assert np.sign(last - first)[axis] == np.sign(end[axis] - start[axis])
        assert abs((last - first)[1 - axis]) <= 2 * foreign.JITTER + 0.02
    else:
        assert (area[1] > area[0]) == (s1 > s0)


@pytest.mark.parametrize("index", range(0, 29, 4))
def test_a_sound_is_at_its_pitch_and_level(index, tmp_path):
    a = dict(HELD["audio"]["heldout"][index], sound="tone")
    rng = np.random.default_rng(index)
    path = foreign.write_sound(tmp_path / "s", a, rng)
    wave, rate = media.read_audio(path)
    peak_hz = np.argmax(np.abs(np.fft.rfft(wave * np.hanning(wave.size)))) * rate / wave.size
    assert 1200 * abs(np.log2(peak_hz / synthetic.pitch_hz(a["pitch"], a["register"]))) < 25  # cents
    assert foreign.LEVELS_DBFS[0] - 1.5 <= 20 * np.log10(np.abs(wave).max()) <= foreign.LEVELS_DBFS[1] + 1.5
