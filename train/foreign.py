"""A foreign test set: the world's held-out combinations made by other tools than its renderer.

What a user brings is not drawn by `train/synthetic.py`, so the model is also asked about media made
otherwise, never trained on:
- pictures drawn with PIL's ImageDraw at four times their size and downsampled (anti-aliased edges),
  200 to 1,024 pixels on the long side, aspect ratios 1:2 to 2:1, the shape 0.7 to 1.3 times the
  world's size, its place jittered around the named one, colours jittered, a third saved as JPEG;
- videos drawn frame by frame the same way and encoded by the ffmpeg binary (H.264 in MP4, VP9 in
  WebM) at 6 to 24 frames a second, 0.75 to 2 s long, 96 to 256 pixels;
- tones, chirps and rhythms synthesised by ffmpeg's `aevalsrc` source at -20 to -3 dBFS, 8 to 48
  kHz, mono or stereo, as WAV, MP3 or OGG.

A shape's place is measured on the centred square of the frame (the part the model's resize and
centre crop keeps), so the caption's position words stay true on any aspect ratio. Records follow
the unified format with split "heldout", and the set has its own seed.

    python train/foreign.py --out DIR [--seed 1] [--per-modality 60] [--force]
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

if __package__ in (None, ""):  # run as a script: the repository root first, not train/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from runtime.cli import add_force, make_parser, refuse_non_empty
from train import synthetic
from train.data.records import Record, write_records

SOURCE = "foreign"
RECORDS_FILE = Path("records") / f"{SOURCE}.jsonl"
DEFAULT_SEED = 1
PER_MODALITY = 60
SUPERSAMPLE = 4
SCALES = (0.7, 1.3)  # the shape's size against the world's
JITTER = 0.04  # of the centred square, around the named place
COLOUR_JITTER = 12  # per channel, within each colour name's range
IMAGE_LONG_SIDE = (200, 1024)
ASPECTS = (0.5, 2.0)
VIDEO_SIDE = (96, 256)
VIDEO_FPS = (6, 8, 10, 12, 15, 24)
VIDEO_SECONDS = (0.75, 2.0)
VIDEO_CODECS = synthetic.VIDEO_CODECS
LEVELS_DBFS = (-20.0, -3.0)
SAMPLE_RATES = (8000, 11025, 16000, 22050, 32000, 44100, 48000)
AUDIO_CODECS = synthetic.AUDIO_CODECS
VERSION = 1  # bump when what is drawn changes for the same seed, so caches are rebuilt


# ---------------------------------------------------------------- pictures


Colours = tuple[tuple[int, int, int], tuple[int, int, int]]  # the shape's and the background's


def colours(a: dict[str, str], rng: np.random.Generator) -> Colours:
    """The shape's and the background's colour, each jittered within its name's range."""
    return synthetic.jitter_colour(a["colour"], rng, COLOUR_JITTER), synthetic.jitter_colour(a["background"], rng, COLOUR_JITTER)


def draw_picture(a: dict[str, str], width: int, height: int, offset: tuple[float, float], scale: float, fill: Colours) -> np.ndarray:
    """uint8 (height, width, 3): the shape of `a` drawn by PIL; `offset` (down, right) and the radius
    are fractions of the centred square's side, as the world's are of its frame."""
    side = min(width, height) * SUPERSAMPLE
    canvas = Image.new("RGB", (width * SUPERSAMPLE, height * SUPERSAMPLE), fill[1])
    cy = canvas.height / 2 + offset[0] * side
    cx = canvas.width / 2 + offset[1] * side
    _draw_shape(ImageDraw.Draw(canvas), a["shape"], cx, cy, scale * side / 5, fill[0])
    return np.asarray(canvas.resize((width, height), Image.Resampling.LANCZOS))


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, fill: tuple[int, int, int]) -> None:
    """The world's shapes (synthetic._shape_mask) by PIL's primitives."""
    if kind in ("circle", "dot"):
        rr = r if kind == "circle" else r / 2.5
        draw.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=fill)
    elif kind == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(1, round(0.4 * r)))
    elif kind == "square":
        draw.rectangle((cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r), fill=fill)
    elif kind == "stripe":
        draw.rectangle((cx - 1.6 * r, cy - 0.3 * r, cx + 1.6 * r, cy + 0.3 * r), fill=fill)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        raise ValueError(f"unknown shape {kind!r}; known: {', '.join(synthetic.SHAPES)}")


def _frame_size(rng: np.random.Generator, sides: tuple[int, int]) -> tuple[int, int]:
    """(width, height) with the long side in `sides` and an aspect ratio within ASPECTS."""
    return synthetic.frame_size(rng, sides, ASPECTS)


def _jittered(place: tuple[float, float], rng: np.random.Generator) -> tuple[float, float]:
    return place[0] + rng.uniform(-JITTER, JITTER), place[1] + rng.uniform(-JITTER, JITTER)


def write_picture(path: Path, a: dict[str, str], rng: np.random.Generator) -> Path:
    width, height = _frame_size(rng, IMAGE_LONG_SIDE)
    image = draw_picture(a, width, height, _jittered(synthetic.POSITIONS[a["position"]], rng), rng.uniform(*SCALES), colours(a, rng))
    jpeg = rng.random() < 1 / 3
    path = path.with_suffix(".jpg" if jpeg else ".png")
    Image.fromarray(image).save(path, **({"quality": int(rng.integers(80, 96))} if jpeg else {}))
    return path


# ---------------------------------------------------------------- videos


