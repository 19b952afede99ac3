"""The synthetic world: deterministic by seed, disjoint splits, real media files, captions that tell the labels."""
import hashlib
from pathlib import Path

import numpy as np
import pytest

from runtime import media
from train import synthetic
from train.data.records import read_records
from train.presets import WORLD, signal_tokens
from train_world import PLAIN_WORLD as PLAIN  # the recipe's extra records have their own tests below

COUNTS = {
    "train": {"image": 3, "video": 2, "audio": 3, "text_to_image": 2, "text_to_video": 1, "text_to_audio": 2},
    "heldout": {"image": 2, "video": 1, "audio": 1, "text_to_image": 1, "text_to_video": 1, "text_to_audio": 1},
}


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return synthetic.write_world(tmp_path_factory.mktemp("world"), seed=3, counts=COUNTS, world=PLAIN, progress=False)


@pytest.fixture(scope="module")
def records(world):
    return list(read_records(world / synthetic.RECORDS_FILE))


def test_same_seed_gives_byte_identical_files(world, tmp_path):
    again = synthetic.write_world(tmp_path / "again", seed=3, counts=COUNTS, world=PLAIN, progress=False)
    first = _hashes(world)
    assert len(first) == 1 + sum(sum(c.values()) for c in COUNTS.values())  # records + one medium each
    assert _hashes(again) == first


def test_another_seed_gives_another_world():
    assert [r.attributes for r in synthetic.plan_world(3, COUNTS)] != [r.attributes for r in synthetic.plan_world(4, COUNTS)]


def test_splits_share_no_sample_and_no_combination(records):
    assert [r.split for r in records].count("heldout") == sum(COUNTS["heldout"].values())
    by_split = {s: [r for r in records if r.split == s] for s in ("train", "heldout")}
    ids = {s: {r.id for r in rs} for s, rs in by_split.items()}
    files = {s: {p for r in rs for p in (*r.inputs.values(), *r.outputs.values())} for s, rs in by_split.items()}
    combos = {s: {tuple(sorted(r.attributes.items())) for r in rs} for s, rs in by_split.items()}
    assert not ids["train"] & ids["heldout"]
    assert not files["train"] & files["heldout"]
    assert not combos["train"] & combos["heldout"]
    assert len({tuple(sorted(r.attributes.items())) for r in records}) == len(records)  # none rendered twice


def test_default_world_holds_out_combinations_for_every_modality():
    plan = synthetic.plan_world(0)
    counted = sum(sum(c.values()) for c in WORLD["counts"].values())
    sounds = WORLD["counts"]["train"]["audio"] + WORLD["counts"]["train"]["text_to_audio"]
    phrasings = len(synthetic.REQUEST["audio"]) + 1 + len(synthetic.DESCRIBE["audio"])  # + the two-turn request
    assert len(plan) == counted + phrasings * sounds  # every rendered train sound asked for and described in each phrasing
    train = {tuple(sorted(r.attributes.items())) for r in plan if r.split == "train"}
    held = {tuple(sorted(r.attributes.items())) for r in plan if r.split == "heldout"}
    assert not train & held
    pools = synthetic._split_combinations(np.random.default_rng(0), WORLD["heldout_fraction"])
    for modality, pool in pools.items():
        train_pool = {tuple(sorted(a.items())) for a in pool["train"]}
        assert not train_pool & {tuple(sorted(a.items())) for a in pool["heldout"]}
        assert len(train_pool) + len(pool["heldout"]) == len(synthetic.combinations(modality))


def test_media_are_real_files_of_the_preset_sizes(world, records):
    for r in records:
        (modality, rel), = {**r.inputs, **r.outputs}.items()
        path = world / rel
        assert path.name == f"{r.id}{synthetic.EXT[modality]}"
        if modality == "image":
            assert media.read_image(path).shape == (WORLD["image_size"], WORLD["image_size"], 3)
        elif modality == "video":
            frames, fps = media.read_video(path)
            assert frames.shape == (WORLD["video_frames"], WORLD["video_size"], WORLD["video_size"], 3)
            assert fps == pytest.approx(WORLD["fps"])
        else:
            wave, rate = media.read_audio(path)
            assert rate == WORLD["sample_rate"] and wave.size == int(WORLD["audio_seconds"] * rate)


