"""Readers: the dataset formats NExT-GPT trains on, converted to the unified records (records.py).

| format | file (the reference's name) | one entry | becomes |
|---|---|---|---|
| cc3m | `cc3m.json` | `{"caption", "id", "image_name"}` | image→caption |
| webvid | `webvid.json` | `{"caption", "id", "video_name"}` | video→caption |
| audiocaps | `audiocap.json` | `{"audio_id", "audio_name", "caption"}` | audio→caption |
| llava | `llava_instruct_150k.json` | `{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}]}` | image dialogue |
| alpaca | `alpaca_data.json` | `{"instruction", "input", "output"}` | text dialogue |
| videochat | `videochat_instruct_11k.json` | `{"video", "QA": [{"q", "a"}]}` (VideoChat2's optional `"i"` too) | video dialogue |
| t2x | `{image,video,audio}_instruction_tuning.json`, `cc3m_generation.json`... | `{"conversations": [...], "<m>_captions": [...]}`, answers carrying `<image>`/`<video>`/`<audio>` | text→X dialogue |
| mosit | `mosit.json` or `mosit_instruction_tuning.json` | as t2x, or `{"conversation", "image_list": [{"image_name", "caption"}], ...}` with `<Image>name</Image>` in answers | text→X+X dialogue |

Caption pairs keep the reference's caption clean-up (`process_caption`: lower case, `"()*#:;~` to spaces).
Media placeholders leave the human text (the prompt template puts the medium before it); an answer's
placeholder becomes the signal-token run of its modality, and the record's caption is that output's
caption. A dialogue with several outputs becomes one record per output, its turns cut after the
answer that carries it, so each record has one caption embedding, for its last run. Record ids are
`<source>-<the entry's own id>`, or `<source>-<file stem>-<index>` for formats without ids; media
files are named after the record id, never after a URL or an original name.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from train.presets import signal_tokens

MODALITY_KEYS = {"image": "image_name", "video": "video_name", "audio": "audio_name"}
DESCRIBE = {"image": "describe this image briefly.", "video": "describe this video briefly.", "audio": "describe this sound briefly."}
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_PLACEHOLDER = re.compile(r"\s*<(image|video|audio)>\s*")
_NAMED = re.compile(r"<(Image|Video|Audio)>(.*?)</\1>", re.S)  # MosIT's raw references, by file name
_OUTPUT = re.compile(r"<(Image|Video|Audio)>(.*?)</\1>|\s*<(image|video|audio)>\s*", re.S)  # either, in order
_DESCRIBED = re.compile(r"<(image|video|audio)>(.*?)</\1>", re.S)  # MosIT's descriptions, dropped as the reference does


class EntryError(ValueError):
    """One entry that cannot be converted; the message says why."""


@dataclass
class Draft:
    """A record before its split and media paths are known; `media` maps a modality to the source
    file name (relative to the media folder), in `inputs` or `outputs` as `media_role` says."""

    id: str
    turns: list[dict[str, str]]
    target: str = "text"
    caption: str | None = None
    media: dict[str, str] = field(default_factory=dict)
    media_role: str = "inputs"


Reader = Callable[[Any, str], list[Draft]]  # (entry, id prefix for entries without ids) -> drafts


def process_caption(caption: str) -> str:
    """The reference's clean-up of a caption (NExT-GPT-Lagacy/code/dataset/utils.py)."""
    caption = re.sub(r"[\"()*#:;~]", " ", caption.lower())
    return re.sub(r"\s{2,}", " ", caption).strip()


def _field(entry: Any, *names: str, kind: type = str) -> Any:
    """The first of `names` present in the entry, checked for type; an EntryError names what is wrong."""
    if not isinstance(entry, dict):
        raise EntryError(f"an entry is a JSON object, got {type(entry).__name__}")
    for name in names:
        if name in entry:
            value = entry[name]
            if not isinstance(value, kind) or (kind is str and not value.strip()):
                raise EntryError(f"{name!r} must be a non-empty {kind.__name__}")
            return value
    raise EntryError(f"missing field {names[0]!r}")


def _record_id(source: str, raw: Any) -> str:
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise EntryError(f"id must be a string or an integer, got {type(raw).__name__}")
    safe = _ID_UNSAFE.sub("_", str(raw)).strip("._-")
    if not safe:
        raise EntryError(f"id {raw!r} has no usable characters")
    return f"{source}-{safe}"[:128]


