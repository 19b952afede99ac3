"""Train one NExT-GPT stage and write a checkpoint in which only the trained parts differ.

    python train/train.py --config train/configs/stage_N.yaml --checkpoint IN --out OUT \\
        [--data DIR] [--max-steps K] [--resume] [--deepspeed train/configs/deepspeed_zero2.json]
    python -m torch.distributed.run --nproc_per_node N train/train.py ...   # data-parallel

OUT gets `checkpoint/` (the project's format: untouched parts copied byte for byte from IN),
`state/` (the resumable save: trained weights, optimizer, scheduler, RNG, position), `log.jsonl`
(loss terms, learning rate, samples/s per optimizer step) and `config.json` (the resolved stage
config). HF Accelerate does device placement, DDP (gloo on CPU, NCCL on GPU), DeepSpeed, mixed
precision, gradient accumulation and the resumable state; the loop below is the whole of training.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root, not train/ (whose train.py shadows the package)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import importlib.util
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, set_seed
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import get_scheduler

from runtime.cli import add_force, make_parser, refuse_non_empty
from runtime.media import MediaError
from train import checkpoint as ckpt
from train.batches import RecordDataset, Tokens, collate
from train.data.embeddings import INDEX, CaptionEmbeddings, EmbeddingError, embeddings_dir
from train.data.records import Record, RecordError, read_records
from train.embed_captions import embed_captions
from train.llm import lora_state_dict
from train.model import NextGPT, load_checkpoint
from train.stages import StageModel, merge_signal_rows, set_trainable
from train.conversations import ensure_conversations
from train.synthetic import ensure_world
from train.train_config import ConfigError, load_config

DEEPSPEED_PACKAGE = "deepspeed==0.19.8"
TRAINABLE_FILE = "trainable.safetensors"
PROGRESS_FILE = "progress.json"


class TrainError(RuntimeError):
    """Bad input to a training run; the message is the one line printed."""


def read_data(root: Path) -> list[Record]:
    files = sorted((root / "records").glob("*.jsonl"))
    if not files:
        raise TrainError(f"{root}: no records/*.jsonl (see docs/training.md: a data root)")
    try:
        return [record for path in files for record in read_records(path)]
    except RecordError as e:
        raise TrainError(str(e)) from None


def open_embeddings(root: Path, config: dict[str, Any]) -> dict[str, CaptionEmbeddings]:
    """Each output modality's caption embeddings (DATA/embeddings/<decoder>/), where computed."""
    return {
        modality: CaptionEmbeddings(root, section["name"])
        for modality, section in config["decoders"].items()
        if (embeddings_dir(root, section["name"]) / INDEX).is_file()
    }


def default_data(checkpoint: Path, needs_embeddings: bool, progress: bool) -> Path:
    """The synthetic world at seed 0 and its conversations, generated into its cache on first use
    (train/synthetic.py, train/conversations.py), with the caption embeddings of `checkpoint`'s text encoders (a no-op when they are there already)."""
    root = ensure_world(seed=0, progress=progress)
    ensure_conversations(root, seed=0, progress=progress)
    if needs_embeddings:
        embed_captions(checkpoint, root, progress=progress)
    return root


def make_accelerator(train_config: dict[str, Any], deepspeed: Path | None) -> Accelerator:
    plugin = None
    if deepspeed is not None:
        if importlib.util.find_spec("deepspeed") is None:  # Accelerate would fail later, at prepare
            raise TrainError(f"--deepspeed needs the deepspeed package: pip install {DEEPSPEED_PACKAGE}")
        from accelerate.utils import DeepSpeedPlugin

        plugin = DeepSpeedPlugin(
            hf_ds_config=str(deepspeed),
            gradient_accumulation_steps=train_config["grad_accum"],
            gradient_clipping=train_config["clip_grad_norm"],
        )
    return Accelerator(
        cpu=not torch.cuda.is_available(),  # Accelerate takes a torchrun launch as gloo DDP only when told CPU
        mixed_precision=train_config["mixed_precision"],
        gradient_accumulation_steps=train_config["grad_accum"],
        # the config's batch is the global one, split over processes: the same samples per step for any N
        dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True),
        # a batch may hold no sample for one of the projectors
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        deepspeed_plugin=plugin,
    )


def trainable_state(model: torch.nn.Module) -> dict[str, Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in names}


