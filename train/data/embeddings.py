"""Caption embeddings: every caption encoded once by each decoder's own text encoder.

Layout under a data root, one folder per decoder (the names of the checkpoint config: sd, zeroscope,
audioldm):

```
embeddings/<decoder>/index.json               decoder, shape, dtype, shard size, the shards and their ids
embeddings/<decoder>/shard-00000.safetensors  {record id: (embed_tokens, embed_dim) tensor}, <= shard size ids
```
SD and ZeroScope hold the CLIP `last_hidden_state` (77×768, 77×1024 at full size), AudioLDM the
L2-normalised CLAP vector as one token (1×512): exactly what the pipeline makes of the caption as a
prompt, and what an output projector learns to produce.

The captions are sorted by record id and cut into shards of a fixed size, each encoded in the same
batches every time and written atomically, with a digest of the encoder, ids and captions in its
metadata. A run therefore resumes by skipping the shards already on disk whose digest matches, and
an interrupted run ends with the same bytes as an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from train.data.records import RecordError, read_records

EMBEDDINGS = "embeddings"
INDEX = "index.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class EmbeddingError(ValueError):
    """Missing or inconsistent caption embeddings; the message names the folder or record."""


def embeddings_dir(root: Path, decoder: str) -> Path:
    return Path(root) / EMBEDDINGS / decoder


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


class CaptionEmbeddings:
    """Read access to one decoder's caption embeddings, keyed by record id (shards opened lazily, mmap)."""

    def __init__(self, root: Path, decoder: str) -> None:
        self.folder = embeddings_dir(root, decoder)
        path = self.folder / INDEX
        if not path.is_file():
            raise EmbeddingError(f"{path}: missing; run train/embed_captions.py on this data root first")
        self.index = json.loads(path.read_text())
        self.decoder = decoder
        self._where = {rid: shard["file"] for shard in self.index["shards"] for rid in shard["ids"]}
        self._open: dict[str, Any] = {}

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._where

    def __len__(self) -> int:
        return len(self._where)

    def ids(self) -> list[str]:
        return list(self._where)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.index["shape"])

    def __getitem__(self, record_id: str) -> torch.Tensor:
        if record_id not in self._where:
            raise KeyError(f"{self.folder}: no caption embedding for record {record_id!r}")
        file = self._where[record_id]
        if file not in self._open:
            self._open[file] = safe_open(str(self.folder / file), framework="pt")
        return self._open[file].get_tensor(record_id)


@dataclass(frozen=True)
class Caption:
    id: str
    text: str


def read_captions(root: Path) -> list[Caption]:
    """Every record with a caption under root/records/*.jsonl, sorted by id; a duplicate id is an error."""
    files = sorted((Path(root) / "records").glob("*.jsonl"))
    if not files:
        raise RecordError(f"{Path(root) / 'records'}: no *.jsonl record files")
    seen: dict[str, Path] = {}
    captions = []
    for path in files:
        for record in read_records(path):
            if record.id in seen:
                raise RecordError(f"{path}: record id {record.id!r} also in {seen[record.id]}")
            seen[record.id] = path
            if record.caption is not None:
                captions.append(Caption(record.id, record.caption))
    return sorted(captions, key=lambda c: c.id)


def _digest(encoder_digest: str, captions: list[Caption], dtype: str) -> str:
    h = hashlib.sha256(f"{encoder_digest}\0{dtype}".encode())
    for c in captions:
        h.update(f"\0{c.id}\0{c.text}".encode())
    return h.hexdigest()


def _shard_is_done(path: Path, digest: str) -> bool:
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("digest") == digest
    except Exception:  # a damaged shard (safetensors raises its own types) is simply encoded again
        return False


def _batches(items: list[Caption], size: int) -> Iterator[list[Caption]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


Encode = Callable[[list[str]], torch.Tensor]  # captions → (batch, embed_tokens, embed_dim)


@dataclass(frozen=True)
class Plan:
    """What one decoder's precompute writes: its shards, each with its captions and digest."""

    folder: Path
    shards: list[tuple[str, list[Caption], str]]


def plan_shards(
    root: Path, decoder: str, captions: list[Caption], shard_size: int, encoder_digest: str, dtype: str
) -> Plan:
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1, got {shard_size}")
    chunks = [captions[i : i + shard_size] for i in range(0, len(captions), shard_size)]
    shards = [(shard_name(i), chunk, _digest(encoder_digest, chunk, dtype)) for i, chunk in enumerate(chunks)]
    return Plan(embeddings_dir(root, decoder), shards)


def precompute(
    plan: Plan,
    encode: Encode,
    shape: tuple[int, int],
    batch: int,
    dtype: str = "float32",
    on_shard: Callable[[str], None] | None = None,
    progress: bool = True,
) -> int:
    """Encode the plan's missing shards, then write the index; returns how many shards were encoded.

    `on_shard` is called after each shard is on disk (tests interrupt a run there).
    """
    plan.folder.mkdir(parents=True, exist_ok=True)
    todo = [s for s in plan.shards if not _shard_is_done(plan.folder / s[0], s[2])]
    total = sum(len(s[1]) for s in todo)
    bar = tqdm(total=total, desc=f"captions → {plan.folder.name}", unit="caption", disable=not progress)
    for name, captions, digest in todo:
        tensors: dict[str, torch.Tensor] = {}
        for chunk in _batches(captions, batch):
            out = encode([c.text for c in chunk]).to(DTYPES[dtype])
            if tuple(out.shape[1:]) != tuple(shape):
                got = tuple(out.shape[1:])
                raise EmbeddingError(f"{plan.folder.name}: the encoder gave {got}, expected {tuple(shape)}")
            tensors.update({c.id: out[i].contiguous() for i, c in enumerate(chunk)})
            bar.update(len(chunk))
        tmp = plan.folder / f"{name}.tmp"
        save_file(tensors, str(tmp), metadata={"digest": digest})
        tmp.replace(plan.folder / name)
        if on_shard:
            on_shard(name)
    bar.close()
    _write_index(plan, shape, dtype)
    return len(todo)


def _write_index(plan: Plan, shape: tuple[int, int], dtype: str) -> None:
    wanted = {name for name, _, _ in plan.shards}
    for stale in plan.folder.glob("shard-*.safetensors"):
        if stale.name not in wanted:  # left from a run over more captions
            stale.unlink()
    index = {
        "decoder": plan.folder.name,
        "shape": list(shape),
        "dtype": dtype,
        "count": sum(len(c) for _, c, _ in plan.shards),
        "shards": [{"file": name, "digest": digest, "ids": [c.id for c in caps]} for name, caps, digest in plan.shards],
    }
    tmp = plan.folder / f"{INDEX}.tmp"
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    tmp.replace(plan.folder / INDEX)


def tree_digest(paths: list[Path]) -> str:
    """sha256 over the files under `paths` (names and bytes): which encoder and tokenizer made a shard."""
    h = hashlib.sha256()
    for base in paths:
        for f in sorted(p for p in Path(base).rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(base.parent).as_posix()}\0".encode())
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()