def _pair(modality: str, id_field: str) -> Callable[[str], Reader]:
    def reader(source: str) -> Reader:
        def convert(entry: Any, fallback: str) -> list[Draft]:
            name = _field(entry, MODALITY_KEYS[modality])
            rid = _record_id(source, entry[id_field]) if id_field in entry else _record_id(source, Path(name).stem)
            caption = process_caption(_field(entry, "caption"))
            if not caption:
                raise EntryError("caption is empty after clean-up")
            turns = [{"human": DESCRIBE[modality], "assistant": caption}]
            return [Draft(rid, turns, caption=caption, media={modality: name})]

        return convert

    return reader


def _strip_inputs(text: str) -> str:
    """A human turn without media placeholders or references (the medium goes before the text)."""
    text = _NAMED.sub(" ", _DESCRIBED.sub(" ", text))
    return re.sub(r"[ \t]{2,}", " ", _PLACEHOLDER.sub(" ", text)).strip()


def _conversation(entry: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(human, gpt) turn pairs of a `conversations` list in the LLaVA layout."""
    turns = _field(entry, "conversations", "conversation", kind=list)
    if not turns or len(turns) % 2:
        raise EntryError(f"a conversation needs human/gpt pairs, got {len(turns)} turns")
    pairs = []
    for i in range(0, len(turns), 2):
        for j, role in ((i, "human"), (i + 1, "gpt")):
            turn = turns[j]
            if not isinstance(turn, dict) or turn.get("from") != role or not isinstance(turn.get("value"), str):
                raise EntryError(f"turn {j} must be {{'from': '{role}', 'value': text}}")
        pairs.append((turns[i], turns[i + 1]))
    return pairs


def _llava(source: str) -> Reader:
    def convert(entry: Any, fallback: str) -> list[Draft]:
        image = _field(entry, "image", "image_name")
        rid = _record_id(source, entry["id"]) if "id" in entry else fallback
        turns = [{"human": _strip_inputs(h["value"]), "assistant": g["value"].strip()} for h, g in _conversation(entry)]
        return [Draft(rid, turns, media={"image": image})]

    return convert


def _alpaca(source: str) -> Reader:
    def convert(entry: Any, fallback: str) -> list[Draft]:
        instruction = _field(entry, "instruction")
        extra = entry.get("input", "")
        if not isinstance(extra, str):
            raise EntryError("'input' must be a string")
        human = f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction.strip()
        return [Draft(fallback, [{"human": human, "assistant": _field(entry, "output").strip()}])]

    return convert


def _videochat(source: str) -> Reader:
    def convert(entry: Any, fallback: str) -> list[Draft]:
        video = _field(entry, "video")
        qa = _field(entry, "QA", kind=list)
        turns = []
        for i, item in enumerate(qa):
            q, a = _field(item, "q"), _field(item, "a")
            instruction = item.get("i") if isinstance(item.get("i"), str) else ""
            human = f"{instruction.strip()}\n{q.strip()}" if instruction.strip() and i == 0 else q.strip()
            turns.append({"human": human, "assistant": a.strip()})
        if not turns:
            raise EntryError("'QA' is empty")
        return [Draft(fallback, turns, media={"video": video})]

    return convert


@dataclass
class _Output:
    turn: int
    modality: str
    caption: str
    media: str | None


def _captions_by_modality(entry: dict[str, Any]) -> dict[str, list[str]]:
    """The processed files' `<m>_captions` (a list, or one string in `*_generation.json`)."""
    out = {}
    for m in MODALITY_KEYS:
        value = entry.get(f"{m}_captions")
        if isinstance(value, str):
            value = [value]
        if value is not None and not (isinstance(value, list) and all(isinstance(c, str) for c in value)):
            raise EntryError(f"'{m}_captions' must be a list of strings")
        out[m] = list(value or [])
    return out


def _named_media(entry: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """MosIT's raw `<m>_list` entries: file name → (modality, caption)."""
    named = {}
    for m, key in MODALITY_KEYS.items():
        for item in entry.get(f"{m}_list") or []:
            named[_field(item, key)] = (m, _field(item, "caption"))
    return named


class _Outputs:
    """The media a dialogue's answers stand for, collected answer by answer, with their captions."""

    def __init__(self, entry: dict[str, Any]) -> None:
        self.pending = _captions_by_modality(entry)
        self.named = _named_media(entry)
        self.files = {m: entry.get(f"output_{m}") for m in MODALITY_KEYS}  # `*_generation.json`'s target file
        self.found: list[_Output] = []

    def _refs(self, text: str) -> tuple[str, list[tuple[str, str | None, str | None]]]:
        """The text with each output reference marked by NUL, and (modality, file, caption) per mark."""
        refs: list[tuple[str, str | None, str | None]] = []

        def mark(match: re.Match[str]) -> str:
            if match.group(3):  # a placeholder
                refs.append((match.group(3), None, None))
                return " \0 "
            name = match.group(2).strip()
            if name not in self.named:  # a reference to nothing listed: the reference drops it
                return " "
            refs.append((self.named[name][0], name, self.named[name][1]))
            return " \0 "

        return _OUTPUT.sub(mark, _DESCRIBED.sub(" ", text)), refs

    def answer(self, turn: dict[str, Any], index: int) -> str:
        """The answer with each output reference replaced by its modality's signal-token run."""
        text, refs = self._refs(turn["value"])
        own_caption = turn.get("caption") if isinstance(turn.get("caption"), str) and len(refs) == 1 else None
        for modality, media, caption in refs:
            caption = caption or own_caption or (self.pending[modality].pop(0) if self.pending[modality] else None)
            if not caption or not caption.strip():
                raise EntryError(f"answer {index} asks for {modality} but no caption is given for it")
            file = self.files[modality] if isinstance(self.files[modality], str) else None
            self.found.append(_Output(index, modality, caption.strip(), media or file))
        runs = iter("".join(signal_tokens(m)) for m, _, _ in refs)
        return re.sub(r"[ \t]{2,}", " ", re.sub("\0", lambda _: next(runs), text)).strip()


def _dialogue(source: str) -> Reader:
    """t2x and MosIT: dialogues whose answers stand for generated media."""

    def convert(entry: Any, fallback: str) -> list[Draft]:
        pairs = _conversation(entry)
        outputs = _Outputs(entry)
        turns = []
        for i, (human, gpt) in enumerate(pairs):
            answer = outputs.answer(gpt, i)
            if not answer:
                raise EntryError(f"answer {i} is empty")
            turns.append({"human": _strip_inputs(human["value"]), "assistant": answer})
        if not outputs.found:
            return [Draft(fallback, turns)]
        return [
            Draft(
                fallback if len(outputs.found) == 1 else f"{fallback}-{k}",
                turns[: out.turn + 1],
                target=out.modality,
                caption=out.caption,
                media={out.modality: out.media} if out.media else {},
                media_role="outputs",
            )
            for k, out in enumerate(outputs.found)
        ]

    return convert


READERS: dict[str, Callable[[str], Reader]] = {
    "cc3m": _pair("image", "id"),
    "webvid": _pair("video", "id"),
    "audiocaps": _pair("audio", "audio_id"),
    "llava": _llava,
    "alpaca": _alpaca,
    "videochat": _videochat,
    "t2x": _dialogue,
    "mosit": _dialogue,
}
NEEDS_MEDIA = ("cc3m", "webvid", "audiocaps", "llava", "videochat")


class InputError(ValueError):
    """An input file that cannot be read at all (nothing is converted)."""


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _json_array(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """(line, element) of a JSON array, element by element, so each can be named by its line."""
    decoder, i, line, seen = json.JSONDecoder(), _skip_ws(text, 0), 1, 0
    if text[i : i + 1] != "[":
        raise InputError(f"{path}: expected a JSON array of entries (or JSON Lines)")
    i = _skip_ws(text, i + 1)
    if text[i : i + 1] == "]":
        return
    while True:
        line += text.count("\n", seen, i)
        seen = i
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); nothing converted") from None
        yield line, value
        i = _skip_ws(text, end)
        if text[i : i + 1] == "]":
            return
        if text[i : i + 1] != ",":
            where = f"{path}:{text.count(chr(10), 0, i) + 1}"
            raise InputError(f"{where}: expected ',' or ']' after an entry; nothing converted")
        i = _skip_ws(text, i + 1)


def read_entries(path: Path) -> Iterator[tuple[int, Any]]:
    """(line, entry) of a JSON array file or a JSON Lines file; an unparsable JSONL line yields
    an EntryError as its entry, so it is reported and skipped like any malformed entry."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e})") from None
    if text.lstrip().startswith("["):
        yield from _json_array(path, text)
        return
    for line_no, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as e:
                yield line_no, EntryError(f"not valid JSON ({e.msg})")
