"""Small data roots for the training tests: the synthetic world at a few records per kind."""
from __future__ import annotations

from pathlib import Path

import torch

from train.data.records import Record, read_records
from train.synthetic import RECORDS_FILE, write_world

# per stage, train records whose task keeps exactly one batch of 4, plus a held-out record that must be ignored
STAGE_COUNTS = {
    1: {"image": 2, "audio": 1, "video": 1},
    2: {"text_to_image": 2, "text_to_audio": 1, "text_to_video": 1},
    3: {"image": 1, "text_to_image": 1, "text_to_audio": 1, "text_to_video": 1},
}


def small_world(root: Path, stage: int, seed: int = 0) -> list[Record]:
    write_world(root, seed, {"train": STAGE_COUNTS[stage], "heldout": {"image": 1}}, progress=False)
    return list(read_records(root / RECORDS_FILE))


def fake_embeddings(records: list[Record], config: dict, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Fixed random caption targets per decoder, shaped (embed_tokens, embed_dim) as the real ones."""
    g = torch.Generator().manual_seed(seed)
    tables: dict[str, dict[str, torch.Tensor]] = {}
    for modality, section in config["decoders"].items():
        shape = (section["embed_tokens"], section["embed_dim"])
        tables[modality] = {r.id: torch.randn(shape, generator=g) for r in records}
    return tables
