"""Engines behind one interface: `engine.run(feeds) -> outputs`, both keyed by the spec's IO names.

`onnxruntime` runs the optimised ONNX files (CPU, CUDA or TensorRT execution provider), `tensorrt`
runs serialized TensorRT plans. The pipeline never knows which one it drives.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

ORT_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class BackendUnavailable(RuntimeError):
    """A backend whose library or device is missing on this machine."""


class Engine(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def check_feeds(
    feeds: dict[str, np.ndarray], inputs: list[dict[str, Any]], dims: dict[str, list[int]], where: str
) -> None:
    """Names, ranks, fixed sizes and dtypes as the manifest declares them, and every dynamic axis
    within the (min, opt, max) range `dims` gives it (what the engine was built and verified
    for; a TensorRT profile refuses anything else); a clear error otherwise."""
    missing = [t["name"] for t in inputs if t["name"] not in feeds]
    if missing:
        raise ValueError(f"{where}: missing input {missing[0]!r}")
    for t in inputs:
        value = feeds[t["name"]]
        if value.dtype != np.dtype(t["dtype"]):
            raise ValueError(f"{where}: input {t['name']!r} is {value.dtype}, expected {t['dtype']}")
        fixed = [d if isinstance(d, int) else None for d in t["shape"]]
        if value.ndim != len(fixed) or any(f is not None and f != s for f, s in zip(fixed, value.shape)):
            shown = tuple(d if isinstance(d, int) else str(d) for d in t["shape"])
            raise ValueError(f"{where}: input {t['name']!r} has shape {value.shape}, expected {shown}")
        for axis, size in zip(t["shape"], value.shape):
            if isinstance(axis, str) and not dims[axis][0] <= size <= dims[axis][-1]:
                low, high = dims[axis][0], dims[axis][-1]
                raise ValueError(f"{where}: input {t['name']!r} axis {axis!r} is {size}, outside the engine's range {low}..{high}")


class OrtEngine:
    def __init__(
        self, path: Path, io: dict[str, Any], device: str = "cpu", threads: int = 0, profile: Path | None = None
    ) -> None:
        """`profile`: a file prefix; ONNX Runtime then records every node's time, written by `end_profiling`."""
        import onnxruntime as ort

        if device != "cpu" and ORT_PROVIDERS[device][0] not in ort.get_available_providers():
            raise BackendUnavailable(
                f"onnxruntime has no {ORT_PROVIDERS[device][0]} here (available: {ort.get_available_providers()}); "
                "install onnxruntime-gpu with CUDA on a GPU machine"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        # Idle ORT workers spin by default; between engine calls the pipeline runs torch (the
        # schedulers) and numpy on the same cores, which spinning threads would slow down.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if profile is not None:
            options.enable_profiling, options.profile_file_prefix = True, str(profile)
        self.io = io
        self.input_names = [t["name"] for t in io["inputs"]]
        self.output_names = [t["name"] for t in io["outputs"]]
        self.session = ort.InferenceSession(str(path), options, providers=ORT_PROVIDERS[device])

    def end_profiling(self) -> Path:
        """The profile (Chrome trace JSON) of every run so far, for a session opened with `profile`."""
        return Path(self.session.end_profiling())

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(feeds, self.io["inputs"], self.io["dims"], self.io.get("name", "engine"))
        outputs = self.session.run(self.output_names, {n: feeds[n] for n in self.input_names})
        return dict(zip(self.output_names, outputs))


def require_tensorrt() -> Any:
    """The tensorrt module and a CUDA device, or a message naming what is missing."""
    try:
        import tensorrt
    except (ImportError, OSError) as e:
        raise BackendUnavailable(
            f"the tensorrt backend needs NVIDIA TensorRT (Python bindings + libnvinfer) and a CUDA GPU: {e}"
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("the tensorrt backend needs a CUDA GPU; torch.cuda.is_available() is False")
    return tensorrt


class TrtEngine:
    """A TensorRT plan with device-resident buffers, reused across calls while shapes repeat."""

    def __init__(self, path: Path, io: dict[str, Any]) -> None:
        trt = require_tensorrt()
        import torch

        self.torch, self.io = torch, io
        self.input_names = [t["name"] for t in io["inputs"]]
        self.output_names = [t["name"] for t in io["outputs"]]
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise BackendUnavailable(f"{path}: TensorRT cannot load this plan (built for another GPU or version?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.buffers: dict[str, Any] = {}

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: str) -> Any:
        buf = self.buffers.get(name)
        if buf is None or tuple(buf.shape) != shape:
            buf = self.torch.empty(shape, dtype=getattr(self.torch, dtype), device="cuda")
            self.buffers[name] = buf
        return buf

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(feeds, self.io["inputs"], self.io["dims"], self.io.get("name", "engine"))
        with self.torch.cuda.stream(self.stream):
            for t in self.io["inputs"]:
                value = feeds[t["name"]]
                buf = self._buffer(t["name"], value.shape, t["dtype"])
                buf.copy_(self.torch.from_numpy(value), non_blocking=True)
                self.context.set_input_shape(t["name"], value.shape)
                self.context.set_tensor_address(t["name"], buf.data_ptr())
            for t in self.io["outputs"]:
                shape = tuple(self.context.get_tensor_shape(t["name"]))
                self.context.set_tensor_address(t["name"], self._buffer(t["name"], shape, t["dtype"]).data_ptr())
            self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return {n: self.buffers[n].cpu().numpy() for n in self.output_names}


class TorchEngine:
    """The checkpoint's PyTorch module for a component: the reference behind the same interface."""

    def __init__(self, module: Any, io: dict[str, Any]) -> None:
        import torch

        self.torch, self.module, self.io = torch, module, io
        self.input_names = [t["name"] for t in io["inputs"]]
        self.output_names = [t["name"] for t in io["outputs"]]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(feeds, self.io["inputs"], self.io["dims"], self.io.get("name", "engine"))
        with self.torch.no_grad():
            out = self.module(*(self.torch.from_numpy(feeds[n]) for n in self.input_names))
        out = out if isinstance(out, tuple) else (out,)
        return {n: o.numpy() for n, o in zip(self.output_names, out)}


BACKENDS = ("onnxruntime", "tensorrt", "torch")


class Engines:
    """A build's components on one backend, each opened on first use and kept.

    Engine files are checked against the manifest's hashes when the set is created, so a stale or
    missing engine is refused before any request is served.
    """

    def __init__(self, build: Any, backend: str = "onnxruntime", device: str = "cpu", threads: int = 0) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
        self.build, self.backend, self.device, self.threads = build, backend, device, threads
        self.opened: dict[str, Engine] = {}
        self._model: Any = None
        if backend == "tensorrt":
            require_tensorrt()
        if backend != "torch":
            build.verify_files()
            wrong = [n for n, c in build.components.items() if c["backend"] != backend]
            if wrong:
                raise BackendUnavailable(f"{build.root}: {wrong[0]} was built for {build.components[wrong[0]]['backend']}, not {backend}")

    def io(self, name: str) -> dict[str, Any]:
        return {"name": name, **self.build.component(name)}

    def __getitem__(self, name: str) -> Engine:
        if name not in self.opened:
            self.opened[name] = self._open(name)
        return self.opened[name]

    def _open(self, name: str) -> Engine:
        entry = self.build.component(name)
        if self.backend == "onnxruntime":
            return OrtEngine(self.build.path(entry["engine"]), self.io(name), self.device, self.threads)
        if self.backend == "tensorrt":
            return TrtEngine(self.build.path(entry["engine"]), self.io(name))
        return TorchEngine(self._torch_module(name), self.io(name))

    def _torch_module(self, name: str) -> Any:
        # The torch backend needs the training code and the checkpoint the build was made from.
        from train.components import build_component
        from train.model import load_checkpoint

        if self._model is None:
            self._model = load_checkpoint(Path(self.build.data["checkpoint"]["path"]))
        return build_component(self._model, name)
