"""What a benchmark ran on, and which backends can run here."""
from __future__ import annotations

import argparse
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from export.tensorrt_build import PRECISIONS
from runtime.backends import BACKENDS, BackendUnavailable, Engines

LIBRARIES = ("torch", "onnxruntime", "onnx", "transformers", "diffusers", "numpy", "tritonclient")
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


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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
