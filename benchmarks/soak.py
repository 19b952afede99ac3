"""Soak: the deployment under mixed, concurrent, partly abusive load for a bounded time.

    python benchmarks/soak.py --engines engines/tiny [--seconds 300] [--concurrency 8] [--abuse-every 4] \
        [--instances ROLE=N,...] [--url HOST:PORT --server-pid PID] [--json benchmarks/results/soak.json]

N clients on loopback, each sending its next request as soon as the last one ends, cycle through
the routes of train/demo.py (the well-formed requests) with one abusive request after every
`--abuse-every` well-formed ones, taken in turn from `ABUSE`. Each abusive case names the status
it must get; the report counts, per case, what it got. Without `--url` the script writes the
default repository (build_repo.py's defaults) in a temporary folder and starts its own server.

It reports: well-formed requests sent and answered (a lost one is an error of any kind), latency
percentiles per route, each abuse case's statuses against its expected one, and the resident
memory of the server and all its stub processes every few seconds; memory is flat when the last
minute's peak is within `RSS_FLAT` of the peak of the first minute after the warm-up. The exit
status is 0 when nothing was lost, every abuse case got its code and memory was flat.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import tritonclient.grpc as grpcclient
from tqdm import tqdm
from tritonclient.utils import InferenceServerException

from benchmarks.machine import describe_machine
from benchmarks.report import save_report
from runtime.manifest import read_manifest
from runtime.request import Request
from train.demo import ROUTES, write_sample_inputs
from triton_repo.build_repo import build_repo, parse_instances
from triton_repo.client import Any2AnyClient, infer_inputs
from triton_repo.demo import route_request
from triton_repo.protocol import ENSEMBLE
from triton_repo.serve import TritonServer

RSS_FLAT = 0.05  # the last minute's peak may exceed the first minute's by this fraction
WARMUP_S = 30.0  # memory before this is the server warming up (first requests allocate arenas)
RSS_EVERY_S = 5.0
REQUEST_TIMEOUT_S = 120.0  # a well-formed request's deadline: far beyond its latency under this load

Send = Callable[[grpcclient.InferenceServerClient, dict[str, Path]], Any]  # (client, sample files)


PROMPT = (np.array([b"what is this?"], dtype=object), "BYTES")


def _ensemble(client: grpcclient.InferenceServerClient, inputs: list[grpcclient.InferInput], timeout_s: float = 30.0) -> Any:
    return client.infer(ENSEMBLE, inputs, timeout=round(timeout_s * 1e6), client_timeout=timeout_s)


def _tensor(name: str, value: np.ndarray, dtype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(value.shape), dtype)
    tensor.set_data_from_numpy(value)
    return tensor


def _request(req: Request, timeout_s: float = 30.0) -> Send:
    return lambda client, files: _ensemble(client, infer_inputs(req), timeout_s)


def _with_file(modality: str, name: str, data: Callable[[dict[str, Path]], bytes]) -> Send:
    """A request whose `modality` input is a file named `name` holding `data(sample files)`; built
    as tensors, not read from disk, so that a name no file system stores can be sent."""
    def send(client: grpcclient.InferenceServerClient, files: dict[str, Path]) -> Any:
        upload = np.array([name.encode(), data(files)], dtype=object)
        return _ensemble(client, [_tensor("PROMPT", *PROMPT), _tensor(f"{modality.upper()}_FILE", upload, "BYTES")])

    return send


def _tensors(**tensors: tuple[np.ndarray, str]) -> Send:
    return lambda client, files: _ensemble(client, [_tensor(n, v, d) for n, (v, d) in tensors.items()])


RNG_BYTES = np.random.default_rng(0).bytes(2 << 20)


@dataclass(frozen=True)
class Abuse:
    name: str
    expected: str  # the gRPC status it must get
    send: Send
    note: str = ""  # which branch's work makes the server refuse it, where that is not this one


ABUSE = (
    Abuse("corrupt PNG", "INVALID_ARGUMENT", _with_file("image", "corrupt.png", lambda f: b"\x89PNG\r\n\x1a\n broken")),
    Abuse("2 MiB of random bytes as a PNG", "INVALID_ARGUMENT", _with_file("image", "noise.png", lambda f: RNG_BYTES)),
    Abuse("truncated WAV", "INVALID_ARGUMENT", _with_file("audio", "cut.wav", lambda f: f["audio"].read_bytes()[:100])),
    Abuse("file name of 300 bytes", "INVALID_ARGUMENT", _with_file("image", "n" * 296 + ".png", lambda f: f["image"].read_bytes()), "limits (issue-13a)"),
    Abuse("empty prompt", "INVALID_ARGUMENT", _request(Request(""))),
    Abuse("1 MB prompt", "INVALID_ARGUMENT", _request(Request("word " * 200_000))),
    Abuse("STEPS=100000", "INVALID_ARGUMENT", _request(Request("show me a red circle", output="image", steps=100_000)), "limits (issue-13a)"),
    Abuse("TEMPERATURE=nan", "INVALID_ARGUMENT", _request(Request("hi", temperature=float("nan"))), "limits (issue-13a)"),
    Abuse("TEMPERATURE=inf", "INVALID_ARGUMENT", _request(Request("hi", temperature=float("inf"))), "limits (issue-13a)"),
    Abuse("GUIDANCE=nan", "INVALID_ARGUMENT", _request(Request("show me", output="image", guidance=float("nan"))), "limits (issue-13a)"),
    Abuse("unknown output modality", "INVALID_ARGUMENT", _request(Request("x", output="smell"))),
    Abuse("unknown tensor SMELL_FILE", "INVALID_ARGUMENT", _tensors(PROMPT=PROMPT, SMELL_FILE=(np.array([b"a", b"b"], dtype=object), "BYTES"))),
    Abuse("PROMPT as INT32", "INVALID_ARGUMENT", _tensors(PROMPT=(np.array([1], np.int32), "INT32"))),
    Abuse("IMAGE_FILE of one element", "INVALID_ARGUMENT", _tensors(PROMPT=PROMPT, IMAGE_FILE=(np.array([b"x.png"], dtype=object), "BYTES"))),
    Abuse("PROMPT not UTF-8", "INVALID_ARGUMENT", _tensors(PROMPT=(np.array([b"\xff\xfe"], dtype=object), "BYTES"))),
    # Slow: the client stops waiting after 1 s; the server stops the loop at the same deadline.
    Abuse("300-step video, 1 s deadline", "DEADLINE_EXCEEDED", _request(Request("a video", output="video", steps=300), 1.0)),
)


def status_of(error: BaseException) -> str:
    if isinstance(error, InferenceServerException):
        return str(error.status()).removeprefix("StatusCode.")
    return type(error).__name__


class ServerMemory:
    """Resident memory of a server process and its children (the stubs), sampled in a thread."""

    def __init__(self, pid: int | None) -> None:
        self.process = psutil.Process(pid) if pid else None
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        total = 0
        for p in [self.process, *self.process.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def _run(self) -> None:
        start = time.monotonic()
        while True:
            self.samples.append((time.monotonic() - start, self.rss()))
            if self.stop.wait(RSS_EVERY_S):
                return

    def __enter__(self) -> ServerMemory:
        if self.process is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.process is not None:
            self.thread.join()

    def verdict(self) -> dict[str, Any]:
        """Peak of the first minute after the warm-up against the peak of the last minute."""
        if not self.samples:
            return {"measured": False}
        end = self.samples[-1][0]
        first = [r for t, r in self.samples if WARMUP_S <= t < WARMUP_S + 60] or [self.samples[0][1]]
        last = [r for t, r in self.samples if t >= end - 60]
        growth = max(last) / max(first) - 1
        return {"measured": True, "first_minute_peak_mib": max(first) / 2**20, "last_minute_peak_mib": max(last) / 2**20,
                "growth": growth, "flat": growth <= RSS_FLAT}


class Soak:
    """The clients' shared state: what to send next and what came back."""

    def __init__(self, url: str, files: dict[str, Path], abuse_every: int, seed: int) -> None:
        self.url, self.files = url, files
        schedule = []
        for i, route in enumerate(itertools.islice(itertools.cycle(ROUTES), len(ROUTES) * len(ABUSE))):
            schedule.append(("route", route))
            if (i + 1) % abuse_every == 0:
                schedule.append(("abuse", ABUSE[(i // abuse_every) % len(ABUSE)]))
        self.schedule = itertools.cycle(schedule)
        self.lock = threading.Lock()
        self.seed = itertools.count(seed)
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.lost: list[str] = []
        self.abuse: dict[str, Counter[str]] = defaultdict(Counter)
        self.abuse_ms: dict[str, list[float]] = defaultdict(list)

    def next(self) -> tuple[str, Any, int]:
        with self.lock:
            kind, what = next(self.schedule)
            return kind, what, next(self.seed)

    def client(self, deadline: float, progress: tqdm) -> None:
        with Any2AnyClient(self.url, REQUEST_TIMEOUT_S) as client:
            while time.monotonic() < deadline:
                kind, what, seed = self.next()
                start = time.perf_counter()
                if kind == "route":
                    self._route(client, what, seed, start)
                else:
                    self._abuse(client.client, what, start)
                progress.update()

    def _route(self, client: Any2AnyClient, route: str, seed: int, start: float) -> None:
        try:
            answer = client.infer(route_request(route, self.files, seed))
            ok = bool(answer.token_ids) and (ROUTES[route][2] is None or ROUTES[route][2] in answer.media)
        except Exception as e:  # noqa: BLE001 - a lost request is counted and reported, not raised in a thread
            with self.lock:
                self.lost.append(f"{route}: {status_of(e)}: {e}")
            return
        with self.lock:
            if ok:
                self.latencies[route].append(time.perf_counter() - start)
            else:
                self.lost.append(f"{route}: an answer without its tokens or media")

    def _abuse(self, client: grpcclient.InferenceServerClient, abuse: Abuse, start: float) -> None:
        try:
            abuse.send(client, self.files)
            status = "OK"
        except Exception as e:  # noqa: BLE001 - any outcome is counted against the expected status
            status = status_of(e)
        with self.lock:
            self.abuse[abuse.name][status] += 1
            self.abuse_ms[abuse.name].append((time.perf_counter() - start) * 1e3)


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1e3
    return {"count": len(ms), **{f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 95, 99)}, "max_ms": float(ms.max())}


def report(soak: Soak, memory: ServerMemory, seconds: float, concurrency: int) -> dict[str, Any]:
    sent = sum(len(v) for v in soak.latencies.values()) + len(soak.lost)
    abuse = {
        a.name: {"expected": a.expected, "got": dict(soak.abuse[a.name]), "note": a.note,
                 "ok": set(soak.abuse[a.name]) == {a.expected},
                 "p95_ms": float(np.percentile(soak.abuse_ms[a.name], 95)) if soak.abuse_ms[a.name] else None}
        for a in ABUSE
    }
    rss = memory.verdict()
    return {
        "machine": describe_machine(0),
        "seconds": seconds,
        "concurrency": concurrency,
        "well_formed": {"sent": sent, "answered": sent - len(soak.lost), "lost": soak.lost[:20]},
        "routes": {route: percentiles(v) for route, v in soak.latencies.items()},
        "abuse": abuse,
        "rss": rss,
        "rss_samples_mib": [(round(t, 1), round(r / 2**20, 1)) for t, r in memory.samples],
        "passed": not soak.lost and all(a["ok"] for a in abuse.values()) and rss.get("flat", True),
    }


def markdown(r: dict[str, Any]) -> str:
    m, wf, rss = r["machine"], r["well_formed"], r["rss"]
    lines = [
        f"# Soak ({m['cpu']}, {m['cores']} cores): {r['seconds']:.0f} s, concurrency {r['concurrency']}",
        "",
        f"Well-formed requests: {wf['sent']} sent, {wf['answered']} answered, {wf['sent'] - wf['answered']} lost.",
    ]
    if rss["measured"]:
        lines.append(
            f"Server memory (tritonserver and every stub): first minute after the {WARMUP_S:.0f} s warm-up peaked at "
            f"{rss['first_minute_peak_mib']:.0f} MiB, the last minute at {rss['last_minute_peak_mib']:.0f} MiB "
            f"({100 * rss['growth']:+.1f}%; flat means at most {100 * RSS_FLAT:.0f}%): {'flat' if rss['flat'] else 'NOT flat'}."
        )
    lines += ["", "| route | answered | p50 ms | p95 ms | p99 ms | max ms |", "|---|---|---|---|---|---|"]
    for route, s in r["routes"].items():
        lines.append(f"| {route} | {s['count']} | {s['p50_ms']:.0f} | {s['p95_ms']:.0f} | {s['p99_ms']:.0f} | {s['max_ms']:.0f} |")
    lines += ["", "| abusive request | expected | got | p95 ms | verdict |", "|---|---|---|---|---|"]
    for name, a in r["abuse"].items():
        got = ", ".join(f"{k} ×{v}" for k, v in a["got"].items()) or "not sent"
        verdict = "ok" if a["ok"] else "WRONG" + (f" (needs {a['note']})" if a["note"] else "")
        p95 = "-" if a["p95_ms"] is None else f"{a['p95_ms']:.0f}"
        lines.append(f"| {name} | {a['expected']} | {got} | {p95} | {verdict} |")
    lines += ["", f"Verdict: {'passed' if r['passed'] else 'FAILED'}."]
    return "\n".join(lines) + "\n"


def run(
    url: str, pid: int | None, files: dict[str, Path], seconds: float, concurrency: int, abuse_every: int, seed: int = 0
) -> dict[str, Any]:
    """The soak on a running server (`pid`: its process, for memory; None: not measured)."""
    soak = Soak(url, files, abuse_every, seed)
    deadline = time.monotonic() + seconds
    with ServerMemory(pid) as memory, tqdm(desc="requests", unit="req") as progress:
        workers = [threading.Thread(target=soak.client, args=(deadline, progress)) for _ in range(concurrency)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    return report(soak, memory, seconds, concurrency)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", type=Path, default=Path("engines/tiny"))
    p.add_argument("--seconds", type=float, default=300.0, help="how long the clients keep sending")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--abuse-every", type=int, default=4, help="one abusive request after this many well-formed ones")
    p.add_argument("--instances", help="ROLE=N,... for build_repo.py (default: its defaults)")
    p.add_argument("--url", help="a running server's gRPC address (default: start one here)")
    p.add_argument("--server-pid", type=int, help="with --url: the server's pid, to sample its memory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/soak.json"))
    args = p.parse_args(argv)
    build = read_manifest(args.engines)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        url, pid = args.url, args.server_pid
        if url is None:
            build_repo(args.engines, tmp / "repo", parse_instances(args.instances))
            server = stack.enter_context(TritonServer(tmp / "repo", log=tmp / "tritonserver.log", timeout_s=300))
            url, pid = server.grpc_url, server.process.pid
        files = write_sample_inputs(tmp / "inputs", build.config["imagebind"]["audio"]["sample_rate"])
        result = run(url, pid, files, args.seconds, args.concurrency, args.abuse_every, args.seed)
    md = markdown(result)
    save_report(args.json, result, md, args.engines)
    print(md)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
