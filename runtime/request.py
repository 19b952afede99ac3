"""What a caller asks for and what it gets back, shared by every pipeline (reference, engines, Triton)."""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.conversation import OUTPUT_MODALITIES, Conversation, Medium, Turn, media_of, read_conversation
from runtime.limits import Limits

__all__ = ["OUTPUT_MODALITIES", "Request", "Response", "add_request_args", "request_from_args"]


@dataclass
class Request:
    """One turn (`prompt` and `files`) or a whole `conversation` ending with the user's turn, plus
    the settings. `session` names a conversation the server may keep the KV cache of, so that a
    follow-up with the same session prefills only its new turn (`runtime.sessions`)."""

    prompt: str = ""
    files: dict[str, Path | None] = field(default_factory=dict)
    output: str | None = None  # a modality the answer must contain
    seed: int = 0
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    steps: int | None = None
    guidance: float | None = None
    conversation: Conversation | None = None
    session: str | None = None

    @property
    def dialogue(self) -> Conversation:
        """The conversation this request asks to continue: the given one, or its one turn."""
        return self.conversation if self.conversation is not None else Conversation.single(self.prompt, self.files)

    def check(self, limits: Limits | None = None) -> None:
        """Refuse what is wrong before any work: the conversation's shape, the text's size (before it
        is tokenised) and every setting within `limits` (the pipelines' own; a client without them
        leaves those to the server); the input files are checked as they are read."""
        if self.conversation is not None and (self.prompt or any(self.files.values())):
            raise ValueError("give a prompt and files, or a conversation, not both")
        if self.output is not None and self.output not in OUTPUT_MODALITIES:
            raise ValueError(f"unknown output modality {self.output!r}; known: {', '.join(OUTPUT_MODALITIES)}")
        if self.session is not None:
            check_session_id(self.session)
        self.dialogue.check()
        if limits is not None:
            limits.check_request(self)


SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def check_session_id(session: str) -> None:
    if not SESSION_ID.match(session):
        raise ValueError(f"session id {session[:40]!r} is not [A-Za-z0-9._:-], at most 128 characters")


@dataclass
class Response:
    text: str
    token_ids: list[int]
    media: dict[str, np.ndarray]
    reused_tokens: int = 0  # prompt tokens its session's KV cache held (not prefilled again)
    prompt_tokens: int = 0  # the whole prompt's length, media slots and reused tokens included

    def turn(self, files: dict[str, Path] | None = None) -> Turn:
        """This answer as the assistant turn of its conversation; `files`: where its media were written."""
        return Turn.assistant(self.text, self.token_ids, [Medium(m, Path(p)) for m, p in (files or {}).items()])


def add_request_args(parser: argparse.ArgumentParser) -> None:
    """The request flags every command line shares (reference, runtime, Triton client)."""
    parser.add_argument("--prompt", help="the (next) user turn's text; required unless --conversation ends with a user turn")
    for modality in ("image", "audio", "video"):
        parser.add_argument(f"--{modality}", type=Path, help=f"an input {modality} file of that turn")
    parser.add_argument(
        "--conversation", type=Path,
        help="a conversation JSON file (docs/conversation.md) that --prompt continues; OUT/conversation.json gets the answer",
    )
    parser.add_argument("--session", help="a session id: the server keeps the conversation's KV cache for the next turn")
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
    """The request of a command line; with `--conversation`, the file's conversation continued by
    `--prompt` and its files (if given) as its new user turn."""
    files = {"image": args.image, "audio": args.audio, "video": args.video}
    conversation = None
    if args.conversation is not None:
        conversation = read_conversation(args.conversation)
        if args.prompt is not None:
            conversation = conversation.then(Turn.user(args.prompt, media_of(files)))
        elif any(files.values()):
            raise ValueError("--image, --audio and --video belong to a new turn: give its text with --prompt")
    elif args.prompt is None:
        raise ValueError("give --prompt, or --conversation with a file that ends with a user turn")
    return Request(
        prompt=args.prompt if conversation is None else "",
        files=files if conversation is None else {},
        conversation=conversation,
        session=args.session,
        output=args.output,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        steps=args.steps,
        guidance=args.guidance,
    )
