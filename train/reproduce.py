"""Reproduce the embedded checkpoint from nothing: random weights, stage 0, then NExT-GPT's stages 1 to 3.

    python train/reproduce.py [--out train/checkpoints/tiny] [--work runs/reproduce] [--seed 0] [--force]

1. `make_tiny`: every architecture with seeded random weights and the world's tokenizers;
2. stage 0 (train/pretrain, train/configs/stage_0.yaml): ImageBind, the LLM, the decoders' text
   encoders, VAEs, vocoder and UNets pre-trained on the synthetic world's train split;
3. the synthetic world and its conversations (train/conversations.py) written to WORK/world, and
   their captions embedded by the stage-0 text encoders;
4. stages 1, 2 and 3 (train/train.py with train/configs/recipe/stage_{1,2,3}.yaml: the stage configs,
   trained longer) on it;
5. the last checkpoint copied to OUT, and a closing table (stage, time, final losses) printed and
   written to WORK/reproduce.json.

Everything is seeded; on 2 CPU cores it takes 50 to 60 minutes (docs/training.md).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root first, not train/ (its train.py shadows the package)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import json
import shutil
import time
from typing import Any

import torch

from runtime.cli import add_force, make_parser, refuse_non_empty
from train import train as stage_runner
from train.conversations import write_conversations
from train.embed_captions import embed_captions
from train.make_tiny import make_tiny
from train.model import NextGPT, save_checkpoint
from train.pretrain import load_stage0_config, pretrain
from train.synthetic import Counts, write_world

CONFIGS = Path(__file__).resolve().parent / "configs"
STAGES = (1, 2, 3)


def reset_adapter(model: NextGPT) -> None:
    """LoRA as peft starts it, B at zero: the adapter is the identity until stage 3 trains it."""
    for name, param in model.llm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.zeros_(param)


def _final(rows: list[dict[str, float]]) -> dict[str, float]:
    """Each loss term's mean over the last 10% of optimizer steps (one batch is noisy, and a batch
    without a modality logs its cap loss as 0)."""
    tail = rows[-max(1, len(rows) // 10) :]
    keys = [k for k in (rows[-1] if rows else {}) if k not in ("step", "lr", "samples_per_s")]
    return {k: sum(r[k] for r in tail) / len(tail) for k in keys}


def reproduce(
    out: Path,
    work: Path,
    seed: int = 0,
    stage0: dict[str, Any] | None = None,
    max_steps: int | None = None,
    counts: Counts | None = None,
    progress: bool = True,
    conversation_counts: Counts | None = None,
) -> list[dict[str, Any]]:
    """The whole recipe; returns the closing table's rows. `stage0` replaces the stage-0 settings,
    `max_steps` caps every stage-1-3 run, `counts` and `conversation_counts` the world's records and
    conversations (for quick checks)."""
    out, work = Path(out), Path(work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    model = make_tiny(work / "init", seed)
    reset_adapter(model)
    rows.append({"stage": "init", "seconds": time.perf_counter() - started, "losses": {}})
    settings = stage0 or load_stage0_config(CONFIGS / "stage_0.yaml")
    torch.manual_seed(settings["seed"])
    rows += pretrain(model, settings, progress)
    checkpoint = work / "stage_0"
    save_checkpoint(model, checkpoint)
    del model
    started = time.perf_counter()
    world = write_world(work / "world", seed, counts, progress=progress)
    write_conversations(world, seed, conversation_counts, progress=progress)
    embed_captions(checkpoint, world, progress=progress)
    rows.append({"stage": "world", "seconds": time.perf_counter() - started, "losses": {}})
    for stage in STAGES:
        started = time.perf_counter()
        run = work / f"stage_{stage}"
        logged = stage_runner.run(CONFIGS / "recipe" / f"stage_{stage}.yaml", checkpoint, run, world, max_steps, progress=progress)
        rows.append({"stage": str(stage), "seconds": time.perf_counter() - started, "losses": _final(logged)})
        checkpoint = run / "checkpoint"
    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(checkpoint, staging)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    from benchmarks.machine import provenance

    (work / "reproduce.json").write_text(json.dumps({"provenance": provenance(out), "seed": seed, "rows": rows}, indent=2) + "\n")
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| stage | time | final losses |", "|---|---:|---|"]
    for row in rows:
        losses = ", ".join(f"{k} {v:.4f}" for k, v in row["losses"].items())
        lines.append(f"| {row['stage']} | {row['seconds'] / 60:.1f} min | {losses} |")
    total = sum(r["seconds"] for r in rows)
    lines.append(f"| total | {total / 60:.1f} min | |")
    return "\n".join(lines)


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--out", type=Path, default=Path("train/checkpoints/tiny"))
    parser.add_argument("--work", type=Path, default=Path("runs/reproduce"), help="intermediate checkpoints, world, logs (emptied first)")
    parser.add_argument("--seed", type=int, default=0)
    add_force(parser, "replace --out and empty --work even if they hold files")
    args = parser.parse_args()
    for folder in (args.out, args.work):
        refuse_non_empty(folder, args.force)
    rows = reproduce(args.out, args.work, args.seed)
    print(table(rows))


if __name__ == "__main__":
    main()
