"""Latency of the engines against PyTorch, measured side by side in one run.

    python benchmarks/compare_latency.py --engines engines/tiny [--backends torch,onnxruntime] \
        [--triton 127.0.0.1:8001] [--json benchmarks/results/latency.json] [--precision fp16] [--inputs DIR] [--quick]

Per component: warm-up, then median / p90 / p99 at the spec's `opt` shapes, the runs interleaved
across backends so that machine noise hits them alike. End to end per route: latency with its
breakdown (encode, prefill, decode, each denoising loop, VAE, vocoder), time to first token and
decode tokens/s, against the PyTorch reference pipeline (`train/reference.py`, HF generate +
diffusers) in the same process. Every figure is also given as a ratio to PyTorch. Writes JSON, a
Markdown table and PNG charts next to the JSON. Backends that cannot run here are listed with the
reason instead of failing the run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.machine import add_precision_and_inputs, backend_engines, describe_machine, open_pipeline, thread_budget
from benchmarks.report import save_figure, save_report
from export.specs import component_specs
from runtime.backends import Engines
from runtime.manifest import read_manifest
from runtime.request import Request
from train.demo import ROUTES, sample_inputs
from train.model import load_checkpoint
from train.reference import ReferencePipeline


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1e3
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)), "runs": len(ms)}


def interleaved(calls: dict[str, Callable[[], Any]], runs: int, warmup: int = 3) -> dict[str, list[float]]:
    """Time every call `runs` times, round-robin, after `warmup` untimed rounds."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def bench_components(build: Any, engines: dict[str, Engines], runs: int) -> list[dict[str, Any]]:
    rows = []
    for name, spec in component_specs(build.config).items():
        dims = spec.point("opt")
        feeds = spec.sample(dims, seed=0)
        times = interleaved({b: (lambda e=e: e[name].run(feeds)) for b, e in engines.items()}, runs)
        stats = {b: percentiles(t) for b, t in times.items()}
        rows.append({"component": name, "shapes": dims, **_with_ratios(stats)})
    return rows


def _with_ratios(stats: dict[str, dict[str, float]]) -> dict[str, Any]:
    base = stats.get("torch", {}).get("median_ms")
    return {"backends": {b: {**s, "ratio_to_torch": (s["median_ms"] / base) if base else None} for b, s in stats.items()}}


@dataclass
class CallLog:
    """Every engine call of one request: (component, start, seconds)."""

    calls: list[tuple[str, float, float]] = field(default_factory=list)


class TimedEngines:
    """An `Engines` whose engines record their calls into a shared log."""

    def __init__(self, engines: Engines, log: CallLog) -> None:
        self.engines, self.log, self.build = engines, log, engines.build

    def __getitem__(self, name: str) -> Any:
        engine, log = self.engines[name], self.log

        class Timed:
            input_names, output_names = engine.input_names, engine.output_names

            def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                start = time.perf_counter()
                out = engine.run(feeds)
                log.calls.append((name, start, time.perf_counter() - start))
                return out

        return Timed()


def breakdown(log: CallLog, start: float, config: dict[str, Any]) -> dict[str, float]:
    """Stage -> seconds, from the engine-call log of one request."""
    stages: dict[str, float] = defaultdict(float)
    names = {dec["name"]: m for m, dec in config["decoders"].items()}
    llm_calls = [c for c in log.calls if c[0] == "llm"]
    for name, _, seconds in log.calls:
        if name.startswith("imagebind"):
            stages["encode"] += seconds
        elif name.startswith("projector"):
            stages["projectors"] += seconds
        elif name != "llm":
            decoder, _, part = name.partition("_")
            stages[f"{names[decoder]}_{part.replace('unet', 'denoise')}"] += seconds
    if llm_calls:
        stages["prefill"] = llm_calls[0][2]
        stages["decode"] = sum(c[2] for c in llm_calls[1:])
        stages["time_to_first_token"] = llm_calls[0][1] + llm_calls[0][2] - start
        stages["decode_tokens"] = len(llm_calls) - 1
    return dict(stages)


