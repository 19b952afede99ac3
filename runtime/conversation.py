"""A conversation: the turns of a multi-turn exchange, each with its text and its media in order.

A user turn gives text and input files (any number, of any input modality, in the order they
appear in the turn: each becomes its own `<Img>[mm]</Img>` span, `runtime.prompt`). An assistant
turn is history: its text, the ids the model generated (signal-token runs included; when given,
the prompt is built from them, see `runtime.prompt.conversation_prompt`) and the media it produced,
which are kept for the reader and never fed back (NExT-GPT feeds back the signal tokens, not the
pictures). A one-turn conversation is what a plain `runtime.request.Request` asks.

On disk and on the wire a conversation is JSON (`to_dict`/`from_dict`):

    {"turns": [
      {"role": "user", "text": "describe this", "media": [{"modality": "image", "path": "cat.png"}]},
      {"role": "assistant", "text": "a red circle", "ids": [261, 345, 366], "media": []},
      {"role": "user", "text": "and the background?"}]}

Paths are relative to the file's folder (`read_conversation`), or absolute.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from runtime.inputs import INPUT_MODALITIES
from runtime.signals import SignalVocab

ROLES = ("user", "assistant")
OUTPUT_MODALITIES = ("image", "video", "audio")


class ConversationError(ValueError):
    """A conversation that does not follow the rules; the message names the turn and the rule."""


@dataclass(frozen=True)
class Medium:
    modality: str
    path: Path


@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"
    text: str = ""
    media: tuple[Medium, ...] = ()  # user: its inputs in order; assistant: what it produced (history only)
    ids: tuple[int, ...] | None = None  # assistant: the generated ids, signal runs included

    @classmethod
    def user(cls, text: str, media: Sequence[Medium] = ()) -> Turn:
        return cls("user", text, tuple(media))

    @classmethod
    def assistant(cls, text: str, ids: Sequence[int] | None = None, media: Sequence[Medium] = ()) -> Turn:
        return cls("assistant", text, tuple(media), None if ids is None else tuple(int(i) for i in ids))


def media_of(files: Mapping[str, Path | None]) -> list[Medium]:
    """A `Request.files` mapping as media, in the project's input order (image, audio, video)."""
    unknown = set(files) - set(INPUT_MODALITIES)
    if unknown:
        raise ConversationError(f"unknown input modality {sorted(unknown)[0]!r}; known: {', '.join(INPUT_MODALITIES)}")
    return [Medium(m, Path(files[m])) for m in INPUT_MODALITIES if files.get(m)]


@dataclass(frozen=True)
class Conversation:
    turns: tuple[Turn, ...] = field(default_factory=tuple)

    @classmethod
    def single(cls, prompt: str, files: Mapping[str, Path | None] | None = None) -> Conversation:
        """The one-turn conversation of a plain request."""
        return cls((Turn.user(prompt, media_of(files or {})),))

    def then(self, turn: Turn) -> Conversation:
        return replace(self, turns=(*self.turns, turn))

    def inputs(self) -> list[Medium]:
        """Every user medium in conversation order: the order of the prompt's media positions."""
        return [m for t in self.turns if t.role == "user" for m in t.media]

    def text_bytes(self) -> int:
        return sum(len(t.text.encode("utf-8")) for t in self.turns)

    def check(self, vocab: SignalVocab | None = None) -> None:
        """The rules every layer relies on: turns alternate user, assistant, ..., and the last is the
        user's (the one to answer); user media are input modalities; an assistant turn's media are
        its own output: output modalities, each a run its ids complete (checked against `vocab`, the
        model's signal-token runs, when given)."""
        if not self.turns:
            raise ConversationError("empty conversation: give at least one user turn")
        for n, turn in enumerate(self.turns, 1):
            if turn.role not in ROLES:
                raise ConversationError(f"turn {n}: unknown role {turn.role!r}; known: {', '.join(ROLES)}")
            expected = ROLES[(n - 1) % 2]
            if turn.role != expected:
                raise ConversationError(f"turn {n}: a {turn.role} turn where a {expected} turn belongs (turns alternate, user first)")
            if turn.role == "user":
                _check_user(n, turn)
            else:
                _check_assistant(n, turn, vocab)
        if self.turns[-1].role != "user":
            raise ConversationError("the last turn is the assistant's: end with a user turn to answer")

    def to_dict(self, base: Path | None = None) -> dict[str, Any]:
        """JSON-ready; media paths relative to `base` where they lie under it."""
        return {"turns": [_turn_dict(t, base) for t in self.turns]}

    @classmethod
    def from_dict(cls, data: Any, base: Path | None = None) -> Conversation:
        """From `to_dict`'s shape; relative media paths are taken relative to `base`."""
        if not isinstance(data, dict) or not isinstance(data.get("turns"), list):
            raise ConversationError('a conversation is a JSON object {"turns": [...]}')
        unknown = set(data) - {"turns"}
        if unknown:
            raise ConversationError(f"unknown conversation field {sorted(unknown)[0]!r}")
        return cls(tuple(_turn_from(n, t, base) for n, t in enumerate(data["turns"], 1)))


