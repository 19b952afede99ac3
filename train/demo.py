"""One request per route on a checkpoint, answered by the PyTorch reference pipeline.

    python train/demo.py --checkpoint train/checkpoints/tiny --out outputs/demo

Writes sample inputs from the synthetic world to `OUT/inputs/` and one answer folder per route.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root first, not train/ (its train.py shadows the package)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from runtime.cli import make_parser
from train import synthetic
from train.generate import answer, parse_args
from train.model import load_checkpoint
from train.reference import ReferencePipeline

# Held-out combinations of the synthetic world: nothing the embedded model saw in training, in its own
# language. One per input file, one per text→X prompt.
HELDOUT = synthetic.combination_splits(0)
SAMPLES = {m: HELDOUT[m]["heldout"][0] for m in ("image", "audio", "video")}
ASKED = {m: synthetic.CAPTION[m](HELDOUT[m]["heldout"][1]) for m in ("image", "audio", "video")}

# route name -> (prompt, input files by modality, required output modality)
ROUTES: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "text_to_text": (f"{synthetic.CAPTION['image'](HELDOUT['image']['heldout'][2])}. what shape is it?", (), None),
    "image_to_text": ("describe this image", ("image",), None),
    "audio_to_text": ("describe this sound", ("audio",), None),
    "video_to_text": ("describe this video", ("video",), None),
    "text_to_image": (f"show me {ASKED['image']}", (), "image"),
    "text_to_audio": (f"let me hear {ASKED['audio']}", (), "audio"),
    "text_to_video": (f"show me {ASKED['video']}", (), "video"),
    "image_to_audio": ("make a sound that fits this picture", ("image",), "audio"),
}


def write_sample_inputs(folder: Path, sample_rate: int) -> dict[str, Path]:
    """The SAMPLES media in the world's formats (PNG, WAV at `sample_rate`, MP4)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {m: folder / f"{m}{synthetic.EXT[m]}" for m in SAMPLES}
    for modality, path in files.items():
        synthetic.write_medium(path, modality, SAMPLES[modality], {**synthetic.WORLD, "sample_rate": sample_rate})
    return files


def existing_sample_inputs(folder: Path) -> dict[str, Path]:
    """The files `write_sample_inputs` wrote to `folder` before: for a machine that can read MP4 but
    has no encoder to write it, the inputs are written elsewhere and carried there."""
    files = {m: folder / f"{m}{synthetic.EXT[m]}" for m in SAMPLES}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"sample inputs missing (write them with train.demo.write_sample_inputs): {', '.join(missing)}")
    return files


def sample_inputs(folder: Path | None, scratch: Path, sample_rate: int) -> dict[str, Path]:
    """The inputs written to `folder` before when it is given, else freshly written to `scratch`."""
    return existing_sample_inputs(folder) if folder else write_sample_inputs(scratch, sample_rate)


def route_args(checkpoint: Path, out: Path, route: str, files: dict[str, Path], seed: int) -> argparse.Namespace:
    prompt, inputs, output = ROUTES[route]
    argv = ["--checkpoint", str(checkpoint), "--prompt", prompt, "--out", str(out / route), "--seed", str(seed), "--quiet"]
    for modality in inputs:
        argv += [f"--{modality}", str(files[modality])]
    if output:
        argv += ["--output", output]
    return parse_args(argv)


def main() -> None:
    p = make_parser(__doc__)
    p.add_argument("--checkpoint", type=Path, default=Path("train/checkpoints/tiny"))
    p.add_argument("--out", type=Path, default=Path("outputs/demo"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    pipeline = ReferencePipeline(load_checkpoint(args.checkpoint), progress=False)
    files = write_sample_inputs(args.out / "inputs", pipeline.config["imagebind"]["audio"]["sample_rate"])
    for route in ROUTES:
        start = time.perf_counter()
        body = answer(pipeline, route_args(args.checkpoint, args.out, route, files, args.seed))
        took = time.perf_counter() - start
        print(f"{route:15s} {took:5.2f}s text={body['text'][:40]!r} media={sorted(body['media'].values())}")


if __name__ == "__main__":
    main()