def bench_routes(
    engines_dir: Path,
    backends: list[str],
    runs: int,
    steps: int | None,
    inputs: dict[str, Path],
    threads: int,
    precision: str = "fp32",
) -> list[dict[str, Any]]:
    build = read_manifest(engines_dir)
    reference = ReferencePipeline(load_checkpoint(Path(build.data["checkpoint"]["path"])), progress=False)
    logs = {b: CallLog() for b in backends}
    pipelines = {
        b: open_pipeline(engines_dir, b, threads, wrap=lambda e, b=b: TimedEngines(e, logs[b]), precision=precision) for b in backends
    }
    rows = []
    for route, (prompt, files, output) in ROUTES.items():
        req = Request(prompt, {m: inputs[m] for m in files}, output=output, seed=0, steps=steps)
        calls = {"reference": lambda: reference(req), **{b: (lambda p=p: p(req)) for b, p in pipelines.items()}}
        for log in logs.values():
            log.calls.clear()
        times = interleaved(calls, runs, warmup=1)
        stats = {name: percentiles(t) for name, t in times.items()}
        ref_tokens = len(reference(req).token_ids)
        row = {"route": route, "tokens": ref_tokens, "backends": {}}
        base = stats["reference"]["median_ms"]
        for name, s in stats.items():
            row["backends"][name] = {**s, "ratio_to_reference": s["median_ms"] / base}
        for b, p in pipelines.items():
            logs[b].calls.clear()
            start = time.perf_counter()
            p(req)
            row["backends"][b]["breakdown_s"] = breakdown(logs[b], start, build.config)
        rows.append(row)
    return rows


def engine_decode(generator: Any, prompt_ids: list[int], new_tokens: int) -> int:
    """gpt-fast's loop on the `llm` engine: prefill, then exactly `new_tokens` greedy decode steps
    (no stop rule: a throughput figure must not depend on when the model chooses to stop)."""
    logits, _, cache = generator.prefill(prompt_ids, None, None)
    for _ in range(new_tokens):
        logits, _, cache = generator.decode_one_token(int(np.argmax(logits)), cache)
    return new_tokens