def register_state_hooks(accelerator: Accelerator) -> None:
    """Resumable saves hold the trained weights only, not the frozen model (13 GB at 7B)."""

    def save_hook(models: list, weights: list, folder: str) -> None:
        for model in models if accelerator.is_main_process else []:
            ckpt.save_state(trainable_state(model), Path(folder) / TRAINABLE_FILE)
        weights.clear()  # Accelerate writes what is left in `weights`: nothing

    def load_hook(models: list, folder: str) -> None:
        state = ckpt.read_part(Path(folder) / TRAINABLE_FILE)
        for model in models:
            ckpt.check_state(trainable_state(model), state, Path(folder) / TRAINABLE_FILE)
            model.load_state_dict(state, strict=False)
        models.clear()  # loaded here; Accelerate must not look for its own model file

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def write_checkpoint(model: NextGPT, source: Path, out: Path, parts: list[str]) -> None:
    """Copy `source` byte for byte, then rewrite the trained parts; staged, then renamed into place."""
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    for part in parts:
        path = ckpt.part_path(staging, part)
        if part == "llm":
            ckpt.save_state(model.base_llm_state(), path)
        elif part == "lora":
            ckpt.save_state(lora_state_dict(model.llm), path)
        else:
            ckpt.save_state(model.module_parts()[part].state_dict(), path)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)