def test_images_show_their_labels(world, records):
    for r in records:
        if "image" not in {**r.inputs, **r.outputs}:
            continue
        img = media.read_image(world / {**r.inputs, **r.outputs}["image"]).astype(int)
        a = r.attributes
        assert (img[0, 0] == synthetic.RGB[a["background"]]).all()  # a corner is background
        dy, dx = synthetic.POSITIONS[a["position"]]
        size = WORLD["image_size"]
        centre = img[int((0.5 + dy) * size), int((0.5 + dx) * size)]
        expected = a["background"] if a["shape"] == "ring" else a["colour"]  # a ring is hollow
        assert (centre == synthetic.RGB[expected]).all(), r.id


def test_video_motion_moves_the_shape(world, records):
    for r in (r for r in records if "video" in {**r.inputs, **r.outputs}):
        frames, _ = media.read_video(world / {**r.inputs, **r.outputs}["video"])
        bg = np.array(synthetic.RGB[r.attributes["background"]])
        masks = np.abs(frames.astype(int) - bg).sum(-1) > 60  # not background, despite yuv420p
        area = masks.reshape(len(frames), -1).sum(1)
        cols = [np.nonzero(m.any(0))[0].mean() for m in masks]
        rows = [np.nonzero(m.any(1))[0].mean() for m in masks]
        motion = r.attributes["motion"]
        check = {
            "moving left": cols[-1] < cols[0] - 8, "moving right": cols[-1] > cols[0] + 8,
            "moving up": rows[-1] < rows[0] - 8, "moving down": rows[-1] > rows[0] + 8,
            "growing": area[-1] > 2 * area[0], "shrinking": area[0] > 2 * area[-1],
        }
        assert check[motion], (r.id, motion)


def test_sounds_sit_at_their_pitch():
    rate, seconds = WORLD["sample_rate"], WORLD["audio_seconds"]
    for kind in synthetic.SOUNDS:
        wave = synthetic.sound(kind, "a", "middle", seconds, rate)
        spectrum = np.abs(np.fft.rfft(wave))
        peak = np.fft.rfftfreq(wave.size, 1 / rate)[spectrum.argmax()]
        assert 440 * 0.9 < peak < 880 * 1.1, kind  # the pitch, or within the chirp's octave above it
    tone = synthetic.sound("tone", "a", "middle", seconds, rate)
    spectrum = np.abs(np.fft.rfft(tone))
    assert np.fft.rfftfreq(tone.size, 1 / rate)[spectrum.argmax()] == pytest.approx(440, abs=2)
    rising, falling = synthetic.sound("rising chirp", "c", "low", 1.0, rate), synthetic.sound("falling chirp", "c", "low", 1.0, rate)
    zero_crossings = lambda w: np.count_nonzero(np.diff(np.signbit(w)))  # noqa: E731
    half = rate // 2
    assert zero_crossings(rising[half:]) > zero_crossings(rising[:half])
    assert zero_crossings(falling[half:]) < zero_crossings(falling[:half])


def test_dialogues_both_ways(records):
    for r in records:
        assert r.caption == synthetic.CAPTION[next(iter({**r.inputs, **r.outputs}))](r.attributes)
        if r.target == "text":
            assert r.turns[0]["assistant"] == r.caption and not r.outputs
        else:
            run = "".join(signal_tokens(r.target))
            assert r.turns[-1]["assistant"].endswith(run) and r.caption in r.turns[-1]["human"] and not r.inputs
            assert all(run not in t["assistant"] for t in r.turns[:-1])
    plan = synthetic.plan_world(0)
    assert any(len(r.turns) > 1 and r.target == "text" for r in plan)
    assert any(len(r.turns) > 1 and r.target != "text" for r in plan)


