"""What a benchmark ran on, and which backends can run here."""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from export.tensorrt_build import PRECISIONS
from runtime.backends import BackendUnavailable, Engines
from runtime.manifest import MANIFEST, sha256_tree

ROOT = Path(__file__).resolve().parents[1]
# the flags that decide which kernels a CPU library picks (a result on AMX is no result for AVX2)
ISA_PREFIXES = ("avx", "amx", "fma", "f16c", "sse4")
LIBRARIES = ("torch", "onnxruntime", "onnx", "transformers", "diffusers", "numpy", "tritonclient")
# benchmark backend name -> (runtime backend, device)
BACKENDS = {
    "torch": ("torch", "cpu"),
    "onnxruntime": ("onnxruntime", "cpu"),
    "onnxruntime-cuda": ("onnxruntime", "cuda"),
    "onnxruntime-trt": ("onnxruntime", "tensorrt"),
    "tensorrt": ("tensorrt", "cuda"),
    "torch-cuda": ("torch", "cuda"),
}
# the backends that compute in a run's --precision (torch under autocast, the TensorRT provider's
# flags); the others compute in what the build made (ONNX Runtime CPU and CUDA: the file's fp32, a
# TensorRT plan: its own precision)
ASKED_PRECISION = ("torch-cuda", "onnxruntime-trt")


def computes_in(label: str, precision: str) -> str:
    """The precision a backend computes in when a run asks for `precision`."""
    return precision if label in ASKED_PRECISION else "fp32"


def add_precision_and_inputs(parser: argparse.ArgumentParser) -> None:
    """--precision and --inputs, as compare_latency and compare_precision both take them."""
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help=f"what {', '.join(ASKED_PRECISION)} compute in")
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


def cpu_flags() -> list[str]:
    """Every flag /proc/cpuinfo reports (empty where there is none)."""
    return sorted((_cpuinfo("flags") or "").split())


def isa_flags(flags: list[str]) -> list[str]:
    return [f for f in flags if f.startswith(ISA_PREFIXES)]


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


def provenance(checkpoint: Path | None) -> dict[str, Any]:
    """Where a result comes from: the code's commit (dirty: tracked files differ from it), the
    checkpoint's hash (`sha256_tree` of its folder), the CPU and its flags."""
    commit = _git("rev-parse", "HEAD")
    found = checkpoint is not None and Path(checkpoint).is_dir()
    return {
        "commit": commit,
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None,
        "checkpoint": {"path": str(checkpoint) if checkpoint else None, "sha256": sha256_tree(Path(checkpoint)) if found else None},
        "cpu": _cpu_model(),
        "cpu_flags": cpu_flags(),
    }


def provenance_line(p: dict[str, Any]) -> str:
    """One Markdown line naming where a result comes from."""
    commit = f"{p['commit'][:12]}{' (with uncommitted changes)' if p['dirty'] else ''}" if p["commit"] else "unknown"
    digest = p["checkpoint"]["sha256"]
    return (f"Commit {commit}; checkpoint `{p['checkpoint']['path']}` sha256 {digest[:16] if digest else 'unknown'}; "
            f"CPU {p['cpu']} ({' '.join(isa_flags(p['cpu_flags'])) or 'flags unknown'}).")


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


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
        "libraries": {name: _version(name) for name in LIBRARIES},
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
    """The engine pipeline of a benchmark backend label (`onnxruntime-cuda` and friends)."""
    from runtime.pipeline import Any2AnyPipeline

    backend, device = BACKENDS[label]
    return Any2AnyPipeline(build_dir, backend, device, threads, wrap, precision=computes_in(label, precision))


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
        backend, device = BACKENDS[name]
        if device != "cpu" and not torch.cuda.is_available():
            unavailable[name] = "no CUDA GPU on this machine"
            continue
        try:
            engines[name] = Engines(build, backend, device, threads, computes_in(name, precision))
        except BackendUnavailable as e:
            unavailable[name] = str(e)
    return engines, unavailable