class JsonlLog:
    """One JSON object per optimizer step; TensorBoard too where it is installed."""

    def __init__(self, out: Path) -> None:
        self.path = out / "log.jsonl"
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            self.board = None

    def write(self, row: dict[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.board is not None:
            for key, value in row.items():
                if key != "step":
                    self.board.add_scalar(key, value, row["step"])


def check_out(out: Path, resume: bool) -> None:
    state = out / "state" / PROGRESS_FILE
    if resume and not state.is_file():
        raise TrainError(f"{out}: nothing to resume (no {state})")
    if not resume and (out / "state").exists():
        raise TrainError(f"{out}: holds an earlier run; pass --resume to continue it or choose another --out")


def make_dataset(model: NextGPT, train_config: dict[str, Any], root: Path, report: bool) -> RecordDataset:
    embeddings = open_embeddings(root, model.config) if train_config["task"] != "caption" else {}
    tokens = Tokens(model.tokenizer, model.config)
    dataset = RecordDataset(read_data(root), root, train_config["task"], tokens, model.config, train_config, embeddings)
    if report and dataset.dropped:
        print("left out: " + ", ".join(f"{n} {why}" for why, n in sorted(dataset.dropped.items())))
    if len(dataset) < train_config["batch_size"]:
        raise TrainError(f"{root}: {len(dataset)} usable samples for task {train_config['task']!r}, fewer than one batch")
    return dataset


def make_optimizer(stage: StageModel, train_config: dict[str, Any], total: int) -> tuple[torch.optim.Optimizer, Any]:
    opt, schedule = train_config["optimizer"], train_config["schedule"]
    optimizer = torch.optim.AdamW(
        [p for p in stage.parameters() if p.requires_grad],
        lr=opt["lr"], betas=tuple(opt["betas"]), weight_decay=opt["weight_decay"], eps=opt["eps"],
    )
    warmup = int(schedule["warmup_ratio"] * total)
    return optimizer, get_scheduler(schedule["name"], optimizer, num_warmup_steps=warmup, num_training_steps=total)


@dataclass
class Session:
    """The prepared pieces of one run and the few things done with them."""

    accelerator: Accelerator
    stage: StageModel
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: DataLoader
    config: dict[str, Any]
    state_dir: Path

    @property
    def micro_per_epoch(self) -> int:
        return len(self.loader) // self.config["grad_accum"] * self.config["grad_accum"]

    def batches(self, step: int) -> Iterator[dict[str, Any]]:
        """Micro-batches from optimizer step `step` on, across epochs; the order is the seed's and
        the epoch's, so a resumed run sees what an uninterrupted one would have."""
        epoch, skip = divmod(step * self.config["grad_accum"], self.micro_per_epoch)
        while True:
            self.loader.set_epoch(epoch)
            loader = self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader
            for micro, batch in enumerate(loader, skip):
                if micro == self.micro_per_epoch:
                    break
                yield batch
            epoch, skip = epoch + 1, 0

    def micro_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """Forward and backward; on the last micro-step of an accumulation, clip and step."""
        with self.accelerator.accumulate(self.stage):
            losses = self.stage(batch)
            self.accelerator.backward(losses["loss"])
            if self.accelerator.sync_gradients:
                self.accelerator.clip_grad_norm_(self.stage.parameters(), self.config["clip_grad_norm"])
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
        return {k: self.accelerator.reduce(v.detach(), "mean").item() for k, v in losses.items()}

    def save(self, step: int) -> None:
        self.accelerator.save_state(str(self.state_dir))
        if self.accelerator.is_main_process:
            (self.state_dir / PROGRESS_FILE).write_text(json.dumps({"step": step}) + "\n")

    def restore(self) -> int:
        self.accelerator.load_state(str(self.state_dir))
        return json.loads((self.state_dir / PROGRESS_FILE).read_text())["step"]


def prepare(model: NextGPT, train_config: dict[str, Any], root: Path, out: Path, deepspeed: Path | None) -> tuple[Session, int]:
    """Accelerate around the stage's model, optimizer, schedule and data; returns the schedule's length."""
    accelerator = make_accelerator(train_config, deepspeed)
    set_seed(train_config["seed"])
    # Some CPU kernels accumulate in a thread-dependent order by default (the embedding's backward,
    # index_put_ with accumulate), so two runs from one checkpoint would end with different weights;
    # the deterministic kernels make a run repeatable bit for bit, at the same speed on CPU. warn_only:
    # an op that has no deterministic kernel (cuBLAS without CUBLAS_WORKSPACE_CONFIG, on a GPU) warns
    # instead of stopping the run.
    torch.use_deterministic_algorithms(True, warn_only=True)
    dataset = make_dataset(model, train_config, root, accelerator.is_main_process)
    stage = StageModel(model, train_config)
    loader = DataLoader(
        dataset, batch_size=train_config["batch_size"], shuffle=True, drop_last=True,
        collate_fn=partial(collate, pad_id=model.tokenizer.unk_token_id),
        generator=torch.Generator().manual_seed(train_config["seed"]),
    )
    total = train_config["epochs"] * (len(loader) // train_config["grad_accum"])
    optimizer, scheduler = make_optimizer(stage, train_config, total)
    prepared = accelerator.prepare(stage, optimizer, scheduler, loader)
    register_state_hooks(accelerator)
    return Session(accelerator, *prepared, train_config, out / "state"), total


def run(
    config_path: Path,
    checkpoint: Path,
    out: Path,
    data: Path | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    deepspeed: Path | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train one stage; returns the rows this run logged."""
    checkpoint, out = Path(checkpoint), Path(out)
    check_out(out, resume)
    model = load_checkpoint(checkpoint)
    train_config = load_config(config_path, model.config["preset"])
    root = data or default_data(checkpoint, train_config["task"] != "caption", progress)
    parts = set_trainable(model, train_config["train"])
    session, total = prepare(model, train_config, root, out, deepspeed)
    main_process = session.accelerator.is_main_process
    step = session.restore() if resume else 0
    stop = min(total, max_steps) if max_steps else total
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(train_config, indent=2) + "\n")
    log = JsonlLog(out) if main_process else None
    bar = tqdm(total=stop, initial=step, desc=f"stage {train_config['task']}", unit="step", disable=not (progress and main_process))
    rows: list[dict[str, float]] = []
    sums: dict[str, float] = {}
    started = time.perf_counter()
    for batch in session.batches(step) if step < stop else ():
        lr = session.optimizer.param_groups[0]["lr"]  # the rate this step is taken with
        for key, value in session.micro_step(batch).items():
            sums[key] = sums.get(key, 0.0) + value / train_config["grad_accum"]
        if not session.accelerator.sync_gradients:
            continue
        step += 1
        samples = train_config["batch_size"] * train_config["grad_accum"]
        rows.append({"step": step, "lr": lr, **sums, "samples_per_s": samples / (time.perf_counter() - started)})
        if log:
            log.write(rows[-1])
        bar.update(1)
        bar.set_postfix(loss=f"{sums['loss']:.4f}")
        if step % train_config["save_every"] == 0 or step == stop:
            session.save(step)
        if step >= stop:
            break
        sums, started = {}, time.perf_counter()
    bar.close()
    finish(session, checkpoint, out / "checkpoint", parts)
    return rows


def finish(session: Session, checkpoint: Path, out: Path, parts: list[str]) -> None:
    session.accelerator.wait_for_everyone()
    if session.accelerator.is_main_process:
        trained = session.accelerator.unwrap_model(session.stage).model
        merge_signal_rows(trained)
        write_checkpoint(trained, checkpoint, out, parts)
    session.accelerator.end_training()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = make_parser(__doc__)
    p.add_argument("--config", type=Path, required=True, help="train/configs/stage_N.yaml")
    p.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint to start from")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoint/, state/, log.jsonl")
    add_force(p)
    p.add_argument("--data", type=Path, help="data root (records/*.jsonl, media, embeddings/); default: the synthetic world")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (the schedule keeps its length)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last save")
    p.add_argument("--deepspeed", type=Path, help="a DeepSpeed config, e.g. train/configs/deepspeed_zero2.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.max_steps is not None and args.max_steps < 1:
        print("error: --max-steps must be at least 1", file=sys.stderr)
        return 2
    refuse_non_empty(args.out, args.force or args.resume)
    try:
        run(args.config, args.checkpoint, args.out, args.data, args.max_steps, args.resume, args.deepspeed)
    except (TrainError, ConfigError, ckpt.CheckpointError, EmbeddingError, MediaError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
