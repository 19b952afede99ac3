"""The limits on what one request may ask for, owned here and nowhere else.

`Limits.for_build(build)` derives the defaults from a build (the context its LLM engine holds, the
signal runs, the schedulers); the rest are the policy values below. A deployment overrides any of them
when it is set up (`build_repo.py --limits`, `python -m runtime --limits`), as `NAME=VALUE,...`.
Every check runs before the work it guards and refuses with a `LimitError` (a ValueError, so
Triton answers INVALID_ARGUMENT) whose one line names the limit and its value.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

NAME_MAX_BYTES = 255  # the longest file name Linux file systems store (NAME_MAX)
# Refuses a prompt by its size before it is tokenised: no tokenizer of this project's models
# averages more than this many bytes per token, so a longer prompt cannot fit the context.
PROMPT_BYTES_PER_TOKEN = 8
TOP_P_RANGE = (0.0, 1.0)  # a probability mass: a range by definition, not a policy
# The build's check of a portable ONNX runs its attention decomposed (MatMul, Softmax, MatMul), every
# score of a call held at once: at a profile point where one attention's scores pass this, the
# portable file is checked at min instead (nextgpt-7b-shallow's ZeroScope UNet at opt: 8 GB)
VERIFY_ATTENTION_BYTES = 2 << 30


class LimitError(ValueError):
    """A request beyond a limit; the message names the limit."""


@dataclass(frozen=True)
class Limits:
    max_steps: int = 1000  # denoising steps per media output
    max_new_tokens: int = 4096
    max_prompt_bytes: int = 65536  # UTF-8 bytes of the prompt
    max_file_bytes: int = 64 << 20  # bytes of one input file
    max_image_pixels: int = 40_000_000  # width × height of an image or a video frame
    max_video_frames: int = 36_000  # frames in a video file (ten minutes at 60 fps)
    max_video_seconds: float = 600.0
    max_audio_seconds: float = 300.0
    max_guidance: float = 50.0  # classifier-free guidance scale, from 0
    max_temperature: float = 10.0  # from 0 (greedy)
    max_turns: int = 64  # turns of one conversation, user and assistant together
    max_media: int = 16  # input media of one conversation, all turns together
    max_prompt_tokens: int = 1 << 20  # tokens of the templated conversation (at most the context, `for_config`)
    # The server's KV-cache sessions (runtime/sessions.py): how many it keeps, for how long since
    # their last use, and in how many bytes of keys and values in all; the oldest go first.
    max_sessions: int = 64
    session_ttl_s: float = 1800.0
    max_session_bytes: int = 1 << 30

    @classmethod
    def for_config(cls, config: dict[str, Any], context: int | None = None) -> Limits:
        """The defaults for a model: no more steps than the schedulers were trained with (diffusers
        refuses more), no more new tokens or prompt than the context (the model's, or the shorter
        one given) holds beside the signal runs."""
        context = min(config["llm"]["max_position_embeddings"], context or math.inf)
        runs = sum(len(ids) for ids in config["tokens"]["signal_ids"].values())
        steps = min(d["scheduler"]["num_train_timesteps"] for d in config["decoders"].values())
        return cls(
            max_steps=steps, max_new_tokens=context - runs - 1, max_prompt_bytes=context * PROMPT_BYTES_PER_TOKEN,
            max_prompt_tokens=context - runs - 1,
        )

    @classmethod
    def for_build(cls, build: Any) -> Limits:
        """The defaults for a build (a `runtime.manifest.Build`): its llm engine holds fewer tokens
        than the model's context when its cache range is shorter (the prompt, then one token per
        decode step on a cache of at most `past` tokens)."""
        return cls.for_config(build.config, build.component("llm")["dims"]["past"][-1] + 1)

    def override(self, text: str | None) -> Limits:
        """These limits with `NAME=VALUE,...` applied; an unknown name or a value that is not a
        positive number is refused."""
        types = {f.name: f.type for f in fields(self)}
        changes: dict[str, int | float] = {}
        for item in filter(None, (text or "").split(",")):
            name, _, value = item.partition("=")
            name = name.strip()
            if name not in types:
                raise LimitError(f"unknown limit {name!r}; known: {', '.join(types)}")
            changes[name] = _positive(name, value.strip(), int if types[name] == "int" else float)
        return replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Limits:
        return cls(**json.loads(text))

    def check_request(self, req: Any) -> None:
        """A request's conversation and settings (a `runtime.request.Request`; None means the default)."""
        conversation = req.dialogue
        size = conversation.text_bytes()
        if size > self.max_prompt_bytes:
            raise LimitError(f"prompt too long: {size} bytes exceed the limit max_prompt_bytes={self.max_prompt_bytes}")
        if len(conversation.turns) > self.max_turns:
            raise LimitError(f"{len(conversation.turns)} turns exceed the limit max_turns={self.max_turns}")
        media = len(conversation.inputs())
        if media > self.max_media:
            raise LimitError(f"{media} input media exceed the limit max_media={self.max_media}")
        self.check_count("steps", req.steps, "max_steps")
        self.check_count("max_new_tokens", req.max_new_tokens, "max_new_tokens")
        self.check_range("guidance", req.guidance, (0.0, self.max_guidance), "max_guidance")
        self.check_range("temperature", req.temperature, (0.0, self.max_temperature), "max_temperature")
        self.check_range("top_p", req.top_p, TOP_P_RANGE)

    def check_count(self, what: str, value: int | None, limit: str) -> None:
        if value is None:
            return
        if value < 1:
            raise LimitError(f"--{what.replace('_', '-')} must be at least 1, got {value}")
        if value > getattr(self, limit):
            raise LimitError(f"{what} {value} exceeds the limit {limit}={getattr(self, limit)}")

    def check_range(self, what: str, value: float | None, bounds: tuple[float, float], limit: str | None = None) -> None:
        if value is None:
            return
        low, high = bounds
        if not (math.isfinite(value) and low <= value <= high):
            named = f" (limit {limit}={high:g})" if limit else ""
            raise LimitError(f"{what} {value} is not a finite number in [{low:g}, {high:g}]{named}")

    def check_prompt_tokens(self, count: int) -> None:
        """The templated conversation's length, once tokenised."""
        if count > self.max_prompt_tokens:
            raise LimitError(f"prompt too long: {count} tokens exceed the limit max_prompt_tokens={self.max_prompt_tokens}")

    def check_file(self, name: str, size: int) -> None:
        """An input file's name and size, before it is written or read."""
        name_bytes = len(name.encode("utf-8", "surrogateescape"))
        if name_bytes > NAME_MAX_BYTES:
            raise LimitError(f"file name of {name_bytes} bytes exceeds the limit of {NAME_MAX_BYTES} bytes (NAME_MAX)")
        if size > self.max_file_bytes:
            raise LimitError(f"{name}: {size} bytes exceeds the limit max_file_bytes={self.max_file_bytes}")


def _positive(name: str, value: str, kind: type) -> int | float:
    try:
        number = kind(value)
    except ValueError:
        raise LimitError(f"limit {name}: {value!r} is not a{'n integer' if kind is int else ' number'}") from None
    if not (math.isfinite(number) and number > 0):
        raise LimitError(f"limit {name}: must be positive, got {value}")
    return number
