"""Any-to-any generation on a build's engines.

    python -m runtime --engines engines/tiny --backend onnxruntime --prompt "show me a red circle" \\
        --out outputs/rt [--image F] [--audio F] [--video F] [--seed N] [--steps N] [--guidance G] \\
        [--output image|audio|video] [--limits NAME=VALUE,...] [--conversation FILE] [--session ID]

Prints the text as it streams, shows a progress bar per denoising loop, and writes
`OUT/response.json` plus the media, and `OUT/conversation.json`: the conversation so far with this
answer, which `--conversation OUT/conversation.json --prompt "..."` continues (docs/conversation.md).
Bad input: one `error:` line, exit status 2, `--out` untouched.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from runtime.cli import add_backend, make_parser
from runtime.limits import Limits
from runtime.manifest import read_manifest
from runtime.pipeline import Any2AnyPipeline
from runtime.request import add_request_args, request_from_args
from runtime.response import media_meta, write_conversation_answer, write_response


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = make_parser(__doc__, "python -m runtime")
    p.add_argument("--engines", type=Path, required=True, help="a build folder with manifest.json")
    add_backend(p)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    p.add_argument("--limits", help="NAME=VALUE,... replacing the build's limits (runtime/limits.py)")
    add_request_args(p)
    return p.parse_args(argv)


class Progress:
    """One tqdm bar per denoising loop, fed by the pipeline's step callback."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bar, self.modality = enabled, None, None

    def __call__(self, modality: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None or modality != self.modality:
            self.close()
            self.bar, self.modality = tqdm(total=total, desc=f"{modality} denoising", unit="step", file=sys.stderr), modality
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    progress = Progress(not args.quiet)
    try:
        req = request_from_args(args)
        limits = Limits.for_build(read_manifest(args.engines)).override(args.limits)
        req.check(limits)  # before any engine is opened
        pipeline = Any2AnyPipeline(args.engines, args.backend, args.threads, limits=limits)
        resp = pipeline(req, on_text=lambda piece: print(piece, end="", flush=True), on_step=progress)
        progress.close()
        extra = {"prompt": args.prompt, "seed": args.seed, "backend": args.backend, "num_tokens": len(resp.token_ids)}
        body = write_response(args.out, resp.text, resp.media, media_meta(pipeline.config), extra, args.video_format)
        write_conversation_answer(args.out, req.dialogue, resp, body["media"])
    except (ValueError, RuntimeError, OSError) as e:
        progress.close()
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    print()
    for modality, name in body["media"].items():
        print(f"{modality}: {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
