"""The NExT-GPT prompt template and the placement of the multimodal token.

The checkpoint's config carries the template strings (written from the preset), so the same
code serves the reference pipeline and the engines.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

MEDIA_SLOT = "[mm]"


class PromptError(ValueError):
    """An empty prompt or one that does not fit the context."""


@dataclass(frozen=True)
class PromptIds:
    ids: list[int]
    media_position: int | None  # where the (summed) ImageBind token replaces the placeholder id


def build_prompt(
    text: str,
    has_media: bool,
    template: dict[str, str],
    encode: Callable[[str], list[int]],
    bos_id: int,
    placeholder_id: int,
) -> PromptIds:
    """`BOS ### Human: <Img>[mm]</Img> {text}\\n### Assistant:` as token ids.

    Each text segment is tokenised on its own, as the reference does, so the media token sits
    on a segment boundary and never merges with its neighbours.
    """
    if not text.strip():
        raise PromptError("empty prompt: give some text with --prompt")
    media = template["media"] + " " if has_media else ""
    before, _, after = (template["human"] + media + text + template["assistant"]).partition(MEDIA_SLOT)
    if not has_media:
        return PromptIds([bos_id, *encode(before)], None)
    left = [bos_id, *encode(before)]
    return PromptIds([*left, placeholder_id, *encode(after)], len(left))


def check_fits(prompt_len: int, reserved: int, context: int) -> None:
    """Refuse a prompt that leaves no room for the answer and its signal runs."""
    if prompt_len + reserved > context:
        raise PromptError(
            f"prompt too long: {prompt_len} tokens plus {reserved} reserved for the answer "
            f"exceed the context of {context} tokens"
        )

