"""Where one component's time goes, op by op, on PyTorch and ONNX Runtime side by side.

    python benchmarks/op_profile.py --engines engines/tiny --component sd_unet [--runs 10] [--threads 2] \
        [--top 12] [--json benchmarks/results/op_profile_sd_unet.json]

Both backends get the same seeded inputs at the spec's `opt` shapes. The totals are unprofiled
medians, the two backends interleaved run by run; the per-op figures come from each library's own
profiler (torch.profiler's self CPU time per aten op, ONNX Runtime's per-node kernel time), per
run. The fused attention kernels of both (aten's scaled_dot_product kernels; MultiHeadAttention,
Attention) are grouped as `attention`, so the one op that does the same math in both lines up.
This tells whether a component's gap to PyTorch is the engine's to close (overheads, unfused ops)
or a kernel that both libraries already run at the same speed.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.compare_latency import interleaved
from benchmarks.machine import describe_machine
from benchmarks.report import save_report
from export.specs import component_specs
from runtime.backends import Engines, OrtEngine
from runtime.manifest import Build, read_manifest

ATTENTION = "attention"
ORT_ATTENTION = {"MultiHeadAttention", "Attention", "GroupQueryAttention"}
BACKENDS = ("torch", "onnxruntime")


def op_group(op: str) -> str:
    name = op.removeprefix("aten::")
    return ATTENTION if name in ORT_ATTENTION or "scaled_dot_product" in name else name


def torch_ops(engine: Any, feeds: dict[str, np.ndarray], runs: int) -> Counter[str]:
    """ms per run of each aten op's self CPU time."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            engine.run(feeds)
    ops: Counter[str] = Counter()
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            ops[op_group(event.key)] += event.self_cpu_time_total / 1e3 / runs
    return ops


def ort_ops(path: Path, io: dict[str, Any], threads: int, feeds: dict[str, np.ndarray], runs: int) -> Counter[str]:
    """ms per run of each node type's kernel time, the session's first (warm-up) run left out."""
    with tempfile.TemporaryDirectory() as tmp:
        engine = OrtEngine(path, io, "cpu", threads, profile=Path(tmp) / "ort")
        for _ in range(runs + 1):
            engine.run(feeds)
        trace = json.loads(engine.end_profiling().read_text())
    runs_seen = [e for e in trace if e.get("cat") == "Session" and e["name"] == "model_run"]
    first_end = runs_seen[0]["ts"] + runs_seen[0]["dur"]
    ops: Counter[str] = Counter()
    for e in trace:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_end:
            ops[op_group(e["args"]["op_name"])] += e["dur"] / 1e3 / runs
    return ops


def profile(build: Build, component: str, runs: int, threads: int) -> dict[str, Any]:
    spec = component_specs(build.config)[component]
    dims = spec.point("opt")
    feeds = spec.sample(dims, seed=0)
    torch_engine = Engines(build, "torch")[component]
    ort_engine = Engines(build, "onnxruntime", "cpu", threads)[component]
    totals = interleaved({"torch": lambda: torch_engine.run(feeds), "onnxruntime": lambda: ort_engine.run(feeds)}, runs)
    ops = {
        "torch": torch_ops(torch_engine, feeds, runs),
        "onnxruntime": ort_ops(build.path(build.component(component)["engine"]), ort_engine.io, threads, feeds, runs),
    }
    backends = {}
    for b in BACKENDS:
        profiled = sum(ops[b].values())
        backends[b] = {
            "median_ms": float(np.median(totals[b]) * 1e3),
            "profiled_ms": profiled,
            "attention_ms": ops[b][ATTENTION],
            "ops_ms": dict(ops[b].most_common()),
        }
    return {"component": component, "shapes": dims, "runs": runs, "machine": describe_machine(threads), "backends": backends}


def _ratio(result: dict[str, Any], key: Any) -> str:
    t, o = (key(result["backends"][b]) for b in BACKENDS)
    return f"{o / t:.2f}x" if t else "-"


def markdown(result: dict[str, Any], top: int) -> str:
    m, bk = result["machine"], result["backends"]
    rest = lambda b: b["profiled_ms"] - b["attention_ms"]  # noqa: E731
    share = lambda b, ms: f"{ms:.2f} ms ({100 * ms / b['profiled_ms']:.0f}%)" if b["profiled_ms"] else "-"  # noqa: E731
    lines = [
        f"# Op profile: {result['component']} ({m['cpu']}, {m['threads']} threads; shapes {result['shapes']})",
        "",
        "| | torch | onnxruntime | onnxruntime / torch |",
        "|---|---|---|---|",
        f"| median per run, unprofiled | {bk['torch']['median_ms']:.2f} ms | {bk['onnxruntime']['median_ms']:.2f} ms "
        f"| {_ratio(result, lambda b: b['median_ms'])} |",
        f"| attention kernels, profiled | {share(bk['torch'], bk['torch']['attention_ms'])} "
        f"| {share(bk['onnxruntime'], bk['onnxruntime']['attention_ms'])} | {_ratio(result, lambda b: b['attention_ms'])} |",
        f"| everything else, profiled | {share(bk['torch'], rest(bk['torch']))} "
        f"| {share(bk['onnxruntime'], rest(bk['onnxruntime']))} | {_ratio(result, rest)} |",
    ]
    for b in BACKENDS:
        lines += ["", f"## {b}: top ops by time per run", "", "| op | ms | share |", "|---|---|---|"]
        for op, ms in list(bk[b]["ops_ms"].items())[:top]:
            lines.append(f"| {op} | {ms:.2f} | {100 * ms / bk[b]['profiled_ms']:.1f}% |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", type=Path, required=True)
    p.add_argument("--component", required=True, help="a component of the build, e.g. sd_unet")
    p.add_argument("--runs", type=int, default=10, help="timed and profiled runs per backend")
    p.add_argument("--threads", type=int, default=0, help="threads for torch and ONNX Runtime (0: all cores)")
    p.add_argument("--top", type=int, default=12, help="ops listed per backend")
    p.add_argument("--json", type=Path, help="also write the result here, and the table beside it as .md")
    args = p.parse_args(argv)
    build = read_manifest(args.engines)
    if args.component not in build.components:
        print(f"error: {args.component!r} is not in {args.engines}; it has {', '.join(build.components)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    result = profile(build, args.component, args.runs, args.threads)
    md = markdown(result, args.top)
    if args.json:
        save_report(args.json, result, md, args.engines)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
