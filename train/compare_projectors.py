"""The three output projector modes trained from one common start on the synthetic world, and compared.

    python train/compare_projectors.py [--from train/checkpoints/tiny] [--work runs/projectors] \\
        [--stages train/configs/recipe] [--steps STAGE2 STAGE3] [--modes transformer linear qformer] \\
        [--seed 0] [--samples N]

No stage-1 checkpoint is kept, so the common start is derived from `--from` (the embedded checkpoint),
the same way for every mode: its ImageBind, LLM base weights, input projection and decoders as they
are; LoRA reset to the identity (B = 0, as peft starts it); the signal-token rows of the embedding and
of lm_head drawn afresh (normal, std 0.02, seeded); every output projector built afresh in the mode
(seeded). That is what stage 1 leaves: only stages 2 and 3 differ between the modes.

Each mode then trains stages 2 and 3 (STAGES/stage_{2,3}.yaml; by default train/configs/recipe/,
the whole recipe's stages; train/configs/compare/ holds shorter ones), each stopped after its
--steps optimizer steps when given (the whole stage when not), into
WORK/<mode>/, and is evaluated on the world's held-out split by train/evaluate.py's scoring with
the PyTorch reference pipeline. A mode already trained (WORK/<mode>/train.json) is not trained again,
nor one already scored at the same --samples and --seed (WORK/<mode>/measure.json).
`--from` itself is scored the same way, for what the whole recipe reaches. Writes
WORK/compare.json and prints the Markdown table (docs/projectors.md).
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

import numpy as np
import torch

from benchmarks.machine import provenance
from runtime.cli import make_parser
from train import synthetic
from train import train as stage_runner
from train.components import ProjectorWithSignalEmbeds
from train.embed_captions import embed_captions
from train.evaluate import evaluate, summarise
from train.judges import DEFAULT_JUDGES, load_judges
from train.model import NextGPT, load_checkpoint, save_checkpoint
from train.projectors import MODES, build_projectors
from train.reference import ReferencePipeline
from train.reproduce import CONFIGS, _final, reset_adapter

TEXT_TO = ("text_to_image", "text_to_audio", "text_to_video")
SIGNAL_ROW_STD = 0.02  # LLaMA's initializer_range: how make_tiny draws every row
LATENCY_RUNS = 50


def reset_signal_rows(model: NextGPT, seed: int) -> None:
    ids = torch.tensor([i for ids in model.config["tokens"]["signal_ids"].values() for i in ids])
    generator = torch.Generator().manual_seed(seed)
    llm = model.llm.get_base_model()
    for weight in (llm.get_input_embeddings().weight, llm.get_output_embeddings().weight):
        rows = torch.randn(len(ids), weight.shape[1], generator=generator) * SIGNAL_ROW_STD
        weight.data[ids] = rows.to(weight.dtype)


def rebuild_projectors(model: NextGPT, modes: dict[str, str], seed: int) -> None:
    """Every output projector drawn afresh (seeded) in the mode `modes` names for its modality."""
    model.config["projector"]["modes"] = dict(modes)
    torch.manual_seed(seed)
    model.projectors = build_projectors(model.config)


def common_start(source: Path, mode: str, out: Path, seed: int) -> None:
    """`source` as stage 1 would leave it, its output projectors in `mode` (module docstring)."""
    model = load_checkpoint(source)
    rebuild_projectors(model, {m: mode for m in model.config["decoders"]}, seed)
    reset_adapter(model)
    reset_signal_rows(model, seed)
    save_checkpoint(model, out)


def train_mode(source: Path, mode: str, work: Path, stages: Path, steps: list[int | None], seed: int, world: Path) -> dict[str, Any]:
    shutil.rmtree(work, ignore_errors=True)
    common_start(source, mode, work / "start", seed)
    checkpoint, seconds, taken = work / "start", {}, []
    for stage, max_steps in zip((2, 3), steps):
        started = time.perf_counter()
        run = work / f"stage_{stage}"
        taken.append(len(stage_runner.run(stages / f"stage_{stage}.yaml", checkpoint, run, world, max_steps)))
        seconds[f"stage_{stage}"] = time.perf_counter() - started
        checkpoint = run / "checkpoint"
    result = {"mode": mode, "checkpoint": str(checkpoint), "seconds": seconds, "steps": taken}
    (work / "train.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


@torch.no_grad()
def projector_latency_ms(model: NextGPT, modality: str) -> float:
    """Median wall time of one batch-1 projector call in PyTorch eager."""
    projector = ProjectorWithSignalEmbeds(model, modality).eval()
    hidden = torch.randn(1, len(model.config["tokens"]["signal_ids"][modality]), model.config["llm"]["hidden_size"])
    projector(hidden)
    times = []
    for _ in range(LATENCY_RUNS):
        started = time.perf_counter()
        projector(hidden)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def measure(checkpoint: Path, world: Path, samples: int | None, seed: int) -> dict[str, Any]:
    model = load_checkpoint(checkpoint)
    judges = load_judges(DEFAULT_JUDGES)
    rates = {"audio": float(model.config["decoders"]["audio"]["sample_rate"])}
    verdicts = evaluate(ReferencePipeline(model, progress=False), world, judges, rates, samples, seed)
    tasks = summarise(verdicts, judges)
    return {
        "scores": {t: {k: v for k, v in tasks[t].items() if k != "samples"} for t in tasks},
        "parameters": {m: sum(p.numel() for p in model.projectors[m].parameters()) for m in model.projectors},
    }


def latencies(checkpoint: Path) -> dict[str, float]:
    """Measured for every mode in one run, one after the other, so that they share the machine's load."""
    model = load_checkpoint(checkpoint)
    return {m: projector_latency_ms(model, m) for m in model.projectors}


