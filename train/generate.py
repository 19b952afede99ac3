"""Reference any-to-any generation in PyTorch.

    python train/generate.py --checkpoint train/checkpoints/tiny --prompt "show me a red circle" \\
        --out outputs/ref [--image F] [--audio F] [--video F] [--seed N] [--output image|audio|video]

Prints the answer's text and writes `OUT/response.json` plus the media (PNG, WAV, MP4 or GIF).
Bad input gives a one-line error and a non-zero exit, and leaves `--out` untouched.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformers.utils import logging as hf_logging

if __package__ in (None, ""):  # run as a script: the repository root first, not train/ (its train.py shadows the package)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from runtime.cli import make_parser
from runtime.limits import Limits
from runtime.request import add_request_args, request_from_args
from runtime.response import media_meta, write_response
from train.checkpoint import read_config
from train.model import load_checkpoint
from train.reference import ReferencePipeline


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = make_parser(__doc__)
    p.add_argument("--checkpoint", type=Path, required=True)
    add_request_args(p)
    return p.parse_args(argv)


def answer(pipeline: ReferencePipeline, args: argparse.Namespace) -> dict:
    """Run one (already checked) request on a loaded pipeline and write its answer to `args.out`."""
    resp = pipeline(request_from_args(args))
    extra = {"prompt": args.prompt, "seed": args.seed, "backend": "torch-reference", "num_tokens": len(resp.token_ids)}
    return write_response(args.out, resp.text, resp.media, media_meta(pipeline.config), extra, args.video_format)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quiet:
        hf_logging.disable_progress_bar()
    try:
        request_from_args(args).check(Limits.for_config(read_config(args.checkpoint)))  # before loading anything
        body = answer(ReferencePipeline(load_checkpoint(args.checkpoint), progress=not args.quiet), args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(body["text"])
    for modality, name in body["media"].items():
        print(f"{modality}: {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
