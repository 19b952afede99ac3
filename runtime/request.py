"""What a caller asks for and what it gets back, shared by every pipeline (reference, engines, Triton)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.limits import Limits

OUTPUT_MODALITIES = ("image", "video", "audio")


@dataclass
class Request:
    prompt: str
    files: dict[str, Path | None] = field(default_factory=dict)
    output: str | None = None  # a modality the answer must contain
    seed: int = 0
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    steps: int | None = None
    guidance: float | None = None

    def check(self, limits: Limits | None = None) -> None:
        """Refuse what is wrong before any work: the prompt's size (before it is tokenised) and
        every setting within `limits` (the pipelines' own; a client without them leaves those to
        the server); the input files are checked as they are read."""
        if self.output is not None and self.output not in OUTPUT_MODALITIES:
            raise ValueError(f"unknown output modality {self.output!r}; known: {', '.join(OUTPUT_MODALITIES)}")
        if limits is not None:
            limits.check_request(self)


@dataclass
class Response:
    text: str
    token_ids: list[int]
    media: dict[str, np.ndarray]


def add_request_args(parser: argparse.ArgumentParser) -> None:
    """The request flags every command line shares (reference, runtime, Triton client)."""
    parser.add_argument("--prompt", required=True)
    for modality in ("image", "audio", "video"):
        parser.add_argument(f"--{modality}", type=Path, help=f"an input {modality} file")
    parser.add_argument("--out", type=Path, required=True, help="folder for response.json and the media")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", choices=OUTPUT_MODALITIES, help="a modality the answer must contain")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--temperature", type=float, help="0 for greedy decoding")
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    parser.add_argument("--video-format", choices=("mp4", "gif"), default="mp4")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


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
