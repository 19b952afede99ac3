"""Reference any-to-any generation in PyTorch.

    python train/generate.py --checkpoint train/checkpoints/tiny --prompt "show me a red circle" \
        --out outputs/ref [--image F] [--audio F] [--video F] [--seed N] [--output image|audio|video]

Prints the answer's text and writes `OUT/response.json` plus the media (PNG, WAV, MP4 or GIF).
Bad input gives a one-line error and a non-zero exit, and leaves `--out` untouched.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformers.utils import logging as hf_logging

from runtime.response import VIDEO_FORMATS, write_response
from train.model import load_checkpoint
from runtime.request import OUTPUT_MODALITIES, Request
from train.reference import ReferencePipeline


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--image", type=Path)
    p.add_argument("--audio", type=Path)
    p.add_argument("--video", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", choices=OUTPUT_MODALITIES, help="a modality the answer must contain")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--temperature", type=float, help="0 for greedy decoding")
    p.add_argument("--top-p", type=float)
    p.add_argument("--steps", type=int, help="denoising steps (default: the checkpoint's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    p.add_argument("--video-format", choices=VIDEO_FORMATS, default="mp4")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def request_from_args(args: argparse.Namespace) -> Request:
    return Request(
        prompt=args.prompt,
        files={"image": args.image, "audio": args.audio, "video": args.video},
        output=args.output,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        steps=args.steps,
        guidance=args.guidance,
    )


def answer(pipeline: ReferencePipeline, args: argparse.Namespace) -> dict:
    """Run one (already checked) request on a loaded pipeline and write its answer to `args.out`."""
    resp = pipeline(request_from_args(args))
    extra = {"prompt": args.prompt, "seed": args.seed, "backend": "torch-reference", "num_tokens": len(resp.token_ids)}
    return write_response(args.out, resp.text, resp.media, pipeline.media_meta(), extra, args.video_format)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quiet:
        hf_logging.disable_progress_bar()
    try:
        request_from_args(args).check()  # before loading anything
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
