"""The unified dataset format: one JSON object per line (JSONL), one record per training sample.

```
{"id": "cc3m-000123",                 stable, unique, [A-Za-z0-9._-]; media files are named after it
 "source": "cc3m",                    the dataset it came from
 "split": "train",                    "train" or "heldout"
 "inputs": {"image": "image/cc3m-000123.jpg"},   media the human gives, paths relative to the data root
 "outputs": {},                       media the answer stands for (text→X targets), likewise
 "caption": "a dog on a beach",       caption of the record's media, or null
 "turns": [{"human": "...", "assistant": "..."}],  the dialogue; signal-token runs written out
 "target": "text",                    modality of the answer: text, image, audio or video
 "attributes": {"shape": "circle"}}   optional labels of the media (the synthetic world's ground truth)
```
An assistant turn that answers with media carries the run literally, e.g. `[IMG0][IMG1][IMG2][IMG3]`.
A human turn holds no media placeholder: the prompt template puts each turn's media before its text.
The record's `inputs` are the first turn's media; a later turn gives its own as an optional
`"inputs": {"image": "..."}` in that turn (a conversation that shows a second picture on turn 2), so
a record written before turns had media reads as it did. A record has at most one caption, whose
embedding is the target of its last signal-token run, or of its input medium's caption when it
answers in text.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

MODALITIES = ("image", "audio", "video")
TARGETS = ("text", *MODALITIES)
SPLITS = ("train", "heldout")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RecordError(ValueError):
    """A record that does not follow the schema; the message says which field and why."""


@dataclass(frozen=True)
class Record:
    id: str
    source: str
    split: str
    turns: list[dict[str, Any]]  # human, assistant and, after the first, optionally inputs
    target: str = "text"
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    caption: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate(self)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> "Record":
        if not isinstance(data, dict):
            raise RecordError(f"a record is a JSON object, got {type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise RecordError(f"unknown field {sorted(unknown)[0]!r}")
        missing = {"id", "source", "split", "turns"} - set(data)
        if missing:
            raise RecordError(f"missing field {sorted(missing)[0]!r}")
        return cls(**data)


def _check_media(name: str, media: Any) -> None:
    if not isinstance(media, dict):
        raise RecordError(f"{name} must be an object of modality → path")
    for modality, path in media.items():
        if modality not in MODALITIES:
            raise RecordError(f"{name}: unknown modality {modality!r}")
        if not isinstance(path, str) or not path or Path(path).is_absolute() or ".." in Path(path).parts:
            raise RecordError(f"{name}.{modality}: {path!r} is not a path relative to the data root")


def turn_inputs(record: Record) -> list[dict[str, str]]:
    """Each turn's input media, in turn order: the record's `inputs` are the first turn's. Within a
    turn in MODALITIES order, the order the runtime gives a request's files (runtime.conversation.media_of)."""
    media = [record.inputs if i == 0 else turn.get("inputs", {}) for i, turn in enumerate(record.turns)]
    return [{m: turn[m] for m in MODALITIES if m in turn} for turn in media]


def all_inputs(record: Record) -> list[str]:
    """Every input medium's path, in the order the dialogue gives them."""
    return [path for media in turn_inputs(record) for path in media.values()]


def _check_turns(record: Record) -> None:
    if not isinstance(record.turns, list) or not record.turns:
        raise RecordError("turns must be a non-empty list")
    for i, turn in enumerate(record.turns):
        if not isinstance(turn, dict) or not {"human", "assistant"} <= set(turn) <= {"human", "assistant", "inputs"}:
            raise RecordError(f"turns[{i}] must have exactly 'human', 'assistant' and optionally 'inputs'")
        if not isinstance(turn["human"], str) or not isinstance(turn["assistant"], str) or not turn["assistant"].strip():
            raise RecordError(f"turns[{i}]: texts must be strings and the answer non-empty")
        if "inputs" in turn:
            _check_media(f"turns[{i}].inputs", turn["inputs"])
            if not turn["inputs"]:
                raise RecordError(f"turns[{i}].inputs is empty: leave it out")
            if i == 0:
                raise RecordError("turns[0].inputs: the first turn's media are the record's inputs")


def validate(record: Record) -> None:
    if not isinstance(record.id, str) or not ID_PATTERN.match(record.id):
        raise RecordError(f"id {record.id!r} is not [A-Za-z0-9._-], at most 128 characters")
    if not isinstance(record.source, str) or not record.source:
        raise RecordError("source must be a non-empty string")
    if record.split not in SPLITS:
        raise RecordError(f"split {record.split!r} is not one of {SPLITS}")
    if record.target not in TARGETS:
        raise RecordError(f"target {record.target!r} is not one of {TARGETS}")
    _check_media("inputs", record.inputs)
    _check_turns(record)
    _check_media("outputs", record.outputs)
    if not isinstance(record.attributes, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in record.attributes.items()
    ):
        raise RecordError("attributes must be an object of string → string")
    if record.caption is not None and (not isinstance(record.caption, str) or not record.caption.strip()):
        raise RecordError("caption must be a non-empty string or null")


def write_records(path: Path, records: Iterable[Record]) -> int:
    """Write atomically (a temporary file renamed into place); returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(record.to_json() + "\n")
            n += 1
    tmp.replace(path)
    return n


def read_records(path: Path) -> Iterator[Record]:
    """Every record of a JSONL file; a bad line is a RecordError naming the file and line."""
    with Path(path).open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield Record.from_dict(json.loads(line))
            except (json.JSONDecodeError, RecordError, TypeError) as e:
                raise RecordError(f"{path}:{line_no}: {e}") from None