def test_every_request_asks_for_each_rendered_train_combination_in_every_phrasing(tmp_path):
    assert WORLD["every_request"] == ["audio"]  # the recipe's world
    plain = synthetic.plan_world(3, COUNTS, PLAIN)
    extended = synthetic.plan_world(3, COUNTS, dict(PLAIN, every_request=["audio"]))
    extra = [r for r in extended if r.id not in {p.id for p in plain}]
    assert [r for r in extended if r not in extra] == plain  # every counted record as it was, held-out included
    sounds = [r for r in plain if r.split == "train" and "audio" in {**r.inputs, **r.outputs}]
    rendered = [r.attributes for r in sounds]
    assert len(rendered) == COUNTS["train"]["audio"] + COUNTS["train"]["text_to_audio"]
    asks = [*synthetic.REQUEST["audio"], synthetic.ASK_FOR["audio"]]  # each phrasing, then the two-turn form
    for a in rendered:
        mine = [r for r in extra if r.attributes == a]
        assert sorted(r.turns[0]["human"] for r in mine) == sorted(t.format(mine[0].caption) for t in asks)
        assert all(r.split == "train" and r.target == "audio" and r.turns[-1]["human"].endswith(r.caption) for r in mine)
    medium = {tuple(sorted(r.attributes.items())): synthetic._medium(r) for r in sounds}
    assert all(r.outputs["audio"] == medium[tuple(sorted(r.attributes.items()))] for r in extra)  # the one rendered
    written = synthetic.write_world(tmp_path / "w", seed=3, counts=COUNTS, world=dict(WORLD, varied=None), progress=False)
    assert _hashes(written).keys() == _hashes(synthetic.write_world(tmp_path / "p", seed=3, counts=COUNTS, world=PLAIN, progress=False)).keys()


def test_every_description_describes_each_rendered_train_sound_in_every_phrasing():
    assert WORLD["every_description"] == ["audio"]  # the recipe's world
    plain = synthetic.plan_world(3, COUNTS, PLAIN)
    extended = synthetic.plan_world(3, COUNTS, dict(PLAIN, every_description=["audio"]))
    extra = [r for r in extended if r.id not in {p.id for p in plain}]
    assert [r for r in extended if r not in extra] == plain
    rendered = {synthetic._medium(r): r for r in plain if r.split == "train" and "audio" in {**r.inputs, **r.outputs}}
    assert len(rendered) == COUNTS["train"]["audio"] + COUNTS["train"]["text_to_audio"]
    assert len(extra) == len(rendered) * len(synthetic.DESCRIBE["audio"])
    for medium, r in rendered.items():
        mine = [e for e in extra if e.inputs == {"audio": medium}]
        assert sorted(e.turns[0]["human"] for e in mine) == sorted(synthetic.DESCRIBE["audio"])
        assert all(e.split == "train" and e.target == "text" and e.turns == [{"human": e.turns[0]["human"], "assistant": r.caption}] for e in mine)


def test_asking_for_more_combinations_than_exist_is_refused():
    too_many = {"train": {"text_to_audio": len(synthetic.combinations("audio"))}}
    with pytest.raises(ValueError, match="text_to_audio asks for"):
        synthetic.plan_world(0, too_many)


def test_ensure_world_generates_once_into_the_cache(tmp_path):
    counts = {"train": {"image": 1}, "heldout": {"audio": 1}}
    first = synthetic.ensure_world(1, cache=tmp_path, counts=counts, progress=False)
    stamp = (first / synthetic.RECORDS_FILE).stat().st_mtime_ns
    assert synthetic.ensure_world(1, cache=tmp_path, counts=counts, progress=False) == first
    assert (first / synthetic.RECORDS_FILE).stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "world").iterdir()] == [first.name]  # no staging folder left


def test_render_variants_of_a_sound_differ_but_say_the_same_caption():
    rate = WORLD["sample_rate"]
    a = {"sound": "tone", "pitch": "a", "register": "middle"}
    plain = synthetic.render("audio", a)
    assert np.array_equal(synthetic.render_variant("audio", a, 0), plain)
    variants = [synthetic.render_variant("audio", a, v) for v in range(1, 5)]
    assert np.array_equal(variants[0], synthetic.render_variant("audio", a, 1))  # drawn from the combination and variant alone
    for wave in variants:
        assert not np.allclose(wave, plain)
        level_db = 20 * np.log10(np.abs(wave).max() / np.abs(plain).max())
        assert synthetic.VARIANT_LEVELS_DB[0] - 0.1 <= level_db <= 0.1
        assert np.argmax(np.abs(np.fft.rfft(wave))) * rate / wave.size == pytest.approx(440.0, abs=1.0)
    with pytest.raises(ValueError, match="only sounds"):
        synthetic.render_variant("image", synthetic.combinations("image")[0], 1)
