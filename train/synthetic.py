"""The project's synthetic multimodal world: shapes, moving shapes and sounds, with captions and dialogues.

It gives the embedded model its sample inputs and its training data without any download.
`write_world(root, seed)` writes a data root in the unified format (train/data/records.py):
`records/synthetic.jsonl` plus `image/<id>.png`, `video/<id>.mp4`, `audio/<id>.wav`.

- images: a shape (kind × colour × background × position);
- videos: a shape moving left, right, up or down, growing or shrinking;
- audio: a tone, a rising or falling chirp, or a rhythm, by pitch class and register.

Every medium comes from one attribute combination, stored as the record's `attributes` (the ground
truth for judges) and told by its caption. Each modality's combinations are shuffled by the seed
and split once: the held-out ones are never rendered for train, and no combination is rendered
twice, so the splits share no sample and no combination. Records are X→text (describe the medium,
some with follow-up questions) and text→X (a request answered with a short text and the signal-token
run, the medium being the target), some multi-turn. For the modalities in `every_request`, every
rendered train combination is also requested once in each phrasing, and for those in
`every_description` described once in each (extra train records on the medium already rendered for
it). Sizes and counts live in `presets.WORLD`.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import subprocess
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
from PIL import Image
from tqdm import tqdm

from runtime import media
from train.data.records import Record, write_records
from train.presets import WORLD, signal_tokens

RGB = {
    "red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (240, 220, 40),
    "white": (245, 245, 245), "black": (10, 10, 10), "purple": (140, 40, 170), "orange": (250, 140, 20),
}
COLOURS = tuple(RGB)
SHAPES = ("circle", "square", "triangle", "stripe", "dot", "ring")
POSITIONS = {
    "centre": (0.0, 0.0), "left": (0.0, -0.25), "right": (0.0, 0.25), "top": (-0.25, 0.0), "bottom": (0.25, 0.0),
}
POSITION_WORDS = {
    "centre": "in the centre", "left": "on the left", "right": "on the right",
    "top": "at the top", "bottom": "at the bottom",
}
VOWELS = tuple("aeiou")
# centre offset (fraction of the frame) at the start and end, and the size factor at the start and end
MOTIONS = {
    "moving left": ((0.0, 0.25), (0.0, -0.25), 1.0, 1.0),
    "moving right": ((0.0, -0.25), (0.0, 0.25), 1.0, 1.0),
    "moving up": ((0.25, 0.0), (-0.25, 0.0), 1.0, 1.0),
    "moving down": ((-0.25, 0.0), (0.25, 0.0), 1.0, 1.0),
    "growing": ((0.0, 0.0), (0.0, 0.0), 0.4, 1.4),
    "shrinking": ((0.0, 0.0), (0.0, 0.0), 1.4, 0.4),
}
SOUNDS = ("tone", "rising chirp", "falling chirp", "rhythm")
PITCHES = ("c", "c sharp", "d", "d sharp", "e", "f", "f sharp", "g", "g sharp", "a", "a sharp", "b")
REGISTERS = {"low": 3, "middle": 4, "high": 5}  # the octave of the pitch
SOURCE = "synthetic"
RECORDS_FILE = Path("records") / f"{SOURCE}.jsonl"
Counts = dict[str, dict[str, int]]  # {split: {record kind: how many}}
# bump when the world's content changes for the same seed and sizes, so caches are rebuilt
WORLD_VERSION = 2

DESCRIBE = {
    "image": ("describe this image", "what is in the picture?", "what do you see?"),
    "video": ("describe this video", "what happens in the video?", "what do you see?"),
    "audio": ("describe this sound", "what do you hear?", "what is this sound?"),
}
REQUEST = {
    "image": ("show me {}", "draw {}", "make a picture of {}", "{}"),
    "video": ("show me {}", "make {}", "generate {}", "{}"),
    "audio": ("let me hear {}", "make {}", "play {}", "{}"),
}
ASK_FOR = {"image": "i would like a picture", "video": "i would like a video", "audio": "i would like a sound"}
ASK_BACK = "what should it be?"
HERE = {"image": "here is the picture", "video": "here is the video", "audio": "here is the sound"}
EXT = {"image": ".png", "video": ".mp4", "audio": ".wav"}
PNG_LEVEL = 1  # zlib's fastest: the world's pictures are written to be read back, not kept


# ---------------------------------------------------------------- drawing


SHAPE_REACH = 1.6  # the farthest any shape reaches from its centre, in radii (the stripe's half-length)


def _shape_mask(kind: str, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    """Whether each point (`dy`, `dx` pixels from the shape's centre, broadcast) lies in the shape of radius `r`."""
    dist = np.hypot(dy, dx)
    if kind == "circle":
        return dist <= r
    if kind == "dot":
        return dist <= r / 2.5
    if kind == "ring":
        return (dist <= r) & (dist >= 0.6 * r)
    if kind == "square":
        return (np.abs(dy) <= 0.85 * r) & (np.abs(dx) <= 0.85 * r)
    if kind == "stripe":
        return (np.abs(dy) <= 0.3 * r) & (np.abs(dx) <= 1.6 * r)
    if kind == "triangle":  # apex up; the half-width grows from 0 at the apex to r at the base
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    raise ValueError(f"unknown shape {kind!r}; known: {', '.join(SHAPES)}")


def _coverage(
    kind: str, height: int, width: int, centre: tuple[float, float], r: float, antialias: int
) -> tuple[tuple[slice, slice], np.ndarray]:
    """The box of pixels the shape can touch, and float coverage there: the part of each pixel the
    shape covers, from `antialias`² points per pixel; with one point (the plain render) the pixel's
    own position, so 0 or 1. Outside the box it is 0: every shape lies within `SHAPE_REACH` r of its
    centre, so only that box is sampled (two fifths of a square frame at the usual size, less of a wide one)."""
    reach = SHAPE_REACH * r + 1
    spans = [(max(0, math.floor(c - reach)), min(n, math.ceil(c + reach) + 1)) for c, n in zip(centre, (height, width))]
    box = tuple(slice(lo, max(lo, hi)) for lo, hi in spans)  # empty where the shape is off the frame
    rows, cols = (np.arange(b.start, b.stop) for b in box)
    sub = (np.arange(antialias) + 0.5) / antialias - 0.5
    ys = (rows[:, None] + sub).reshape(-1, 1) - centre[0]
    xs = (cols[:, None] + sub).reshape(1, -1) - centre[1]
    mask = _shape_mask(kind, ys, xs, r)
    return box, mask.reshape(rows.size, antialias, cols.size, antialias).mean(axis=(1, 3))


Colour = tuple[int, int, int]


def draw_shape(
    kind: str,
    colour: str,
    background: str,
    size: int,
    offset: tuple[float, float],
    scale: float = 1.0,
    *,
    height: int | None = None,
    fill: Colour | None = None,
    back: Colour | None = None,
    antialias: int = 1,
) -> np.ndarray:
    """One shape on a plain background, uint8 (height, size, 3), by default square. `offset` (down,
    right) and the radius (`scale` times a fifth) are fractions of the frame's centred square, the part
    the model's resize and centre crop keeps, so a named place stays true at any aspect ratio. `fill`
    and `back` replace the named colours' RGB; `antialias` points per pixel side smooth the edges."""
    height = height or size
    side = min(size, height)
    centre = ((0.5 + offset[0]) * side + (height - side) / 2, (0.5 + offset[1]) * side + (size - side) / 2)
    box, cover = _coverage(kind, height, size, centre, scale * side / 5, antialias)
    fg, bg = (np.array(c, np.float64) for c in (fill or RGB[colour], back or RGB[background]))
    image = np.empty((height, size, 3), np.uint8)
    image[...] = np.round(bg).astype(np.uint8)  # what bg + 0 × (fg - bg) rounds to, outside the box
    image[box] = np.round(bg + cover[..., None] * (fg - bg)).astype(np.uint8)
    return image


Offset = tuple[float, float]


def motion_path(start: Offset, end: Offset, s0: float, s1: float, frames: int) -> list[tuple[Offset, float]]:
    """Per frame, the shape's offset and size factor, moved linearly from (start, s0) to (end, s1)."""
    return [
        ((start[0] + t * (end[0] - start[0]), start[1] + t * (end[1] - start[1])), s0 + t * (s1 - s0))
        for t in np.linspace(0.0, 1.0, frames)
    ]


def shape_video(
    kind: str, colour: str, background: str, motion: str, size: int, frames: int, shift: Offset = (0.0, 0.0), scale: float = 1.0, **look: Any
) -> np.ndarray:
    """A shape following one of MOTIONS, uint8 (frames, height, size, 3); `shift` moves its whole path,
    `scale` its size, and `look` goes to every frame's `draw_shape`."""
    start, end, s0, s1 = MOTIONS[motion]
    start, end = (start[0] + shift[0], start[1] + shift[1]), (end[0] + shift[0], end[1] + shift[1])
    path = motion_path(start, end, s0 * scale, s1 * scale, frames)
    return np.stack([draw_shape(kind, colour, background, size, offset, s, **look) for offset, s in path])


def shape_image(colour: str, background: str, size: int, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """A filled disc of `colour` on `background`, uint8 (size, size, 3); the readers' tests draw it."""
    img = np.empty((size, size, 3), np.uint8)
    img[:] = RGB[background]
    yy, xx = np.mgrid[:size, :size]
    cy, cx = size // 2 + offset[0], size // 2 + offset[1]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 4) ** 2] = RGB[colour]
    return img


def moving_shape_video(colour: str, background: str, size: int, frames: int) -> np.ndarray:
    """A disc sliding left to right, uint8 (frames, size, size, 3); the readers' tests draw it."""
    steps = np.linspace(-size // 4, size // 4, frames).astype(int)
    return np.stack([shape_image(colour, background, size, (0, int(dx))) for dx in steps])


# ---------------------------------------------------------------- sound


AMPLITUDE = 0.5  # a world sound's peak


def tone(freq: float, seconds: float, rate: int, amplitude: float = AMPLITUDE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def pitch_hz(pitch: str, register: str) -> float:
    """Equal temperament, A4 = 440 Hz."""
    midi = 12 * (REGISTERS[register] + 1) + PITCHES.index(pitch)
    return 440.0 * 2 ** ((midi - 69) / 12)


def _fade(wave: np.ndarray, rate: int) -> np.ndarray:
    # 10 ms ramps: a hard start or stop is a click, a broadband sound no caption mentions
    n = min(int(0.01 * rate), wave.size // 2)
    ramp = np.linspace(0.0, 1.0, n)
    wave[:n] *= ramp
    wave[wave.size - n :] *= ramp[::-1]
    return wave


def sound(
    kind: str,
    pitch: str,
    register: str,
    seconds: float,
    rate: int,
    amplitude: float = AMPLITUDE,
    phase: float = 0.0,
    cents: float = 0.0,
) -> np.ndarray:
    """A float32 waveform: a tone at the pitch, an octave chirp from (rising) or down to (falling) it,
    or a rhythm of four short beeps at it; `phase` (radians) is where its sine starts, `cents` how far
    it is detuned."""
    f = pitch_hz(pitch, register) * 2 ** (cents / 1200)
    t = np.arange(int(seconds * rate)) / rate
    if kind == "tone":
        wave = np.sin(2 * np.pi * f * t + phase)
    elif kind in ("rising chirp", "falling chirp"):
        # exponential sweep over one octave: the phase is the integral of f·2^(±t/T)
        sign = 1.0 if kind == "rising chirp" else -1.0
        f0 = f if sign > 0 else 2 * f
        k = sign * np.log(2) / seconds
        wave = np.sin(2 * np.pi * f0 * np.expm1(k * t) / k + phase)
    elif kind == "rhythm":
        beat = (t * 4 / seconds) % 1.0 < 0.4
        wave = np.sin(2 * np.pi * f * t + phase) * beat
    else:
        raise ValueError(f"unknown sound {kind!r}; known: {', '.join(SOUNDS)}")
    return _fade(amplitude * wave, rate).astype(np.float32)


# ---------------------------------------------------------------- captions and combinations


def _a(word: str) -> str:
    return f"{'an' if word.startswith(VOWELS) else 'a'} {word}"


def image_caption(a: dict[str, str]) -> str:
    return f"{_a(a['colour'])} {a['shape']} {POSITION_WORDS[a['position']]} of {_a(a['background'])} background"


def video_caption(a: dict[str, str]) -> str:
    return f"a video of {_a(a['colour'])} {a['shape']} {a['motion']} on {_a(a['background'])} background"


def audio_caption(a: dict[str, str]) -> str:
    return f"the sound of {_a(a['register'])} {a['sound']} at {a['pitch']}"


CAPTION: dict[str, Callable[[dict[str, str]], str]] = {
    "image": image_caption, "video": video_caption, "audio": audio_caption,
}


def combinations(modality: str) -> list[dict[str, str]]:
    """Every attribute combination of one modality, in a fixed order (a shape never matches its background)."""
    if modality == "audio":
        return [
            {"sound": s, "pitch": p, "register": r} for s, p, r in itertools.product(SOUNDS, PITCHES, REGISTERS)
        ]
    last = ("position", POSITIONS) if modality == "image" else ("motion", MOTIONS)
    return [
        {"shape": k, "colour": c, "background": b, last[0]: x}
        for k, c, b, x in itertools.product(SHAPES, COLOURS, COLOURS, last[1])
        if c != b
    ]


def attribute_words() -> list[str]:
    """Every attribute value a caption names ("red", "moving up", "c sharp", ...): the pieces the
    decoders' tiny caption tokenizers keep whole. The pitch "a" is left out: it is the article too."""
    values = {v for m in CAPTION for a in combinations(m) for v in a.values()}
    return sorted((values | set(POSITION_WORDS.values())) - {"a"})


def caption_corpus() -> list[str]:
    """The caption of every combination of every modality: the words the decoders' tiny text
    encoders are trained to read."""
    return [CAPTION[m](a) for m in CAPTION for a in combinations(m)]


# ---------------------------------------------------------------- records


def follow_ups(modality: str, a: dict[str, str]) -> list[tuple[str, str]]:
    """Questions about one attribute each, with their answers."""
    if modality == "audio":
        return [
            ("what kind of sound is it?", f"it is {_a(a['sound'])}"),
            ("what note is it?", f"it is {a['pitch']}"),
            ("is it high or low?", f"it is {_a(a['register'])} sound"),
        ]
    shape = a["shape"]
    qa = [
        ("what shape is it?", f"it is {_a(shape)}"),
        (f"what colour is the {shape}?", f"it is {a['colour']}"),
        ("what colour is the background?", f"the background is {a['background']}"),
    ]
    if modality == "image":
        qa.append((f"where is the {shape}?", f"it is {POSITION_WORDS[a['position']]}"))
    else:
        qa.append((f"what does the {shape} do?", f"it is {a['motion']}"))
    return qa


def _turn(human: str, assistant: str) -> dict[str, str]:
    return {"human": human, "assistant": assistant}


def _descriptions(modality: str, a: dict[str, str]) -> list[list[dict[str, str]]]:
    """Every way the world asks for a medium to be described, each answered with its caption."""
    return [[_turn(question, CAPTION[modality](a))] for question in DESCRIBE[modality]]


def _x_to_text_turns(modality: str, a: dict[str, str], rng: np.random.Generator, multi: bool) -> list[dict[str, str]]:
    turns = _descriptions(modality, a)[int(rng.integers(len(DESCRIBE[modality])))]
    if multi:
        qa = follow_ups(modality, a)
        for i in rng.choice(len(qa), size=2, replace=False):
            turns.append(_turn(*qa[int(i)]))
    return turns


def _requests(modality: str, a: dict[str, str]) -> list[list[dict[str, str]]]:
    """Every way the world asks for a combination's medium: each REQUEST phrasing in one turn, then
    the two-turn form (ask for the modality, be asked back, give the caption)."""
    answer = f"{HERE[modality]} {''.join(signal_tokens(modality))}"
    caption = CAPTION[modality](a)
    single = [[_turn(template.format(caption), answer)] for template in REQUEST[modality]]
    return [*single, [_turn(ASK_FOR[modality], ASK_BACK), _turn(caption, answer)]]


def _text_to_x_turns(modality: str, a: dict[str, str], rng: np.random.Generator, multi: bool) -> list[dict[str, str]]:
    if multi:
        return _requests(modality, a)[-1]
    return _requests(modality, a)[int(rng.integers(len(REQUEST[modality])))]


@dataclass(frozen=True)
class _Item:
    """One record to write and the medium it needs."""

    record: Record
    modality: str
    attributes: dict[str, str]
    variant: int = 0  # which render of the combination (render_variant); 0 is the plain one
    look: Look | None = None  # a varied train render (draw_look); None is the plain one


def _items(
    kind: str, split: str, combos: list[tuple[dict[str, str], int]], rng: np.random.Generator, seed: int, world: dict[str, Any]
) -> list[_Item]:
    """One record per (combination, render variant). The medium of an X→text train record gets a
    varied look, drawn from the seed and the record's id alone (not `rng`), so the records and media
    of every other kind and split are those of the plain world."""
    modality = kind.removeprefix("text_to_")
    to_text = kind == modality
    items = []
    for i, (a, variant) in enumerate(combos):
        multi = bool(rng.random() < world["multi_turn_fraction"])
        turns = (_x_to_text_turns if to_text else _text_to_x_turns)(modality, a, rng, multi)
        rid = f"{SOURCE}-{split}-{kind.replace('_', '-')}-{i:05d}"
        look = draw_look(modality, a, _look_rng(seed, rid), world) if to_text and split == "train" else None
        items.append(_item(rid, split, modality, to_text, turns, a, variant=variant, look=look))
    return items


def _look_rng(seed: int, rid: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(rid.encode())])


def _item(
    rid: str,
    split: str,
    modality: str,
    to_text: bool,
    turns: list[dict[str, str]],
    a: dict[str, str],
    path: str | None = None,
    variant: int = 0,
    look: Look | None = None,
) -> _Item:
    """One record of combination `a`; its medium at `path`, by default a file of its own named by its
    id, in its look's format."""
    path = path or f"{modality}/{rid}{look.suffix if look else EXT[modality]}"
    record = Record(
        id=rid,
        source=SOURCE,
        split=split,
        turns=turns,
        target="text" if to_text else modality,
        inputs={modality: path} if to_text else {},
        outputs={} if to_text else {modality: path},
        caption=CAPTION[modality](a),
        attributes=dict(a),
    )
    return _Item(record, modality, a, variant, look)


def _every_phrasing_items(modality: str, rendered: list[_Item], to_text: bool) -> list[_Item]:
    """Train records that describe (`WORLD["every_description"]`) or ask for (`WORLD["every_request"]`)
    each rendered combination in every phrasing, on the medium already rendered for it; they draw no
    random number, so every other record stays as it was."""
    prefix = f"{SOURCE}-train-{modality}-description" if to_text else f"{SOURCE}-train-text-to-{modality}-request"
    phrasings = _descriptions if to_text else _requests
    asks = [(item, turns) for item in rendered for turns in phrasings(modality, item.attributes)]
    return [
        _item(f"{prefix}-{i:05d}", "train", modality, to_text, turns, item.attributes, _medium(item.record), item.variant, item.look)
        for i, (item, turns) in enumerate(asks)
    ]


def _medium(record: Record) -> str:
    return next(iter({**record.inputs, **record.outputs}.values()))


def _split_combinations(
    rng: np.random.Generator, heldout_fraction: float
) -> dict[str, dict[str, list[dict[str, str]]]]:
    """Per modality, its combinations shuffled and cut into heldout and train."""
    out = {}
    for modality in CAPTION:
        combos = combinations(modality)
        order = rng.permutation(len(combos))
        n_held = int(np.ceil(heldout_fraction * len(combos)))
        out[modality] = {
            "heldout": [combos[i] for i in order[:n_held]],
            "train": [combos[i] for i in order[n_held:]],
        }
    return out


def combination_splits(seed: int = 0, world: dict[str, Any] = WORLD) -> dict[str, dict[str, list[dict[str, str]]]]:
    """Per modality, the combinations held out for the seed and those left for training: the same
    cut `write_world` makes, over every combination rather than the ones it renders."""
    return _split_combinations(np.random.default_rng(seed), world["heldout_fraction"])


def plan_world(seed: int = 0, counts: Counts | None = None, world: dict[str, Any] = WORLD) -> list[Record]:
    """The records of the world for a seed, without writing anything."""
    return [item.record for item in _plan(seed, counts, world)]


def _plan(seed: int, counts: Counts | None, world: dict[str, Any]) -> list[_Item]:
    counts = world["counts"] if counts is None else counts
    rng = np.random.default_rng(seed)
    pools = _split_combinations(rng, world["heldout_fraction"])
    items: list[_Item] = []
    for split in ("train", "heldout"):
        taken = {m: 0 for m in pools}  # X→text and text→X of a modality draw from one pool, never twice
        for kind, n in sorted(counts.get(split, {}).items()):
            modality = kind.removeprefix("text_to_")
            if modality not in pools:
                raise ValueError(f"unknown record kind {kind!r}; known: image, video, audio and text_to_ each")
            pool = _renders(pools[modality][split], world["heldout_renders"].get(modality, 1) if split == "heldout" else 1)
            if taken[modality] + n > len(pool):
                raise ValueError(
                    f"{split}: {kind} asks for {n} combinations, {len(pool) - taken[modality]} of {modality} are left"
                )
            combos = pool[taken[modality] : taken[modality] + n]
            taken[modality] += n
            items += _items(kind, split, combos, rng, seed, world)
        if split == "train":
            rendered = list(items)
            for key, to_text in (("every_request", False), ("every_description", True)):
                for modality in world[key]:
                    items += _every_phrasing_items(modality, [i for i in rendered if i.modality == modality], to_text)
    return items


def _renders(combos: list[dict[str, str]], variants: int) -> list[tuple[dict[str, str], int]]:
    """Each combination once per render variant, every combination's plain render first: so a
    held-out split with few combinations still gives enough distinct samples."""
    return [(a, v) for v in range(variants) for a in combos]


VARIANT_LEVELS_DB = (-9.0, 0.0)  # a sound's render variants lie this far below or at a world sound's level


def render_variant(modality: str, a: dict[str, str], variant: int, world: dict[str, Any] = WORLD) -> np.ndarray:
    """Render `variant` of a combination: 0 is `render`'s; another variant of a sound starts at
    another phase and lies up to 9 dB lower, drawn from the combination and the variant alone, so it
    says the same caption in other samples."""
    if variant == 0:
        return render(modality, a, world)
    if modality != "audio":
        raise ValueError(f"only sounds have render variants, not {modality}s")
    rng = np.random.default_rng([variant, *(ord(ch) for ch in CAPTION[modality](a))])
    level = 10 ** (rng.uniform(*VARIANT_LEVELS_DB) / 20)
    phase = rng.uniform(0, 2 * np.pi)
    return sound(a["sound"], a["pitch"], a["register"], world["audio_seconds"], world["sample_rate"], AMPLITUDE * level, phase)


def render(modality: str, a: dict[str, str], world: dict[str, Any] = WORLD) -> np.ndarray:
    """The medium of one combination: an image, a video, or a waveform at world['sample_rate']."""
    if modality == "image":
        return draw_shape(a["shape"], a["colour"], a["background"], world["image_size"], POSITIONS[a["position"]])
    if modality == "video":
        size, frames = world["video_size"], world["video_frames"]
        return shape_video(a["shape"], a["colour"], a["background"], a["motion"], size, frames)
    return sound(a["sound"], a["pitch"], a["register"], world["audio_seconds"], world["sample_rate"])


# ---------------------------------------------------------------- varied train renders

# the ffmpeg binary's encoders for the formats PIL and runtime.media do not write
VIDEO_CODECS = {".mp4": ["-c:v", "libx264", "-pix_fmt", "yuv420p"], ".webm": ["-c:v", "libvpx-vp9", "-b:v", "0", "-crf", "32", "-pix_fmt", "yuv420p"]}
AUDIO_CODECS = {".wav": ["-c:a", "pcm_s16le"], ".mp3": ["-c:a", "libmp3lame", "-q:a", "2"], ".ogg": ["-c:a", "libvorbis", "-q:a", "5"]}
# without it the OGG and WebM muxers write a random stream serial and the like: the same seed must give the same bytes
BITEXACT = ["-fflags", "+bitexact"]


@dataclass(frozen=True)
class Look:
    """How one train medium is rendered beyond its attributes (`draw_look`): its file format, the
    keyword arguments of the world's own drawing or sound function, and what is added after it."""

    suffix: str
    draw: dict[str, Any]
    noise: float = 0.0  # images: Gaussian σ in 8-bit levels; sounds: the noise's RMS
    seed: int = 0  # of the noise
    quality: int = 0  # JPEG and WebP
    fps: float = 0.0  # videos
    channels: int = 1  # sounds


def frame_size(rng: np.random.Generator, sides: tuple[int, int], aspects: tuple[float, float]) -> tuple[int, int]:
    """(width, height) with the long side in `sides` and width / height within `aspects`, both even
    (yuv420p video needs it)."""
    long = int(rng.integers(sides[0], sides[1] + 1))
    aspect = float(np.exp(rng.uniform(np.log(aspects[0]), np.log(aspects[1]))))
    w, h = (long, round(long / aspect)) if aspect >= 1 else (round(long * aspect), long)
    return w - w % 2, h - h % 2


def jitter_colour(name: str, rng: np.random.Generator, amount: int) -> Colour:
    """The named colour with each channel moved by up to `amount`."""
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in RGB[name])


def draw_look(modality: str, a: dict[str, str], rng: np.random.Generator, world: dict[str, Any] = WORLD) -> Look | None:
    """A varied look for one train medium of combination `a` (`world["varied"]`), or None (the plain
    render) with probability 1 - fraction."""
    varied = world.get("varied")
    if not varied or rng.random() >= varied["fraction"]:
        return None
    return _LOOKS[modality](a, rng, varied)


def _shape_look(a: dict[str, str], rng: np.random.Generator, v: dict[str, Any], width: int, height: int) -> dict[str, Any]:
    """draw_shape's arguments beyond the attributes: frame, size, colours and edges."""
    return {
        "size": width,
        "height": height,
        "scale": float(rng.uniform(*v["scale"])),
        "fill": jitter_colour(a["colour"], rng, v["colour_jitter"]),
        "back": jitter_colour(a["background"], rng, v["colour_jitter"]),
        # supersampling costs antialias² points a pixel: fewer above 512 pixels, where an edge is a small part anyway
        "antialias": int(max(1, min(v["antialias"], 2048 // max(width, height)))),
    }


def _jitter(rng: np.random.Generator, v: dict[str, Any]) -> Offset:
    return float(rng.uniform(-v["jitter"], v["jitter"])), float(rng.uniform(-v["jitter"], v["jitter"]))


def _image_look(a: dict[str, str], rng: np.random.Generator, v: dict[str, Any]) -> Look:
    width, height = frame_size(rng, v["image_long_side"], v["aspects"])
    dy, dx = _jitter(rng, v)
    place = POSITIONS[a["position"]]
    draw = {**_shape_look(a, rng, v, width, height), "offset": (place[0] + dy, place[1] + dx)}
    quality = int(rng.integers(v["quality"][0], v["quality"][1] + 1))
    return Look(str(rng.choice(v["image_formats"])), draw, float(rng.uniform(*v["noise"])), int(rng.integers(1 << 31)), quality)


def _video_look(a: dict[str, str], rng: np.random.Generator, v: dict[str, Any]) -> Look:
    width, height = frame_size(rng, v["video_long_side"], v["aspects"])
    fps = int(rng.choice(v["video_fps"]))
    draw = {**_shape_look(a, rng, v, width, height), "shift": _jitter(rng, v), "frames": fps}  # one second
    return Look(str(rng.choice(v["video_formats"])), draw, fps=float(fps))


def _sound_look(a: dict[str, str], rng: np.random.Generator, v: dict[str, Any]) -> Look:
    draw = {
        "rate": int(rng.choice(v["sample_rates"])),
        "amplitude": float(10 ** (rng.uniform(*v["levels_dbfs"]) / 20)),
        "phase": float(rng.uniform(0, 2 * np.pi)),
        "cents": float(rng.uniform(-v["cents"], v["cents"])),
    }
    noise = float(10 ** (rng.uniform(*v["noise_dbfs"]) / 20))
    return Look(str(rng.choice(v["audio_formats"])), draw, noise, int(rng.integers(1 << 31)), channels=int(rng.integers(1, 3)))


_LOOKS: dict[str, Callable[[dict[str, str], np.random.Generator, dict[str, Any]], Look]] = {
    "image": _image_look, "video": _video_look, "audio": _sound_look,
}


def render_look(modality: str, a: dict[str, str], look: Look, world: dict[str, Any] = WORLD) -> np.ndarray:
    """Combination `a` drawn by the world's own functions with `look`'s arguments, noise added: an
    image, a video, or a waveform at look.draw["rate"] (channels last when stereo)."""
    noise = np.random.default_rng(look.seed)
    if modality == "image":
        image = draw_shape(a["shape"], a["colour"], a["background"], **look.draw)
        return np.clip(np.round(image + noise.normal(0.0, look.noise, image.shape)), 0, 255).astype(np.uint8)
    if modality == "video":
        return shape_video(a["shape"], a["colour"], a["background"], a["motion"], **look.draw)
    wave = sound(a["sound"], a["pitch"], a["register"], world["audio_seconds"], **look.draw)
    wave = np.clip(wave + noise.normal(0.0, look.noise, wave.shape), -1.0, 1.0).astype(np.float32)
    return np.repeat(wave[:, None], look.channels, axis=1) if look.channels > 1 else wave


def write_look(path: Path, modality: str, a: dict[str, str], look: Look, world: dict[str, Any] = WORLD) -> None:
    """`render_look` in look.suffix's format (`path` must carry it)."""
    data = render_look(modality, a, look, world)
    if modality == "image":
        if look.suffix == ".png":
            media.write_png(path, data, PNG_LEVEL)
        else:
            Image.fromarray(data).save(path, quality=look.quality)
    elif modality == "video":
        if look.suffix in media.WRITTEN_VIDEO_SUFFIXES:
            media.write_video(path, data, fps=look.fps)
        else:
            raw = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{data.shape[2]}x{data.shape[1]}", "-r", str(look.fps), "-i", "-"]
            ffmpeg([*raw, *VIDEO_CODECS[look.suffix], *BITEXACT, str(path)], data.tobytes())
    elif look.suffix == ".wav" and look.channels == 1:
        media.write_wav(path, data, look.draw["rate"])
    else:
        raw = ["-f", "f32le", "-ar", str(look.draw["rate"]), "-ac", str(look.channels), "-i", "-"]
        ffmpeg([*raw, *AUDIO_CODECS[look.suffix], *BITEXACT, str(path)], np.ascontiguousarray(data, "<f4").tobytes())


def ffmpeg(args: list[str], stdin: bytes | None = None) -> None:
    """The ffmpeg binary on `args` (its last is the output), quietly; a failure raises with its message."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args]
    done = subprocess.run(command, input=stdin, capture_output=True, check=False)
    if done.returncode:
        raise RuntimeError(f"ffmpeg failed on {args[-1]}: {done.stderr.decode(errors='replace').strip()[-300:]}")


def write_medium(
    path: Path, modality: str, a: dict[str, str], world: dict[str, Any] = WORLD, variant: int = 0, look: Look | None = None
) -> None:
    """One combination's medium: with a `look`, `write_look`'s; else `render_variant`'s in the world's
    file format (PNG, MP4, WAV)."""
    if look is not None:
        write_look(path, modality, a, look, world)
        return
    data = render_variant(modality, a, variant, world)
    if modality == "image":
        media.write_png(path, data, PNG_LEVEL)
    elif modality == "video":
        media.write_video(path, data, fps=world["fps"])
    else:
        media.write_wav(path, data, world["sample_rate"])


MEDIA_WORKERS = 3  # threads: an MP4 is encoded and decoded by ffmpeg subprocesses, which overlap the next render


def map_media(fn: Callable[[Any], Any], items: Iterable[Any], desc: str, progress: bool = True) -> list[Any]:
    """`fn` over `items` in MEDIA_WORKERS threads, results in order, with a progress bar. Each item's
    file is made alone, so the bytes are those of a serial loop; stage 0's renders (1344 images, then
    1612 videos through MP4 this way) took 102 s serially and 49 s on 2 cores."""
    items = list(items)  # a generator has no len for the progress bar
    with ThreadPoolExecutor(MEDIA_WORKERS) as pool:
        return list(tqdm(pool.map(fn, items), total=len(items), desc=desc, unit="medium", disable=not progress, leave=False))


def write_world(
    root: Path,
    seed: int = 0,
    counts: Counts | None = None,
    world: dict[str, Any] = WORLD,
    progress: bool = True,
) -> Path:
    """Write the world for `seed` into `root` (records/synthetic.jsonl and the media); returns root.

    The same seed, counts and sizes give byte-identical files. `counts` is {split: {kind: n}} with
    kinds image, video, audio (X→text) and text_to_image, text_to_video, text_to_audio; by default
    `presets.WORLD["counts"]`.
    """
    root = Path(root)
    items = _plan(seed, counts, world)
    media = {_medium(item.record): item for item in items}  # a medium several records share is written once
    for folder in {(root / name).parent for name in media}:
        folder.mkdir(parents=True, exist_ok=True)

    def write(entry: tuple[str, _Item]) -> None:
        write_medium(root / entry[0], entry[1].modality, entry[1].attributes, world, entry[1].variant, entry[1].look)

    map_media(write, media.items(), f"synthetic world (seed {seed})", progress)
    write_records(root / RECORDS_FILE, (item.record for item in items))
    return root


def world_fingerprint(seed: int, counts: Counts | None = None, world: dict[str, Any] = WORLD) -> str:
    """Names a world's content: its seed, sizes, counts and WORLD_VERSION."""
    blob = json.dumps({"seed": seed, "counts": counts, "world": world, "version": WORLD_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cache_root(cache: Path | None = None) -> Path:
    """Where generated data sets are kept: `cache`, else $ANY2ANY_CACHE (default ~/.cache/any2any)."""
    return cache or Path(os.environ.get("ANY2ANY_CACHE", Path.home() / ".cache" / "any2any"))


def default_world_dir(seed: int = 0, cache: Path | None = None, counts: Counts | None = None) -> Path:
    """Where `ensure_world` keeps the world of a seed: the cache root's world/."""
    return cache_root(cache) / "world" / f"seed{seed}-{world_fingerprint(seed, counts)}"


def ensure_world(
    seed: int = 0, cache: Path | None = None, counts: Counts | None = None, progress: bool = True
) -> Path:
    """The default world of a seed, generated into the cache on first use."""
    return ensure_written(default_world_dir(seed, cache, counts), RECORDS_FILE, lambda staging: write_world(staging, seed, counts, progress=progress))


def ensure_written(target: Path, records: Path, write: Callable[[Path], Any]) -> Path:
    """`target`, made by `write(staging)` unless its `records` file is there. It is written into a
    staging folder and renamed into place when complete, so an interrupted generation is started
    again rather than used half-written."""
    if (target / records).is_file():
        return target
    staging = target.with_name(target.name + f".staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    write(staging)
    try:
        staging.rename(target)
    except OSError:  # another process finished first; its data are the same
        shutil.rmtree(staging, ignore_errors=True)
    return target
