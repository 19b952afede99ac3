"""Load on the Triton deployment: latency percentiles and throughput by concurrency, against the
in-process runtime.

    python benchmarks/triton_load.py --engines engines/tiny [--concurrency 1,2,4,8] [--requests 24] \
        [--routes text_to_image,image_to_text] [--instances ROLE=N,...] [--max-queue-delay-us 0] [--bls auto] \
        [--url HOST:PORT] [--json benchmarks/results/triton_load.json]

The load generator is a closed loop in Python, perf_analyzer's concurrency mode: N clients each
keep one gRPC request in flight, sending the next as soon as an answer comes back, for a bounded
number of requests per level (and at most --max-seconds). It also times the in-process runtime
and counts the UNet batches, which perf_analyzer cannot; benchmarks/perf_analyzer.py runs
perf_analyzer itself on the same routes and puts its figures beside these.
Per level: count, throughput (requests/s over the level's wall time), mean/p50/p95/p99 latency,
and how many UNet samples each UNet execution held (the dynamic batches Triton formed).

At concurrency 1 the in-process runtime (`runtime.pipeline`) on the same build is timed with the
Triton path interleaved, request by request, so that machine noise hits both alike; the Triton
overhead is the ratio of the medians. Without --url the script writes a repository in a
temporary folder and starts its own server on loopback, stopped at the end. Writes JSON and a
Markdown table (beside the JSON) and prints the table.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from benchmarks.machine import describe_machine
from benchmarks.report import save_report
from runtime.manifest import read_manifest
from runtime.pipeline import Any2AnyPipeline
from runtime.request import Request
from train.demo import write_sample_inputs
from triton_repo.build_repo import BLS_CHOICES, MARKER, build_repo, parse_instances
from triton_repo.client import Any2AnyClient
from triton_repo.demo import route_request
from triton_repo.serve import TritonServer

OVERHEAD_BUDGET = 0.15  # the Triton path may add at most this much to the in-process median at concurrency 1
WARMUP = 2


def stats(latencies: list[float], wall_s: float) -> dict[str, float]:
    ms = np.array(latencies) * 1e3
    return {
        "requests": len(ms),
        "throughput_rps": len(ms) / wall_s,
        "mean_ms": float(ms.mean()),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def unet_counts(url: str) -> tuple[int, int]:
    """(samples inferred, executions) summed over the UNet models: their ratio is the mean batch."""
    with grpcclient.InferenceServerClient(url) as client:
        models = client.get_inference_statistics(as_json=True)["model_stats"]
    unets = [m for m in models if m["name"].endswith("_unet")]
    return sum(int(m.get("inference_count", 0)) for m in unets), sum(int(m.get("execution_count", 0)) for m in unets)


def closed_loop(url: str, req: Request, concurrency: int, requests: int, max_seconds: float) -> dict[str, float]:
    """`concurrency` clients, one request in flight each, until `requests` answers or the time is up."""
    latencies: list[float] = []
    lock = threading.Lock()
    issued = 0
    deadline = time.monotonic() + max_seconds
    errors: list[BaseException] = []

    def worker() -> None:
        nonlocal issued
        with Any2AnyClient(url) as client:
            while time.monotonic() < deadline:
                with lock:
                    if issued >= requests:
                        return
                    issued += 1
                start = time.perf_counter()
                try:
                    client.infer(req)
                except BaseException as e:  # noqa: BLE001 - reported after the level, not lost in a thread
                    errors.append(e)
                    return
                with lock:
                    latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    samples_before, executions_before = unet_counts(url)
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    samples, executions = unet_counts(url)
    batch = (samples - samples_before) / (executions - executions_before) if executions > executions_before else None
    return {"concurrency": concurrency, **stats(latencies, wall), "unet_samples_per_execution": batch}


def interleaved_c1(pipeline: Any2AnyPipeline, url: str, req: Request, runs: int) -> dict[str, dict[str, float]]:
    """In process and over Triton, one request at a time, alternating."""
    times: dict[str, list[float]] = {"in_process": [], "triton": []}
    with Any2AnyClient(url) as client:
        calls = {"in_process": lambda: pipeline(req), "triton": lambda: client.infer(req)}
        for _ in range(WARMUP):
            for call in calls.values():
                call()
        for _ in range(runs):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    return {name: stats(t, sum(t)) for name, t in times.items()}


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"# Triton load ({m['cpu']}, {m['cores']} cores)",
        "",
        f"Closed-loop gRPC load generator in Python with perf_analyzer's concurrency-mode semantics "
        f"(perf_analyzer's own figures: perf_analyzer.md). "
        f"Instances: {', '.join(f'{k}={v}' for k, v in result['instances'].items()) if result['instances'] else 'as served'}; "
        f"max_queue_delay_microseconds={result['max_queue_delay_us']}; --bls {result['bls']}.",
    ]
    for route, r in result["routes"].items():
        c1 = r["concurrency_1"]
        lines += [
            "",
            f"## {route}",
            "",
            f"Concurrency 1, interleaved: in process p50 {c1['in_process']['p50_ms']:.1f} ms, Triton p50 "
            f"{c1['triton']['p50_ms']:.1f} ms: overhead {100 * r['overhead']:+.1f}% "
            f"({'within' if r['overhead'] <= OVERHEAD_BUDGET else 'over'} the {100 * OVERHEAD_BUDGET:.0f}% budget).",
            "",
            "| path | concurrency | requests | throughput (req/s) | mean ms | p50 ms | p95 ms | p99 ms | UNet samples/execution |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        rows = [(f"{name}, interleaved", {"concurrency": 1, **c1[key], "unet_samples_per_execution": None})
                for name, key in (("in process", "in_process"), ("Triton", "triton"))]
        rows += [("Triton, closed loop", level) for level in r["levels"]]
        for path, s in rows:
            batch = "-" if s["unet_samples_per_execution"] is None else f"{s['unet_samples_per_execution']:.2f}"
            lines.append(
                f"| {path} | {s['concurrency']} | {s['requests']} | {s['throughput_rps']:.2f} | {s['mean_ms']:.1f} | "
                f"{s['p50_ms']:.1f} | {s['p95_ms']:.1f} | {s['p99_ms']:.1f} | {batch} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", type=Path, default=Path("engines/tiny"))
    p.add_argument("--routes", default="text_to_image,image_to_text", help="routes of train/demo.py")
    p.add_argument("--concurrency", default="1,2,4,8")
    p.add_argument("--requests", type=int, default=24, help="timed requests per concurrency level")
    p.add_argument("--max-seconds", type=float, default=120.0, help="time limit per concurrency level")
    p.add_argument("--instances", help="ROLE=N,... for build_repo.py (default: its defaults)")
    p.add_argument("--max-queue-delay-us", type=int, default=0)
    p.add_argument("--bls", choices=BLS_CHOICES, default="auto", help="build_repo.py --bls")
    p.add_argument("--url", help="a running server's gRPC address (default: start one here)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/triton_load.json"))
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    instances = parse_instances(args.instances)
    build = read_manifest(args.engines)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="triton-load-")))
        url, policy = args.url, "as served"  # a server started elsewhere
        if url is None:
            build_repo(args.engines, tmp / "repo", instances, args.max_queue_delay_us, args.bls)
            policy = json.loads((tmp / "repo" / MARKER).read_text())["bls_policy"]
            url = stack.enter_context(TritonServer(tmp / "repo", timeout_s=300)).grpc_url
        files = write_sample_inputs(tmp / "inputs", build.config["imagebind"]["audio"]["sample_rate"])
        pipeline = Any2AnyPipeline(args.engines)
        pipeline.warm_up()
        result: dict[str, Any] = {
            "machine": describe_machine(0),
            "load_generator": "closed-loop Python gRPC clients (tritonclient), perf_analyzer concurrency-mode semantics",
            "instances": instances if args.url is None else None,  # a server started elsewhere
            "max_queue_delay_us": args.max_queue_delay_us,
            "bls": policy,
            "routes": {},
        }
        for route in args.routes.split(","):
            req = route_request(route, files, args.seed)
            c1 = interleaved_c1(pipeline, url, req, args.requests)
            overhead = c1["triton"]["p50_ms"] / c1["in_process"]["p50_ms"] - 1
            runs = []
            for c in levels:
                closed_loop(url, req, c, c, args.max_seconds)  # warm-up: every instance busy once
                runs.append(closed_loop(url, req, c, args.requests, args.max_seconds))
                print(f"{route} c={c}: {runs[-1]['throughput_rps']:.2f} req/s, p50 {runs[-1]['p50_ms']:.1f} ms", flush=True)
            result["routes"][route] = {"concurrency_1": c1, "overhead": overhead, "levels": runs}
    md = markdown(result)
    save_report(args.json, result, md, args.engines)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
