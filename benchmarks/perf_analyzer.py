"""perf_analyzer, Triton's own load generator, on the any2any deployment, beside triton_load.py.

    bash scripts/get_perf_analyzer.sh            # once: prints the perf_analyzer wrapper's path
    python benchmarks/perf_analyzer.py --engines engines/tiny [--perf-analyzer PATH] \
        [--routes text_to_image,image_to_text] [--concurrency 1,2,4,8] [--requests 24] [--url HOST:PORT] \
        [--inputs DIR] [--json benchmarks/results/perf_analyzer.json]

For each route it writes perf_analyzer's `--input-data` JSON from the sample media files
(`train.demo.write_sample_inputs`): every BYTES tensor, the prompt and each two-element file
tensor (name, raw bytes), as `{"content": {"b64": ...}, "shape": [N]}`, whose decoded bytes hold
the N elements, each preceded by its length as 4 little-endian bytes (perf_analyzer's
docs/input_data.md); INT64/FP64 values as plain lists. Then it runs perf_analyzer in
concurrency mode at each level against the `any2any` ensemble over gRPC and reads its CSV:
throughput and p50/p90/p95/p99 latency. The table puts them beside the figures of
benchmarks/results/triton_load.json for the same route and concurrency (that file is read, not
remeasured). Without --url it writes the default repository and starts its own server.
"""
from __future__ import annotations

import argparse
import base64
import csv
import json
import struct
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import describe_machine
from benchmarks.report import save_report
from runtime.manifest import read_manifest
from train.demo import write_sample_inputs
from triton_repo.build_repo import build_repo
from triton_repo.demo import route_request
from triton_repo.protocol import ENSEMBLE, encode_request
from triton_repo.serve import TritonServer

DEFAULT_BINARY = Path.home() / ".cache" / "any2any" / "perf_analyzer" / "perf_analyzer"
TRITON_LOAD = Path("benchmarks/results/triton_load.json")


def bytes_tensor(elements: list[bytes]) -> dict[str, Any]:
    """perf_analyzer's form of a BYTES tensor: each element's 4-byte little-endian length, then it."""
    raw = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    return {"content": {"b64": base64.b64encode(raw).decode("ascii")}, "shape": [len(elements)]}


def input_data(tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    """`--input-data` JSON of one request's tensors (`protocol.encode_request`)."""
    step = {}
    for name, value in tensors.items():
        if value.dtype == object:
            step[name] = bytes_tensor([bytes(v) for v in value.reshape(-1)])
        else:
            step[name] = {"content": value.reshape(-1).tolist(), "shape": list(value.shape)}
    return {"data": [step]}


def run_level(binary: Path, url: str, data: Path, concurrency: int, requests: int, csv_path: Path) -> dict[str, float]:
    """One concurrency level; perf_analyzer's CSV row as throughput and latency percentiles (ms)."""
    # Stable means three windows within 100% of each other: on a shared 2-core machine latency
    # moves by 2x between windows, and a tighter bound never settles there.
    cmd = [
        str(binary), "-m", ENSEMBLE, "-i", "grpc", "-u", url, "--input-data", str(data),
        "--concurrency-range", f"{concurrency}:{concurrency}",
        "--measurement-mode", "count_windows", "--measurement-request-count", str(requests),
        "--stability-percentage", "100", "--max-trials", "6", "-f", str(csv_path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise RuntimeError(f"perf_analyzer failed at concurrency {concurrency}:\n{tail}")
    row = next(csv.DictReader(csv_path.open()))
    ms = {f"p{q}_ms": float(row[f"p{q} latency"]) / 1e3 for q in (50, 90, 95, 99)}
    return {"concurrency": concurrency, "throughput_rps": float(row["Inferences/Second"]), **ms}


def triton_load_levels(route: str) -> dict[int, dict[str, float]]:
    if not TRITON_LOAD.is_file():
        return {}
    result = json.loads(TRITON_LOAD.read_text())
    return {level["concurrency"]: level for level in result["routes"].get(route, {}).get("levels", [])}


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"# perf_analyzer on the any2any ensemble ({m['cpu']}, {m['cores']} cores)",
        "",
        f"{result['perf_analyzer_version']}, gRPC, concurrency mode, {result['requests']} requests per "
        "measurement window; beside it, benchmarks/results/triton_load.json (the Python closed loop, measured at "
        "another time, on the machine that file names).",
        "",
        "| route | concurrency | perf_analyzer req/s | p50 ms | p95 ms | p99 ms | triton_load.py req/s | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for route, levels in result["routes"].items():
        for level in levels:
            theirs = level.get("triton_load")
            other = "| - | - | - | - |" if not theirs else (
                f"| {theirs['throughput_rps']:.2f} | {theirs['p50_ms']:.0f} | {theirs['p95_ms']:.0f} | {theirs['p99_ms']:.0f} |"
            )
            lines.append(
                f"| {route} | {level['concurrency']} | {level['throughput_rps']:.2f} | {level['p50_ms']:.0f} | "
                f"{level['p95_ms']:.0f} | {level['p99_ms']:.0f} " + other
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", type=Path, default=Path("engines/tiny"))
    p.add_argument("--perf-analyzer", type=Path, default=DEFAULT_BINARY, help="scripts/get_perf_analyzer.sh prints it")
    p.add_argument("--routes", default="text_to_image,image_to_text", help="routes of train/demo.py")
    p.add_argument("--concurrency", default="1,2,4,8")
    p.add_argument("--requests", type=int, default=12, help="requests per measurement window")
    p.add_argument("--url", help="a running server's gRPC address (default: start one here)")
    p.add_argument("--inputs", type=Path, help="keep the input-data JSON files here (default: a temporary folder)")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/perf_analyzer.json"))
    args = p.parse_args(argv)
    if not args.perf_analyzer.is_file():
        print(f"error: no perf_analyzer at {args.perf_analyzer}; run scripts/get_perf_analyzer.sh", file=sys.stderr)
        return 2
    shown = subprocess.run([str(args.perf_analyzer), "--version"], capture_output=True, text=True)
    version = (shown.stdout + shown.stderr).strip()
    build = read_manifest(args.engines)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="perf-analyzer-")))
        inputs = args.inputs or tmp / "inputs"
        inputs.mkdir(parents=True, exist_ok=True)
        url = args.url
        if url is None:
            build_repo(args.engines, tmp / "repo")
            url = stack.enter_context(TritonServer(tmp / "repo", timeout_s=300)).grpc_url
        files = write_sample_inputs(tmp / "media", build.config["imagebind"]["audio"]["sample_rate"])
        result: dict[str, Any] = {"machine": describe_machine(0), "perf_analyzer_version": version,
                                  "requests": args.requests, "routes": {}}
        for route in args.routes.split(","):
            data = inputs / f"{route}.json"
            data.write_text(json.dumps(input_data(encode_request(route_request(route, files, 0)))))
            theirs = triton_load_levels(route)
            levels = []
            for c in (int(c) for c in args.concurrency.split(",")):
                level = run_level(args.perf_analyzer, url, data, c, args.requests, tmp / f"{route}_{c}.csv")
                levels.append({**level, "triton_load": theirs.get(c)})
                print(f"{route} c={c}: {level['throughput_rps']:.2f} req/s, p50 {level['p50_ms']:.0f} ms", flush=True)
            result["routes"][route] = levels
    md = markdown(result)
    save_report(args.json, result, md, args.engines)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
