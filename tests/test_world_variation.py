"""The world's varied train renders (presets.WORLD["varied"], synthetic.draw_look): every format read
back by the runtime's readers, within their ranges, named places true after the model's crop, the
held-out split untouched, and the same seed giving the same bytes."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from runtime import media, preprocess
from train import synthetic
from train.presets import WORLD
from test_foreign import _centroid

VARIED = WORLD["varied"]
ALWAYS = dict(WORLD, varied=dict(VARIED, fraction=1.0))
PLAIN = dict(WORLD, varied=None)
COUNTS = {
    "train": {"image": 6, "video": 4, "audio": 6, "text_to_image": 2, "text_to_video": 2, "text_to_audio": 2},
    "heldout": {"image": 3, "video": 2, "audio": 3, "text_to_image": 2, "text_to_video": 1, "text_to_audio": 2},
}


def _looks(modality: str, n: int, world: dict = ALWAYS) -> list[tuple[dict, synthetic.Look]]:
    combos = synthetic.combinations(modality)
    rng = np.random.default_rng(7)
    return [(a, synthetic.draw_look(modality, a, rng, world)) for a in (combos[i] for i in rng.choice(len(combos), n))]


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("worlds")
    return {
        name: synthetic.write_world(tmp / name, seed=5, counts=COUNTS, world=world, progress=False)
        for name, world in (("varied", WORLD), ("again", WORLD), ("plain", PLAIN))
    }


def _records(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / synthetic.RECORDS_FILE).read_text().splitlines()]


def test_held_out_records_and_media_stay_byte_identical(worlds):
    varied, plain = _records(worlds["varied"]), _records(worlds["plain"])
    held = [r for r in varied if r["split"] == "heldout"]
    assert held == [r for r in plain if r["split"] == "heldout"] and len(held) == sum(COUNTS["heldout"].values())
    files = {root: _files(worlds[root]) for root in ("varied", "plain")}
    for r in held:
        (path,) = {**r["inputs"], **r["outputs"]}.values()
        assert files["varied"][path] == files["plain"][path]
    # train: the same records, only X→text media moved to a varied file; text→X records' own media
    # stay plain (the recipe's extra requests of each sound share the medium rendered for it)
    moved = 0
    for v, p in zip(varied, plain):
        (vp,), (pp,) = ({**r["inputs"], **r["outputs"]}.values() for r in (v, p))
        assert {**v, "inputs": {}, "outputs": {}} == {**p, "inputs": {}, "outputs": {}}
        if v["target"] != "text" and "-request-" not in v["id"]:
            assert vp == pp and files["varied"][vp] == files["plain"][pp]
        moved += vp != pp or files["varied"][vp] != files["plain"][pp]
    assert moved >= 0.5 * sum(n for k, n in COUNTS["train"].items() if "_" not in k)


def test_the_same_seed_gives_the_same_bytes_in_every_format(worlds):
    first = _files(worlds["varied"])
    assert _files(worlds["again"]) == first
    suffixes = {Path(p).suffix for p in first}
    assert {".mp3", ".ogg", ".webm"} & suffixes  # the codecs that need bitexact muxing are among them
    plan = [r.inputs for r in synthetic.plan_world(6, COUNTS) if r.split == "train" and r.inputs]
    assert plan != [r["inputs"] for r in _records(worlds["varied"]) if r["split"] == "train" and r["inputs"]]


def test_images_vary_in_size_aspect_format_and_colour_within_its_name(tmp_path):
    looks = _looks("image", 200)
    sides = [max(look.draw["size"], look.draw["height"]) for _, look in looks]
    aspects = [look.draw["size"] / look.draw["height"] for _, look in looks]
    assert VARIED["image_long_side"][0] <= min(sides) < 120 and 900 < max(sides) <= VARIED["image_long_side"][1]
    assert min(aspects) < 0.6 and max(aspects) > 1.7 and all(0.48 <= x <= 2.1 for x in aspects)
    assert {look.suffix for _, look in looks} == set(VARIED["image_formats"])
    for a, look in looks:
        for name, rgb in ((a["colour"], look.draw["fill"]), (a["background"], look.draw["back"])):
            assert min(synthetic.RGB, key=lambda c: np.linalg.norm(np.subtract(rgb, synthetic.RGB[c]))) == name
    for suffix in VARIED["image_formats"]:
        a, look = next((a, look) for a, look in looks if look.suffix == suffix and max(look.draw["size"], look.draw["height"]) < 400)
        synthetic.write_look(tmp_path / f"i{suffix}", "image", a, look)
        image = media.read_image(tmp_path / f"i{suffix}")
        assert image.shape == (look.draw["height"], look.draw["size"], 3)
        edge = np.abs(np.diff(synthetic.render_look("image", a, look).astype(int), axis=1)).sum(-1)
        assert look.draw["antialias"] == 1 or ((edge > 20) & (edge < 0.8 * edge.max())).any()  # blended edge pixels


def test_named_places_stay_true_after_the_model_s_resize_and_crop():
    for a, look in _looks("image", 60):
        seen = preprocess.resize_and_crop(synthetic.draw_shape(a["shape"], a["colour"], a["background"], **look.draw), 64)
        where = _centroid(seen, a["colour"])
        assert min(synthetic.POSITIONS, key=lambda p: np.linalg.norm(where - synthetic.POSITIONS[p])) == a["position"], (a, look.draw)


def test_videos_vary_in_rate_size_and_codec_and_still_move_as_named(tmp_path):
    looks = _looks("video", 60)
    assert {look.suffix for _, look in looks} == set(VARIED["video_formats"])
    assert {look.fps for _, look in looks} == set(map(float, VARIED["video_fps"]))
    for suffix in VARIED["video_formats"]:
        a, look = next((a, look) for a, look in looks if look.suffix == suffix and a["motion"] == "moving right")
        synthetic.write_look(tmp_path / f"v{suffix}", "video", a, look)
        frames, fps = media.read_video(tmp_path / f"v{suffix}")
        assert frames.shape[1:3] == (look.draw["height"], look.draw["size"]) and len(frames) == look.draw["frames"]
        assert fps == pytest.approx(look.fps, rel=0.05)
        first, last = (_centroid(f, a["colour"]) for f in (frames[0], frames[-1]))
        assert last[1] - first[1] > 0.3


def test_sounds_vary_in_level_rate_channels_and_codec_and_keep_their_pitch(tmp_path):
    looks = _looks("audio", 80)
    assert {look.suffix for _, look in looks} == set(VARIED["audio_formats"]) and {look.channels for _, look in looks} == {1, 2}
    assert set(VARIED["sample_rates"]) == {look.draw["rate"] for _, look in looks}
    cents = [look.draw["cents"] for _, look in looks]
    assert max(np.abs(cents)) <= VARIED["cents"] and min(cents) < -10 and max(cents) > 10
    for suffix in VARIED["audio_formats"]:
        a, look = next((a, look) for a, look in looks if look.suffix == suffix and look.draw["rate"] >= 16000)
        a = dict(a, sound="tone")
        synthetic.write_look(tmp_path / f"s{suffix}", "audio", a, look)
        wave, rate = media.read_audio(tmp_path / f"s{suffix}")
        assert rate == look.draw["rate"] and wave.size >= 0.95 * rate
        level = 20 * np.log10(np.abs(wave).max())
        assert VARIED["levels_dbfs"][0] - 2 <= level <= VARIED["levels_dbfs"][1] + 0.1
        assert abs(level - 20 * np.log10(look.draw["amplitude"])) < 2
        spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size), 8 * wave.size))
        peak = np.argmax(spectrum) * rate / (8 * wave.size)
        heard = 1200 * np.log2(peak / synthetic.pitch_hz(a["pitch"], a["register"]))
        assert heard == pytest.approx(look.draw["cents"], abs=5)


@pytest.mark.parametrize("kind", synthetic.SHAPES)
def test_a_shape_is_drawn_as_sampling_the_whole_frame_would(kind):
    """draw_shape samples only the box within SHAPE_REACH radii of the centre; every pixel must be
    what sampling every pixel of the frame gives (the world's bytes, and so the checkpoint, rest on it)."""
    rng, covered = np.random.default_rng(7), 0
    for height, width, antialias in ((64, 64, 1), (200, 1024, 4), (1024, 300, 3), (48, 96, 2)):
        for _ in range(4):
            centre = (rng.uniform(-0.2, 1.2) * height, rng.uniform(-0.2, 1.2) * width)
            r = rng.uniform(0.05, 0.3) * min(height, width)
            sub = (np.arange(antialias) + 0.5) / antialias - 0.5
            ys = (np.arange(height)[:, None] + sub).reshape(-1, 1) - centre[0]
            xs = (np.arange(width)[:, None] + sub).reshape(1, -1) - centre[1]
            whole = synthetic._shape_mask(kind, ys, xs, r).reshape(height, antialias, width, antialias).mean(axis=(1, 3))
            box, cover = synthetic._coverage(kind, height, width, centre, r, antialias)
            drawn = np.zeros((height, width))
            drawn[box] = cover
            assert np.array_equal(drawn, whole), (height, width, centre, r)
            covered += whole.any()
    assert covered >= 8  # most shapes are in the frame, some cut by its edge