def _check_user(n: int, turn: Turn) -> None:
    if turn.ids is not None:
        raise ConversationError(f"turn {n}: a user turn carries no generated ids")
    if not turn.text.strip():
        raise ConversationError(f"turn {n}: empty text" if n > 1 else "empty prompt: give some text with --prompt")
    for medium in turn.media:
        if medium.modality not in INPUT_MODALITIES:
            raise ConversationError(f"turn {n}: unknown input modality {medium.modality!r}; known: {', '.join(INPUT_MODALITIES)}")


def _check_assistant(n: int, turn: Turn, vocab: SignalVocab | None) -> None:
    produced = [m.modality for m in turn.media]
    for modality in produced:
        if modality not in OUTPUT_MODALITIES:
            raise ConversationError(f"turn {n}: an assistant turn cannot have produced {modality!r} media")
    if len(set(produced)) != len(produced):
        raise ConversationError(f"turn {n}: an assistant turn produces at most one medium per modality")
    if produced and turn.ids is None:
        raise ConversationError(f"turn {n}: assistant media need the turn's ids, whose signal runs produced them")
    if produced and vocab is not None:
        completed = vocab.completed(list(turn.ids or ()))
        foreign = [m for m in produced if m not in completed]
        if foreign:
            raise ConversationError(
                f"turn {n}: its {foreign[0]} is not its own output (its ids hold no complete {foreign[0]} signal run)"
            )


def _turn_dict(turn: Turn, base: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {"role": turn.role, "text": turn.text}
    if turn.media:
        out["media"] = [{"modality": m.modality, "path": _relative(m.path, base)} for m in turn.media]
    if turn.ids is not None:
        out["ids"] = list(turn.ids)
    return out


def _relative(path: Path, base: Path | None) -> str:
    """Relative to `base` where under it, else absolute: the file stays right wherever it is read from."""
    if base is None:
        return str(path)
    path = path.resolve()
    try:
        return str(path.relative_to(base.resolve()))
    except ValueError:
        return str(path)


def _turn_from(n: int, data: Any, base: Path | None) -> Turn:
    if not isinstance(data, dict):
        raise ConversationError(f"turn {n}: a turn is a JSON object")
    unknown = set(data) - {"role", "text", "media", "ids"}
    if unknown:
        raise ConversationError(f"turn {n}: unknown field {sorted(unknown)[0]!r}")
    role, text = data.get("role"), data.get("text", "")
    if not isinstance(role, str) or not isinstance(text, str):
        raise ConversationError(f"turn {n}: role and text are strings")
    media = data.get("media", [])
    if not isinstance(media, list) or not all(
        isinstance(m, dict) and set(m) == {"modality", "path"} and all(isinstance(v, str) for v in m.values()) for m in media
    ):
        raise ConversationError(f'turn {n}: media is a list of {{"modality": ..., "path": ...}}')
    ids = data.get("ids")
    if ids is not None and not (isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
        raise ConversationError(f"turn {n}: ids is a list of integers")
    items = tuple(Medium(m["modality"], base / m["path"] if base else Path(m["path"])) for m in media)
    return Turn(role, text, items, None if ids is None else tuple(ids))


def read_conversation(path: Path) -> Conversation:
    """A conversation file; its relative media paths are relative to its folder."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ConversationError(f"{path}: not JSON: {e}") from None
    return Conversation.from_dict(data, Path(path).parent)


def write_conversation(path: Path, conversation: Conversation) -> None:
    path = Path(path)
    path.write_text(json.dumps(conversation.to_dict(path.parent.resolve()), indent=2, ensure_ascii=False) + "\n")
