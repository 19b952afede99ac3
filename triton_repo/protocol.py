"""The any2any request and response as Triton tensors, declared once.

The generated configs declare these tensors, the Python models decode them, the client encodes
them. A `runtime.request.Request` travels as one tensor per field (`PROMPT`, `SEED`, `SESSION`,
...: the field's name in capitals; all optional, an absent one is the runtime's default).

One turn (protocol 1, still served): `PROMPT` plus one tensor per input file, `IMAGE_FILE` etc.,
two BYTES elements (the file's name, so that an error names it and a video's format is known by
its suffix; then the raw file bytes). A conversation (protocol 2): `CONVERSATION`, the JSON of
`runtime.conversation.Conversation.to_dict` whose media paths are bare file names, plus
`MEDIA_FILES`, name and bytes of every user medium of every turn in conversation order (name1,
bytes1, name2, bytes2, ...); an assistant turn's media are history and travel as names only.

The answer is `TEXT`, `TOKEN_IDS`, `PROMPT_TOKENS` (the prompt's length), `REUSED_TOKENS` (how
many of them the session's KV cache held) and one tensor per output modality, empty (a zero-size
axis) when the answer has no such media. The streaming model also sends `TEXT` pieces and
`PROGRESS` steps as they come. `PROTOCOL` is the
version the repository's ensemble records in its config (`protocol`): a client that sends a
conversation checks it first, so that an older deployment is named instead of misread.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from runtime.conversation import Conversation, ConversationError, Medium, Turn
from runtime.inputs import INPUT_MODALITIES
from runtime.limits import LimitError, Limits
from runtime.request import OUTPUT_MODALITIES, Request, Response

# 3: PROMPT_TOKENS in the answer; 2: conversations (CONVERSATION, MEDIA_FILES, SESSION, REUSED_TOKENS); 1: one turn
PROTOCOL = 3


ENSEMBLE, STREAM = "any2any", "any2any_stream"  # the models a client calls


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # a numpy dtype name; "object" is Triton's BYTES
    dims: tuple[int, ...]  # -1: any size
    optional: bool = False


TRITON_DTYPES = {"object": "TYPE_STRING", "float32": "TYPE_FP32", "float64": "TYPE_FP64", "int64": "TYPE_INT64", "uint8": "TYPE_UINT8"}
CLIENT_DTYPES = {"TYPE_STRING": "BYTES", "TYPE_FP32": "FP32", "TYPE_FP64": "FP64", "TYPE_INT64": "INT64", "TYPE_UINT8": "UINT8"}

# Request fields. Floats travel as FP64 so that a Python float arrives unchanged: the same
# request then gives the same answer over gRPC as in process.
PARAMS = (
    Tensor("PROMPT", "object", (1,), optional=True),
    Tensor("CONVERSATION", "object", (1,), optional=True),
    Tensor("SESSION", "object", (1,), optional=True),
    Tensor("OUTPUT", "object", (1,), optional=True),
    Tensor("SEED", "int64", (1,), optional=True),
    Tensor("MAX_NEW_TOKENS", "int64", (1,), optional=True),
    Tensor("TEMPERATURE", "float64", (1,), optional=True),
    Tensor("TOP_P", "float64", (1,), optional=True),
    Tensor("STEPS", "int64", (1,), optional=True),
    Tensor("GUIDANCE", "float64", (1,), optional=True),
)
MEDIA_FILES = "MEDIA_FILES"
FILES = (
    *(Tensor(f"{m.upper()}_FILE", "object", (2,), optional=True) for m in INPUT_MODALITIES),
    Tensor(MEDIA_FILES, "object", (-1,), optional=True),
)
MEDIA_SHAPES = {"image": (-1, -1, 3), "video": (-1, -1, -1, 3), "audio": (-1,)}
MEDIA_DTYPES = {"image": "uint8", "video": "uint8", "audio": "float32"}
MEDIA = tuple(Tensor(m.upper(), MEDIA_DTYPES[m], MEDIA_SHAPES[m]) for m in OUTPUT_MODALITIES)
COUNTS = ("PROMPT_TOKENS", "REUSED_TOKENS")  # one int64 each, named as `Response` names them in lower case
TEXT = (Tensor("TEXT", "object", (1,)), Tensor("TOKEN_IDS", "int64", (-1,)), *(Tensor(n, "int64", (1,)) for n in COUNTS))
ANSWER = (*TEXT, *MEDIA)
# Streaming only: denoising progress, (modality, steps done, steps in all) as `MODALITY` + `PROGRESS`.
PROGRESS = (Tensor("MODALITY", "object", (1,)), Tensor("PROGRESS", "int64", (2,)))

# Between the ensemble's steps (shapes from the manifest; a zero-size first axis means none):
# preprocess -> CLIPS_<M> per input modality (a row per medium) and MEDIA_ORDER (the media's
# modalities in prompt order) -> encode -> MEDIA_TOKEN (a row per medium, in that order) -> llm ->
# HIDDEN_<M> per output modality (the states at its signal tokens) -> media.
MEDIA_TOKEN = "MEDIA_TOKEN"
MEDIA_ORDER = "MEDIA_ORDER"


def clips_name(modality: str) -> str:
    return f"CLIPS_{modality.upper()}"


def hidden_name(modality: str) -> str:
    return f"HIDDEN_{modality.upper()}"


def engine_dims(shape: list[int | str]) -> list[int]:
    """Triton dims of an engine tensor whose first axis is the batch: the other axes, dynamic ones
    as -1. Triton refuses empty dims, so a tensor that is only the batch axis (one scalar per
    sample, like a UNet's timestep) is declared [1] and reshaped to [] for the model: a caller
    sends it as (batch, 1)."""
    return [d if isinstance(d, int) else -1 for d in shape[1:]] or [1]


Getter = Callable[[str], np.ndarray | None]  # a request tensor by name, None when absent


def encode_request(req: Request) -> dict[str, np.ndarray]:
    """The tensors of a request: its set fields and its input files (name and bytes)."""
    out = {}
    for t in PARAMS:
        value = getattr(req, t.name.lower())
        if value == "":  # an empty prompt is no prompt; a zero (steps, temperature, seed) is a value
            value = None
        if isinstance(value, Conversation):
            value = json.dumps(_wire(value))
        if value is not None:
            out[t.name] = np.array([value.encode() if isinstance(value, str) else value], dtype=t.dtype)
    for t in FILES[:-1]:
        path = req.files.get(t.name.removesuffix("_FILE").lower())
        if path is not None:
            out[t.name] = np.array([Path(path).name.encode(), _read_bytes(Path(path))], dtype=object)
    if req.conversation is not None and req.conversation.inputs():
        media = req.conversation.inputs()
        out[MEDIA_FILES] = np.array([item for m in media for item in (m.path.name.encode(), _read_bytes(m.path))], dtype=object)
    return out


def _wire(conversation: Conversation) -> dict[str, Any]:
    """The conversation's JSON with bare file names: the files travel in MEDIA_FILES."""
    bare = Conversation(tuple(replace(t, media=tuple(Medium(m.modality, Path(m.path.name)) for m in t.media)) for t in conversation.turns))
    return bare.to_dict()


def _read_bytes(path: Path) -> bytes:
    """A missing or unreadable file is the same MediaError the runtime raises, before anything is sent."""
    from runtime.media import MediaError

    try:
        return path.read_bytes()
    except OSError as e:
        raise MediaError(path, e.strerror or e) from None


def decode_request(get: Getter, files: dict[str, Path] | None = None) -> Request:
    """The Request a model's tensors describe; the input files are what the caller saved them as
    (`save_files`). A model that reads no files passes none: a conversation's user media then keep
    their bare names (the prompt needs only their number and places)."""
    fields: dict[str, Any] = {}
    for t in PARAMS:
        value = get(t.name)
        if value is None:
            continue
        item = value.reshape(-1)[0]
        if t.dtype != "object":
            fields[t.name.lower()] = item.item()
            continue
        try:
            fields[t.name.lower()] = item.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{t.name} is not UTF-8 text: {e}") from None
    if "conversation" in fields:
        fields["conversation"] = _conversation(fields["conversation"], files)
        files = {}
    return Request(files={m: p for m, p in (files or {}).items() if m in INPUT_MODALITIES}, **fields)


def _conversation(text: str, files: dict[str, Path] | None) -> Conversation:
    """CONVERSATION's JSON with its k-th user medium at the path MEDIA_FILES' k-th file was saved as."""
    try:
        conversation = Conversation.from_dict(json.loads(text))
    except json.JSONDecodeError as e:
        raise ConversationError(f"CONVERSATION is not JSON: {e}") from None
    if files is None:
        return conversation
    saved = [files[f"media/{k}"] for k in range(sum(key.startswith("media/") for key in files))]
    named = len(conversation.inputs())
    if named != len(saved):
        raise ConversationError(f"the conversation names {named} input media but {MEDIA_FILES} holds {len(saved)} files")
    paths = iter(saved)
    return Conversation(tuple(
        replace(t, media=tuple(Medium(m.modality, next(paths)) for m in t.media)) if t.role == "user" else t
        for t in conversation.turns
    ))


def media_order(get: Getter) -> list[str]:
    """The modalities of the request's input media in prompt order, as `preprocess` sent them in
    MEDIA_ORDER (the steps after it do not see the files)."""
    order = get(MEDIA_ORDER)
    return [] if order is None else [m.decode() for m in order.reshape(-1)]


def dialogue(get: Getter) -> Conversation:
    """The request's conversation for a step that does not see the files: a one-turn request's
    media are known from MEDIA_ORDER (their number and places are all the prompt needs)."""
    req = decode_request(get)
    if req.conversation is not None:
        return req.conversation
    return Conversation((Turn.user(req.prompt, [Medium(m, Path(m)) for m in media_order(get)]),))


def has_files(get: Getter) -> bool:
    return any(get(t.name) is not None for t in FILES)


def save_files(get: Getter, folder: Path, limits: Limits) -> dict[str, Path]:
    """Each input file written to `folder` under its own name, as the runtime reads files from disk:
    keyed by modality (one turn's files) or `media/K` (a conversation's K-th medium); names, sizes
    and the number of media are checked against `limits` before anything is written."""
    received = []
    for t in FILES[:-1]:
        value = get(t.name)
        if value is not None:
            received.append((t.name.removesuffix("_FILE").lower(), *value.reshape(-1)))
    media = get(MEDIA_FILES)
    if media is not None:
        items = media.reshape(-1)
        if len(items) % 2:
            raise ValueError(f"{MEDIA_FILES} holds name, bytes pairs: got {len(items)} elements")
        if len(items) // 2 > limits.max_media:
            raise LimitError(f"{len(items) // 2} input media exceed the limit max_media={limits.max_media}")
        received += [(f"media/{k}", items[2 * k], items[2 * k + 1]) for k in range(len(items) // 2)]
    checked = []
    for key, raw_name, data in received:
        # Only the last component of the client's name: nothing is written outside `folder`.
        name = Path(raw_name.decode("utf-8", "replace")).name
        limits.check_file(name, len(data))
        checked.append((key, name, data))
    files: dict[str, Path] = {}
    for key, name, data in checked:
        path = folder / key / (key.replace("/", "-") if name in ("", ".", "..") else name)
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        files[key] = path
    return files


def encode_answer(resp: Response) -> dict[str, np.ndarray]:
    """The answer's tensors; a modality the answer lacks is left out (the model sends it empty)."""
    out = {
        "TEXT": np.array([resp.text.encode("utf-8")], dtype=object),
        "TOKEN_IDS": np.asarray(resp.token_ids, np.int64),
        **{n: np.array([getattr(resp, n.lower())], np.int64) for n in COUNTS},
    }
    return {**out, **{m.upper(): np.ascontiguousarray(value) for m, value in resp.media.items()}}


def decode_answer(get: Getter) -> Response:
    """Text, token ids, token counts and the media present (an empty media tensor means none of that modality)."""
    media = {t.name.lower(): value for t in MEDIA if (value := get(t.name)) is not None and value.size}
    counts = {n.lower(): int(value[0]) for n in COUNTS if (value := get(n)) is not None and value.size}
    return Response(get("TEXT")[0].decode("utf-8"), get("TOKEN_IDS").tolist(), media, **counts)