def reference_decode(reference: ReferencePipeline, embeds: torch.Tensor, new_tokens: int) -> int:
    """HF generate, greedy, made to produce exactly `new_tokens` tokens."""
    tok = reference.model.tokenizer
    out = reference.model.llm.generate(
        inputs_embeds=embeds,
        attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=tok.unk_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return out.shape[1]


def tokens_per_s(decode: Callable[[], int], runs: int) -> dict[str, Any]:
    """Best of `runs` timed decodes after one untimed warm-up (the first call pays for kernel
    loading, allocator growth and autotuning, on a GPU far more than the decode itself)."""
    decode()
    best, tokens = float("inf"), 0
    for _ in range(runs):
        start = time.perf_counter()
        tokens = decode()
        best = min(best, time.perf_counter() - start)
    return {"tokens": tokens, "tokens_per_s": tokens / best}


def bench_decode(
    engines_dir: Path, backends: list[str], new_tokens: int, threads: int, precision: str = "fp32", runs: int = 3
) -> dict[str, Any]:
    """Decode tokens/s: HF generate (the reference) vs each backend's step loop, same prompt, the
    same fixed number of new tokens."""
    build = read_manifest(engines_dir)
    reference = ReferencePipeline(load_checkpoint(Path(build.data["checkpoint"]["path"])), progress=False)
    text = "tell me a long story about a red circle"
    embeds = reference.prompt_embeds(reference.build_prompt(text, False, new_tokens), None)
    out: dict[str, Any] = {"reference": tokens_per_s(lambda: reference_decode(reference, embeds, new_tokens), runs)}
    for b in backends:
        gen = open_pipeline(engines_dir, b, threads, precision=precision).llm
        ids = list(gen.build_prompt(text, False).ids)
        out[b] = tokens_per_s(lambda g=gen: engine_decode(g, ids, new_tokens), runs)
    for b in backends:
        out[b]["ratio_to_reference"] = out[b]["tokens_per_s"] / out["reference"]["tokens_per_s"]
    return out


def markdown(result: dict[str, Any]) -> str:
    gpu = f", {result['machine']['gpu']} at {result['precision']}" if result["machine"]["gpu"] else ""
    lines = [f"# Latency ({result['machine']['cpu']}, {result['machine']['threads']} threads{gpu})", ""]
    lines += ["## Components (median ms at opt shapes; ratio to PyTorch)", "", "| component | " + " | ".join(result["backends"]) + " |", "|---" * (len(result["backends"]) + 1) + "|"]
    for row in result["components"]:
        cells = [f"{s['median_ms']:.2f} ({s['ratio_to_torch']:.2f}x)" for s in row["backends"].values()]
        lines.append(f"| {row['component']} | " + " | ".join(cells) + " |")
    names = ["reference", *(b for b in result["backends"] if b in result["routes"][0]["backends"])]
    lines += ["", "## Routes end to end (median ms; ratio to the PyTorch reference)", "", "| route | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row in result["routes"]:
        cells = [f"{row['backends'][n]['median_ms']:.1f} ({row['backends'][n]['ratio_to_reference']:.2f}x)" for n in names]
        lines.append(f"| {row['route']} | " + " | ".join(cells) + " |")
    lines += ["", "## LLM decode", "", "| pipeline | tokens | tokens/s | ratio to reference |", "|---|---|---|---|"]
    for name, d in result["decode"].items():
        lines.append(f"| {name} | {d['tokens']} | {d['tokens_per_s']:.1f} | {d.get('ratio_to_reference', 1.0):.2f}x |")
    if result["unavailable"]:
        lines += ["", "## Unavailable here", ""] + [f"- `{b}`: {why}" for b, why in result["unavailable"].items()]
    return "\n".join(lines) + "\n"


def charts(result: dict[str, Any], folder: Path, origin: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, label, rows in (("component", "components", result["components"]), ("route", "routes", result["routes"])):
        names = [r[key] for r in rows]
        fig, ax = plt.subplots(figsize=(9, 0.4 * len(names) + 1.5))
        backends = [b for b in rows[0]["backends"] if b not in ("torch", "reference")]
        ratio = "ratio_to_torch" if key == "component" else "ratio_to_reference"
        for i, b in enumerate(backends):
            ax.barh(np.arange(len(names)) + i * 0.8 / len(backends), [r["backends"][b][ratio] for r in rows], height=0.8 / len(backends), label=b)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.axvline(0.5, color="g", lw=0.8, ls="--")
        ax.set_yticks(np.arange(len(names)), names)
        ax.set_xlabel("median latency / PyTorch")
        ax.legend()
        fig.tight_layout()
        path = folder / f"latency_{label}.png"
        save_figure(fig, path, origin)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", type=Path, required=True)
    p.add_argument("--backends", default="torch,onnxruntime", help="comma-separated; torch is the per-component baseline")
    p.add_argument("--triton", help="also time the routes through a Triton server at this gRPC URL")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/latency.json"))
    p.add_argument("--runs", type=int, default=20, help="timed runs per component")
    p.add_argument("--route-runs", type=int, default=5, help="timed runs per route")
    p.add_argument("--threads", type=int, default=0, help="threads for every CPU backend, torch and ONNX Runtime alike (0: all cores)")
    add_precision_and_inputs(p)
    p.add_argument("--quick", action="store_true", help="few runs and 2 denoising steps: a smoke test")
    args = p.parse_args(argv)
    threads = thread_budget(args.threads)
    runs, route_runs, steps = (3, 1, 2) if args.quick else (args.runs, args.route_runs, None)
    build = read_manifest(args.engines)
    engines, unavailable = backend_engines(build, args.backends.split(","), threads, args.precision)
    result: dict[str, Any] = {"machine": describe_machine(threads), "precision": args.precision, "backends": list(engines), "unavailable": unavailable}
    result["components"] = bench_components(build, engines, runs)
    runnable = [b for b in engines if b != "torch"]
    with tempfile.TemporaryDirectory() as tmp:
        inputs = sample_inputs(args.inputs, Path(tmp), build.config["imagebind"]["audio"]["sample_rate"])
        result["routes"] = bench_routes(args.engines, runnable, route_runs, steps, inputs, threads, args.precision)
        if args.triton:
            from triton_repo.client import time_routes  # only with a server to talk to

            result["triton"] = time_routes(args.triton, inputs, route_runs, steps)
    result["decode"] = bench_decode(args.engines, runnable, 16 if args.quick else 64, threads, args.precision)
    md = markdown(result)
    origin = save_report(args.json, result, md, args.engines)
    charts(result, args.json.parent, origin)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
