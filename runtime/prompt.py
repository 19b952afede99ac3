"""The NExT-GPT prompt template for a conversation, and the places of its multimodal tokens.

One function, `conversation_prompt`, serves the reference pipeline, the engines and training, so
all three see the same token ids. The checkpoint's config carries the template strings (written
from the preset).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from runtime.conversation import Conversation, Turn

MEDIA_SLOT = "[mm]"


class PromptError(ValueError):
    """An empty prompt or one that does not fit the context."""


@dataclass(frozen=True)
class PromptIds:
    ids: list[int]
    media_positions: list[int]  # one per user medium, in conversation order: its token replaces the placeholder id there
    answers: list[tuple[int, int]]  # [start, end) of each assistant turn's tokens (training's labels)


def conversation_prompt(
    turns: Conversation | Sequence[Turn],
    template: dict[str, str],
    encode: Callable[[str], list[int]],
    bos_id: int,
    placeholder_id: int,
    answer_text: Callable[[Sequence[int]], str] | None = None,
) -> PromptIds:
    """`BOS ### Human: <Img>[mm]</Img> q1\\n### Assistant: a1\\n### Human: q2\\n### Assistant:` as ids.

    A user turn is `### Human: ` (the first) or ` Human: ` (a later one: the previous answer's
    stop marker opens it), then one `<Img>[mm]</Img> ` per medium in order, its text and
    `\\n### Assistant:`; an assistant turn is ` {answer}\\n###`. The answer is the turn's text, or,
    where the turn has ids and `answer_text` is given, `answer_text(ids)` stripped: the generated
    text with its signal runs, as training writes answers. A conversation that ends with the user's
    turn ends ready for the answer; one that ends with an answer (a training example) ends with `###`.

    Each text segment is tokenised on its own, as the reference does, so a media slot sits on a
    segment boundary and never merges with its neighbours. Turn order is the caller's to check
    (`Conversation.check`); an empty user text is refused here.
    """
    turns = turns.turns if isinstance(turns, Conversation) else turns
    open_tag, _, close_tag = template["media"].partition(MEDIA_SLOT)
    later_human = template["human"].removeprefix(template["stop"])
    ids, positions, answers = [bos_id], [], []
    for n, turn in enumerate(turns):
        if turn.role == "user":
            if not turn.text.strip():
                raise PromptError("empty prompt: give some text with --prompt" if n == 0 else f"turn {n + 1}: empty text")
            head = template["human"] if n == 0 else later_human
            # segments around the slots: head<Img> | </Img> <Img> | ... | </Img> text\n### Assistant:
            segments = [head + open_tag, *[close_tag + " " + open_tag] * (len(turn.media) - 1)] if turn.media else []
            tail = (close_tag + " " if turn.media else head) + turn.text + template["assistant"]
            for segment in segments:
                ids += encode(segment)
                positions.append(len(ids))
                ids.append(placeholder_id)
            ids += encode(tail)
        else:
            answer = answer_text(turn.ids).strip() if turn.ids is not None and answer_text else turn.text
            start = len(ids)
            ids += encode(" " + answer + "\n" + template["stop"])
            answers.append((start, len(ids)))
    return PromptIds(ids, positions, answers)


def check_fits(prompt_len: int, reserved: int, context: int) -> None:
    """Refuse a prompt that leaves no room for the answer and its signal runs."""
    if prompt_len + reserved > context:
        raise PromptError(
            f"prompt too long: {prompt_len} tokens plus {reserved} reserved for the answer "
            f"exceed the context of {context} tokens"
        )

