"""Small data roots for the training tests: the synthetic world at a few records per kind, with the
caption embeddings of the tiny checkpoint's own decoder text encoders."""
from __future__ import annotations

from pathlib import Path

from train.embed_captions import embed_captions
from train.presets import WORLD
from train.synthetic import write_world

# the world with one record per rendered medium, each a plain render (tests/test_world_variation.py tests
# the varied ones): without the recipe's extra requests and descriptions
# of every sound (eight more records per sound), which the tests' record counts leave out
PLAIN_WORLD = dict(WORLD, every_request=[], every_description=[], varied=None)
# per stage, train records whose task keeps exactly one batch of 4, plus a held-out record that must be ignored
STAGE_COUNTS = {
    1: {"image": 2, "audio": 1, "video": 1},
    2: {"text_to_image": 2, "text_to_audio": 1, "text_to_video": 1},
    3: {"image": 1, "text_to_image": 1, "text_to_audio": 1, "text_to_video": 1},
}


def small_world(root: Path, stage: int, checkpoint: Path, seed: int = 0) -> Path:
    counts = {"train": STAGE_COUNTS[stage], "heldout": {"image": 1}}
    write_world(root, seed, counts, PLAIN_WORLD, progress=False)
    embed_captions(checkpoint, root, progress=False)
    return root
