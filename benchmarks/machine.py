"""What a benchmark ran on, and which backends can run here."""
from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path
from typing import Any

from runtime.backends import BackendUnavailable, Engines
from runtime.precision import RUN_PRECISIONS
from runtime.versions import installed_version

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


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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
