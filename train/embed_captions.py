"""Encode every caption of a data root with each decoder's own text encoder, into sharded safetensors.

    python train/embed_captions.py --checkpoint train/checkpoints/tiny --data DATA \\
        [--batch 64] [--decoders sd,zeroscope,audioldm] [--shard-size 1024] [--dtype float32] [--device cpu]

Reads DATA/records/*.jsonl, writes DATA/embeddings/<decoder>/ (train/data/embeddings.py describes the
layout). Run it again after an interruption: finished shards are kept, and the result is the same as
an uninterrupted run's. Bad input prints one `error: ...` line and exits with status 2.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: the repository root first, not train/ (its train.py shadows the package)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from runtime.cli import make_parser
from train import checkpoint as ckpt
from train.data.embeddings import DTYPES, EmbeddingError, Plan, plan_shards, precompute, read_captions, tree_digest
from train.data.records import RecordError
from train.decoders import TEXT_PARTS, encode_captions, load_text_encoder


def _sections(config: dict, names: list[str] | None) -> dict[str, dict]:
    """Decoder name → its config section, in the order asked for."""
    known = {section["name"]: section for section in config["decoders"].values()}
    names = names or list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown decoder {unknown[0]!r}; this checkpoint has {', '.join(known)}")
    return {n: known[n] for n in names}


def embed_captions(
    checkpoint: Path,
    data: Path,
    decoders: list[str] | None = None,
    batch: int = 64,
    shard_size: int = 1024,
    dtype: str = "float32",
    device: str = "cpu",
    on_shard: Callable[[str], None] | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Encode the captions for each decoder; returns the number of shards encoded per decoder
    (0 when everything was already there)."""
    if batch < 1:
        raise ValueError(f"--batch must be at least 1, got {batch}")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    config = ckpt.read_config(Path(checkpoint))
    sections = _sections(config, decoders)
    captions = read_captions(Path(data))
    done = {}
    for name, section in sections.items():
        folder = Path(checkpoint) / "decoders" / name
        encoder, tokenizer = load_text_encoder(folder, section)
        encoder.to(device)
        digest = tree_digest([folder / part for part in TEXT_PARTS])
        plan: Plan = plan_shards(Path(data), name, captions, shard_size, digest, dtype)
        shape = (section["embed_tokens"], section["embed_dim"])
        encode = functools.partial(encode_captions, encoder, tokenizer, section=section)
        done[name] = precompute(plan, encode, shape, batch, dtype, on_shard, progress)
    return done


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--decoders", default=None, help="comma-separated decoder names (default: all)")
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    names = [n.strip() for n in args.decoders.split(",") if n.strip()] if args.decoders else None
    try:
        done = embed_captions(args.checkpoint, args.data, names, args.batch, args.shard_size, args.dtype, args.device)
    except (ckpt.CheckpointError, EmbeddingError, RecordError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for name, n in done.items():
        print(f"{name}: {n} shard(s) encoded, embeddings in {args.data / 'embeddings' / name}")


if __name__ == "__main__":
    main()
