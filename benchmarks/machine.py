"""What a benchmark ran on, and which backends can run here."""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from runtime.backends import BACKENDS, BackendUnavailable, Engines
from runtime.manifest import MANIFEST, sha256_tree
from runtime.precision import RUN_PRECISIONS
from runtime.versions import cpu_flags, installed_version, isa_flags

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("torch", "onnxruntime", "onnx", "transformers", "diffusers", "numpy", "tritonclient")
# the backends that compute in a run's --precision, and the precisions each takes: torch on CUDA
# (autocast, or TF32 matmuls and convolutions) and the CUDA provider (its use_tf32 option). The others
# compute in what the build made: the CPU, and the TensorRT provider and plans, which take the
# precision from the file (strongly typed; TensorRT 11 has no other way).
ASKED_PRECISION = {"torch-cuda": ("tf32", "fp16", "bf16"), "onnxruntime-cuda": ("tf32",)}


def computes_in(label: str, precision: str) -> str:
    """The precision a backend computes in when a run asks for `precision`."""
    return precision if precision in ASKED_PRECISION.get(label, ()) else "fp32"


def add_precision_and_inputs(parser: argparse.ArgumentParser) -> None:
    """--precision and --inputs, as compare_latency and compare_precision both take them."""
    asked = "; ".join(f"{label}: {', '.join(p)}" for label, p in ASKED_PRECISION.items())
    parser.add_argument("--precision", choices=RUN_PRECISIONS, default="fp32", help=f"what the GPU backends compute in where they can ({asked})")
    parser.add_argument("--inputs", type=Path, help="the demo's sample inputs already written here (default: written to a temporary folder)")


def _cpuinfo(field: str) -> str | None:
    try:
        for line in open("/proc/cpuinfo"):
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or "unknown"


def _git(*args: str) -> str | None:
    try:
        run = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return run.stdout.strip() if run.returncode == 0 else None


def build_checkpoint(build_dir: Path) -> Path | None:
    """The checkpoint folder a build's manifest says it came from."""
    try:
        return Path(json.loads((Path(build_dir) / MANIFEST).read_text())["checkpoint"]["path"])
    except (OSError, KeyError, ValueError):
        return None


def provenance(checkpoint: Path | None, random_weights: str | None = None) -> dict[str, Any]:
    """Where a result comes from: the code's commit (dirty: tracked files differ from it), the
    checkpoint's hash (`sha256_tree` of its folder) or, for a run on seeded random weights, what
    they are (`random_weights`, e.g. "nextgpt-7b, seed 0"), the CPU and its flags."""
    commit = _git("rev-parse", "HEAD")
    found = checkpoint is not None and Path(checkpoint).is_dir()
    weights = {"path": str(checkpoint) if checkpoint else None, "sha256": sha256_tree(Path(checkpoint)) if found else None}
    if random_weights:
        weights["random"] = random_weights
    return {
        "commit": commit,
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None,
        "checkpoint": weights,
        "cpu": _cpu_model(),
        "cpu_flags": cpu_flags(),
    }


def provenance_line(p: dict[str, Any]) -> str:
    """One Markdown line naming where a result comes from."""
    commit = f"{p['commit'][:12]}{' (with uncommitted changes)' if p['dirty'] else ''}" if p["commit"] else "unknown"
    digest, random = p["checkpoint"]["sha256"], p["checkpoint"].get("random")
    weights = f"random weights {random}" if random else f"checkpoint `{p['checkpoint']['path']}` sha256 {digest[:16] if digest else 'unknown'}"
    return (f"Commit {commit}; {weights}; "
            f"CPU {p['cpu']} ({' '.join(isa_flags(p['cpu_flags'])) or 'flags unknown'}).")


def describe_machine(threads: int) -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": _cpu_model(),
        "cpu_flags": isa_flags(cpu_flags()),
        "cores": os.cpu_count(),
        "threads": threads or os.cpu_count(),
        "gpu": gpu,
        "cuda": _cuda(torch) if gpu else None,
        "python": platform.python_version(),
        "libraries": {name: installed_version(name) or "not installed" for name in LIBRARIES},
    }


def _cuda(torch: Any) -> dict[str, Any]:
    """What decides GPU numbers besides the chip: driver-side versions and whether fp32 is really fp32."""
    return {
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }


def thread_budget(threads: int) -> int:
    """The one thread count every CPU backend gets (0: every core), applied to torch here."""
    import torch

    budget = threads or os.cpu_count() or 1
    torch.set_num_threads(budget)
    return budget


def open_pipeline(build_dir: Any, label: str, threads: int, wrap: Any = None, precision: str = "fp32") -> Any:
    """The engine pipeline of a backend label (`onnxruntime-cuda` and friends)."""
    from runtime.pipeline import Any2AnyPipeline

    return Any2AnyPipeline(build_dir, label, threads, wrap, precision=computes_in(label, precision))


def backend_engines(
    build: Any, names: list[str], threads: int = 0, precision: str = "fp32"
) -> tuple[dict[str, Engines], dict[str, str]]:
    """Engines for each backend that can run here, and the reason for each that cannot; the
    `ASKED_PRECISION` backends compute in `precision`."""
    import torch

    engines: dict[str, Engines] = {}
    unavailable: dict[str, str] = {}
    for name in names:
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
        if BACKENDS[name][1] != "cpu" and not torch.cuda.is_available():
            unavailable[name] = "no CUDA GPU on this machine"
            continue
        try:
            engines[name] = Engines(build, name, threads, computes_in(name, precision))
        except BackendUnavailable as e:
            unavailable[name] = str(e)
    return engines, unavailable