def measured(work: Path, checkpoint: Path, world: Path, samples: int | None, seed: int) -> dict[str, Any]:
    """`measure`, kept in WORK/<mode>/measure.json for the same samples and seed: a mode already
    scored is not scored again."""
    path = work / "measure.json"
    work.mkdir(parents=True, exist_ok=True)
    key = {"samples": samples, "seed": seed}
    if path.is_file() and json.loads(path.read_text())["for"] == key:
        return json.loads(path.read_text())["result"]
    result = measure(checkpoint, world, samples, seed)
    path.write_text(json.dumps({"for": key, "result": result}, indent=2) + "\n")
    return result


def final_losses(log: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return _final(rows)


def _score(entry: dict[str, Any]) -> str:
    """Strict accuracy, the lenient one (every scored attribute of the task) in brackets."""
    if entry["accuracy"] is None:
        return "untrusted judge"
    return f"{entry['accuracy']:.0%} ({entry['lenient_accuracy']:.0%})"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| mode | text→image | text→audio | text→video | stage-2 cap loss (image / audio / video) "
        "| projector parameters (image / audio / video) | projector latency, ms (image / audio / video) "
        "| stages 2+3 training |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = ("image", "audio", "video")
    for row in rows:
        cells = [_score(row["scores"][t]) for t in TEXT_TO]
        cap = " / ".join(f"{row['stage_2_losses'][f'cap_{m}']:.3f}" for m in order)
        params = " / ".join(f"{row['parameters'][m]:,}" for m in order)
        latency = " / ".join(f"{row['latency_ms'][m]:.2f}" for m in order)
        minutes = sum(row["seconds"].values()) / 60
        lines.append(f"| {row['mode']} | {' | '.join(cells)} | {cap} | {params} | {latency} | {minutes:.1f} min |")
    return "\n".join(lines)


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--from", dest="source", type=Path, default=Path("train/checkpoints/tiny"))
    parser.add_argument("--work", type=Path, default=Path("runs/projectors"))
    parser.add_argument("--stages", type=Path, default=CONFIGS / "recipe", help="folder of stage_2.yaml and stage_3.yaml")
    parser.add_argument("--steps", type=int, nargs=2, default=[None, None], metavar=("STAGE2", "STAGE3"), help="optimizer steps of each stage (default: the whole stage)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, help="held-out samples per task (all when not given)")
    args = parser.parse_args()
    world = synthetic.ensure_world(args.seed)
    embed_captions(args.source, world)  # every mode's stages 2-3 read the start's decoders' embeddings
    trained = []
    for mode in args.modes:  # all trained before any is scored: scoring may be rerun alone
        done = args.work / mode / "train.json"
        trained.append(json.loads(done.read_text()) if done.is_file() else train_mode(args.source, mode, args.work / mode, args.stages, args.steps, args.seed, world))
    rows = [{**run, **measured(args.work / run["mode"], Path(run["checkpoint"]), world, args.samples, args.seed)} for run in trained]
    for row in rows:
        row["latency_ms"] = latencies(Path(row["checkpoint"]))
        row["stage_2_losses"] = final_losses(args.work / row["mode"] / "stage_2" / "log.jsonl")
    # what the whole recipe reached: the checkpoint the start was derived from, scored the same way
    source = measured(args.work / "source", args.source, world, args.samples, args.seed)
    result = {"provenance": provenance(args.source), "stages": str(args.stages), "modes": rows, "source": source}
    (args.work / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    print(f"\n{args.source}: " + ", ".join(f"{t} {_score(source['scores'][t])}" for t in TEXT_TO))


if __name__ == "__main__":
    main()