def draw_video(a: dict[str, str], width: int, height: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (frames, height, width, 3): the shape following its motion (synthetic.MOTIONS)."""
    start, end, s0, s1 = synthetic.MOTIONS[a["motion"]]
    start, end, scale, fill = _jittered(start, rng), _jittered(end, rng), rng.uniform(*SCALES), colours(a, rng)
    path = synthetic.motion_path(start, end, s0, s1, frames)
    return np.stack([draw_picture(a, width, height, offset, scale * size, fill) for offset, size in path])


def write_video(path: Path, a: dict[str, str], rng: np.random.Generator) -> Path:
    width, height = _frame_size(rng, VIDEO_SIDE)
    fps = int(rng.choice(VIDEO_FPS))
    frames = max(2, round(fps * rng.uniform(*VIDEO_SECONDS)))
    suffix = str(rng.choice(list(VIDEO_CODECS)))
    path = path.with_suffix(suffix)
    video = draw_video(a, width, height, frames, rng)
    command = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-", *VIDEO_CODECS[suffix], str(path)]
    synthetic.ffmpeg(command, video.tobytes())
    return path


# ---------------------------------------------------------------- sounds


def sound_expression(a: dict[str, str], peak: float) -> str:
    """An `aevalsrc` expression of the sound over one second: the world's tone, octave chirp from or
    down to the pitch, or four beeps (synthetic.sound), written anew in ffmpeg's expression language."""
    f = synthetic.pitch_hz(a["pitch"], a["register"])
    if a["sound"] == "tone":
        phase = f"2*PI*{f}*t"
    elif a["sound"] == "rising chirp":
        phase = f"2*PI*{f}*(pow(2,t)-1)/log(2)"
    elif a["sound"] == "falling chirp":
        phase = f"2*PI*{2 * f}*(1-pow(2,-t))/log(2)"
    elif a["sound"] == "rhythm":
        return f"{peak}*sin(2*PI*{f}*t)*lt(mod(4*t,1),0.4)"
    else:
        raise ValueError(f"unknown sound {a['sound']!r}; known: {', '.join(synthetic.SOUNDS)}")
    return f"{peak}*sin({phase})"


def write_sound(path: Path, a: dict[str, str], rng: np.random.Generator) -> Path:
    peak = 10 ** (rng.uniform(*LEVELS_DBFS) / 20)
    rate = int(rng.choice(SAMPLE_RATES))
    suffix = str(rng.choice(list(AUDIO_CODECS)))
    channels = int(rng.integers(1, 3))
    path = path.with_suffix(suffix)
    source = f"aevalsrc=exprs='{sound_expression(a, peak)}':s={rate}:d=1"
    synthetic.ffmpeg(["-f", "lavfi", "-i", source, "-ac", str(channels), *AUDIO_CODECS[suffix], str(path)])
    return path


# ---------------------------------------------------------------- the set

WRITERS = {"image": write_picture, "video": write_video, "audio": write_sound}


def plan(seed: int = DEFAULT_SEED, per_modality: int = PER_MODALITY) -> list[tuple[str, dict[str, str], int]]:
    """(modality, held-out combination, medium seed) per medium: held-out combinations drawn without
    repeats while they last, then again, each medium with its own seed."""
    rng = np.random.default_rng(seed)
    splits = synthetic.combination_splits(0)
    out = []
    for modality in WRITERS:
        held = splits[modality]["heldout"]
        order = np.concatenate([rng.permutation(len(held)) for _ in range(-(-per_modality // len(held)))])
        out += [(modality, held[i], int(rng.integers(1 << 32))) for i in order[:per_modality]]
    return out


def write_foreign(root: Path, seed: int = DEFAULT_SEED, per_modality: int = PER_MODALITY, progress: bool = True) -> Path:
    """Write the set into `root`: records/foreign.jsonl and the media; returns root."""
    root = Path(root)
    items = plan(seed, per_modality)
    for modality in WRITERS:
        (root / modality).mkdir(parents=True, exist_ok=True)

    def write(numbered: tuple[int, tuple[str, dict[str, str], int]]) -> Record:
        i, (modality, a, medium_seed) = numbered
        rid = f"{SOURCE}-{modality}-{i:05d}"
        path = WRITERS[modality](root / modality / rid, a, np.random.default_rng(medium_seed))
        caption = synthetic.CAPTION[modality](a)
        turns = [{"human": synthetic.DESCRIBE[modality][0], "assistant": caption}]
        return Record(rid, SOURCE, "heldout", turns, "text", {modality: str(path.relative_to(root))}, {}, caption, dict(a))

    records = synthetic.map_media(write, list(enumerate(items)), f"foreign set (seed {seed})", progress)
    write_records(root / RECORDS_FILE, records)
    return root


def ensure_foreign(seed: int = DEFAULT_SEED, per_modality: int = PER_MODALITY, cache: Path | None = None, progress: bool = True) -> Path:
    """The set of a seed, written into the cache beside the world on first use."""
    blob = json.dumps({"seed": seed, "n": per_modality, "version": VERSION}, sort_keys=True)
    target = synthetic.cache_root(cache) / "foreign" / f"seed{seed}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
    return synthetic.ensure_written(target, RECORDS_FILE, lambda staging: write_foreign(staging, seed, per_modality, progress))


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    p.add_argument("--out", type=Path, required=True, help="the folder to write")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--per-modality", type=int, default=PER_MODALITY, help="media per modality")
    add_force(p)
    args = p.parse_args(argv)
    refuse_non_empty(args.out, args.force)
    write_foreign(args.out, args.seed, args.per_modality)
    print(f"wrote {3 * args.per_modality} media and {RECORDS_FILE} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
