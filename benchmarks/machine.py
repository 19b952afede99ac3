"""What a benchmark ran on, and which backends can run here."""
from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from runtime.backends import BackendUnavailable, Engines

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
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
    }


def thread_budget(threads: int) -> int:
    """The one thread count every CPU backend gets (0: every core), applied to torch here."""
    import torch

    budget = threads or os.cpu_count() or 1
    torch.set_num_threads(budget)
    return budget


def open_pipeline(build_dir: Any, label: str, threads: int, wrap: Any = None) -> Any:
    """The engine pipeline of a benchmark backend label (`onnxruntime-cuda` and friends)."""
    from runtime.pipeline import Any2AnyPipeline

    backend, device = BACKENDS[label]
    return Any2AnyPipeline(build_dir, backend, device, threads, wrap)


def backend_engines(build: Any, names: list[str], threads: int = 0) -> tuple[dict[str, Engines], dict[str, str]]:
    """Engines for each backend that can run here, and the reason for each that cannot."""
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
            engines[name] = Engines(build, backend, device, threads)
        except BackendUnavailable as e:
            unavailable[name] = str(e)
    return engines, unavailable
