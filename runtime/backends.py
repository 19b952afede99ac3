"""Engines behind one interface: `engine.run(feeds) -> outputs`, both keyed by the spec's IO names.

`onnxruntime` runs the optimised ONNX files (CPU, CUDA or TensorRT execution provider; int8 QDQ files
on the CPU), `openvino` compiles the portable ONNX (fp32, bf16) or an NNCF-quantized IR (int8) for
the CPU, `tensorrt` runs serialized TensorRT plans, `torch` the checkpoint's modules. The pipeline
never knows which one it drives.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from runtime.versions import check_requires

# The backend labels every command takes (`--backend`, `--backends`): label -> (engine kind, device).
# The kind is what a build is made for (the manifest's `backend`); an onnxruntime build serves all
# three onnxruntime labels, its execution provider being the device.
BACKENDS = {
    "torch": ("torch", "cpu"),
    "torch-cuda": ("torch", "cuda"),
    "onnxruntime": ("onnxruntime", "cpu"),
    "onnxruntime-cuda": ("onnxruntime", "cuda"),
    "onnxruntime-trt": ("onnxruntime", "tensorrt"),
    "tensorrt": ("tensorrt", "cuda"),
    "openvino": ("openvino", "cpu"),
}

ORT_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


# what each execution provider can be asked to compute in: the CUDA provider rounds fp32 matmuls and
# convolutions through TF32 (its use_tf32, on by default) only when asked; the TensorRT provider
# computes in the file's own types (strongly typed: its fp16/bf16 flags are TensorRT's weakly typed
# path, which TensorRT 11 drops), as the CPU does
ORT_PRECISIONS = {"cpu": ("fp32",), "cuda": ("fp32", "tf32"), "tensorrt": ("fp32",)}
# options that decide what a session computes in, read back from the session (a value ONNX Runtime
# did not apply would change the numbers silently)
PRECISION_OPTIONS = {"CUDAExecutionProvider": ("use_tf32",)}
ORT_TRT_CACHE = "cache/onnxruntime-tensorrt"  # inside a build: the TensorRT provider's engine and timing caches
OV_CACHE = "cache/openvino"  # inside a build: OpenVINO's compiled models (a second open skips compiling)
# what an OpenVINO build computes in, as the CPU plugin's INFERENCE_PRECISION_HINT. fp32 and int8 say
# f32 explicitly: on a CPU with AMX the plugin's default is bf16. int8 runs its quantized layers in
# int8 and the layers NNCF left out in f32.
OV_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


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


def _profile_option(io: dict[str, Any], point: str) -> str:
    """`name:1x77x768,...`: the spec's profile as ONNX Runtime's TensorRT provider takes it."""
    return ",".join(f"{name}:{'x'.join(map(str, shapes[point]))}" for name, shapes in io["profile"].items())


def ort_providers(device: str, io: dict[str, Any], precision: str = "fp32", cache_dir: Path | None = None) -> list[Any]:
    """Execution providers with their options, most preferred first.

    The TensorRT provider gets the spec's profile (so it builds one engine for every accepted size
    instead of rebuilding as the cache grows) and an engine and a timing cache under `cache_dir`;
    the CUDA provider searches cuDNN's convolution algorithms once per shape and uses TF32 only
    when `precision` is tf32."""
    if device not in ORT_PROVIDERS:
        raise ValueError(f"unknown device {device!r}; known: {', '.join(ORT_PROVIDERS)}")
    where = io.get("name", "engine")
    if precision not in ORT_PRECISIONS[device]:
        raise ValueError(
            f"{where}: ONNX Runtime's {ORT_PROVIDERS[device][0]} computes in {' or '.join(ORT_PRECISIONS[device])}, "
            f"not {precision}; a {precision} engine is a --backend tensorrt --precision {precision} build"
        )
    if device == "cpu":
        return ["CPUExecutionProvider"]
    cuda = (
        "CUDAExecutionProvider",
        {"cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": "1", "use_tf32": "1" if precision == "tf32" else "0"},
    )
    if device == "cuda":
        return [cuda, "CPUExecutionProvider"]
    if cache_dir is None:
        raise ValueError(f"{where}: the TensorRT provider needs a folder for its engine and timing caches")
    tensorrt = {
        **{f"trt_profile_{p}_shapes": _profile_option(io, p) for p in ("min", "opt", "max")},
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(cache_dir),
    }
    return [("TensorrtExecutionProvider", tensorrt), cuda, "CPUExecutionProvider"]


def check_providers(session: Any, providers: list[Any], where: str) -> list[str]:
    """The providers `session` really runs on, after refusing one that lacks a provider it was
    given (ONNX Runtime falls back from TensorRT to CUDA to the CPU without an error, e.g. when
    libnvinfer cannot be loaded) or that applied another value of a `PRECISION_OPTIONS` option."""
    got = session.get_providers()
    asked = [(p, {}) if isinstance(p, str) else p for p in providers]
    missing = [name for name, _ in asked if name not in got]
    if missing:
        raise BackendUnavailable(
            f"{where}: ONNX Runtime opened the session without {missing[0]} and would run on {', '.join(got)}; "
            "its libraries (CUDA, cuDNN, TensorRT's libnvinfer) must load in this process"
        )
    applied = session.get_provider_options()
    for name, options in asked:
        for key in PRECISION_OPTIONS.get(name, ()):
            value = applied.get(name, {}).get(key, options.get(key))
            if key in options and value != options[key]:
                raise BackendUnavailable(f"{where}: {name} applied {key}={value}, not the asked {options[key]}")
    return got


class OrtEngine:
    def __init__(
        self,
        path: Path,
        io: dict[str, Any],
        device: str = "cpu",
        threads: int = 0,
        profile: Path | None = None,
        precision: str = "fp32",
        cache_dir: Path | None = None,
    ) -> None:
        """`profile`: a file prefix; ONNX Runtime then records every node's time, written by `end_profiling`.
        `precision` and `cache_dir` configure the GPU providers (see `ort_providers`); `providers`
        holds the ones the session really got (`check_providers`)."""
        import onnxruntime as ort

        providers = ort_providers(device, io, precision, cache_dir)
        if device == "tensorrt":
            # The TensorRT provider finds libnvinfer only if it is loaded or on the library path;
            # the tensorrt wheel loads its own copy on import.
            with contextlib.suppress(ImportError):
                import tensorrt  # noqa: F401
        if device != "cpu" and ORT_PROVIDERS[device][0] not in ort.get_available_providers():
            raise BackendUnavailable(
                f"onnxruntime has no {ORT_PROVIDERS[device][0]} here (available: {ort.get_available_providers()}); "
                "install onnxruntime-gpu with CUDA on a GPU machine"
            )
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
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
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.providers = check_providers(self.session, providers, io.get("name", "engine"))

    def end_profiling(self) -> Path:
        """The profile (Chrome trace JSON) of every run so far, for a session opened with `profile`."""
        return Path(self.session.end_profiling())

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(feeds, self.io["inputs"], self.io["dims"], self.io.get("name", "engine"))
        outputs = self.session.run(self.output_names, {n: feeds[n] for n in self.input_names})
        return dict(zip(self.output_names, outputs))


class OvEngine:
    """A component compiled by OpenVINO for the CPU, from the portable ONNX (fp32, bf16) or from the
    quantized IR an int8 build made; compiled models are cached under `cache_dir`."""

    def __init__(self, path: Path, io: dict[str, Any], precision: str = "fp32", threads: int = 0, cache_dir: Path | None = None) -> None:
        try:
            import openvino as ov
        except ImportError as e:
            raise BackendUnavailable(f"the openvino backend needs the openvino package: {e}") from None
        self.io, self.name = io, io.get("name", "engine")
        if precision not in OV_HINTS:
            raise ValueError(f"{self.name}: OpenVINO builds compute in {', '.join(OV_HINTS)}, not {precision}")
        core = ov.Core()
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache_dir)})
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": OV_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.input_names = [t["name"] for t in io["inputs"]]
        self.output_names = [t["name"] for t in io["outputs"]]
        self.ports = {n: self.compiled.output(n) for n in self.output_names}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(feeds, self.io["inputs"], self.io["dims"], self.name)
        results = self.request.infer({n: np.ascontiguousarray(feeds[n]) for n in self.input_names})
        # the request reuses its output buffers on the next call: hand out copies
        return {n: np.array(results[port]) for n, port in self.ports.items()}


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


class DeviceTensor:
    """An engine output left on the GPU because the engine takes it back on its next call (the LLM's
    KV cache). Fed to that engine, it is bound in place; anywhere else numpy reads it back to the host."""

    def __init__(self, owner: TrtEngine, data: Any, version: int) -> None:
        self.owner, self.data, self.version = owner, data, version
        self.shape = tuple(data.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(str(data.dtype).removeprefix("torch."))

    @property
    def current(self) -> bool:
        return self.owner.version == self.version

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if not self.current:
            raise ValueError(f"{self.owner.name}: this cache was overwritten by a later call; only the latest one can be read")
        host = self.data.cpu().numpy()
        return host if dtype is None else host.astype(dtype)


def _volume(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


class TrtEngine:
    """A TensorRT plan with every buffer preallocated on the device at the largest size it accepts.

    Every TensorRT call is checked and a failure names the component and the tensor; every tensor is
    bound to a valid address, empty ones included; an input shape outside the profile is refused before
    anything runs. State outputs (the LLM's present cache) stay on the device and swap places with
    their inputs, so decoding copies no cache and allocates nothing. Static-shape components (UNet,
    VAE) replay a CUDA graph captured after the first call at a shape, as NVIDIA's demo/Diffusion does.
    """

    def __init__(self, path: Path, io: dict[str, Any], cuda_graph: bool | None = None) -> None:
        trt = require_tensorrt()
        import torch

        self.trt, self.torch, self.io = trt, torch, io
        self.name = io.get("name", "engine")
        self.input_names = [t["name"] for t in io["inputs"]]
        self.output_names = [t["name"] for t in io["outputs"]]
        self.state: dict[str, str] = io.get("state", {})  # output -> the input it becomes
        self.use_graph = io.get("static_shapes", False) if cuda_graph is None else cuda_graph
        if self.use_graph and self.state:
            # its state buffers swap places on every call, and a graph replays the addresses it captured
            raise ValueError(f"{self.name}: a CUDA graph cannot drive a stateful engine (its cache moves between calls)")
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise BackendUnavailable(f"{path}: TensorRT cannot load this plan (built for another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f"{self.name}: TensorRT could not create an execution context (out of GPU memory?)")
        self._check_io()
        self.stream = torch.cuda.Stream()
        self.buffers = self._allocate()
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.graphs: dict[tuple[Any, ...], Any] = {}  # input shapes -> the CUDA graph captured at them
        self.version = 0

    def _check_io(self) -> None:
        """The plan's tensors are the manifest's, each an input or output as declared, in its dtype
        (the buffers are allocated in the manifest's dtype; TensorRT reads them as the plan's)."""
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        modes = {n: self.engine.get_tensor_mode(n) for n in names}
        want = {**{n: self.trt.TensorIOMode.INPUT for n in self.input_names}, **{n: self.trt.TensorIOMode.OUTPUT for n in self.output_names}}
        if modes != want:
            raise RuntimeError(f"{self.name}: the plan's tensors {sorted(modes)} are not the manifest's {sorted(want)}")
        for t in [*self.io["inputs"], *self.io["outputs"]]:
            planned = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(t["name"])))
            if planned != np.dtype(t["dtype"]):
                raise RuntimeError(f"{self.name}: the plan's tensor {t['name']!r} is {planned}, the manifest's {t['dtype']}")

    def _max_shape(self, name: str) -> tuple[int, ...]:
        """An input's profile maximum; an output's from the spec's axis ranges, or from TensorRT with
        every input at its maximum where an axis is not declared (the vocoder's samples)."""
        if name in self.input_names:
            return tuple(self.engine.get_tensor_profile_shape(name, 0)[2])
        spec = next(t for t in self.io["outputs"] if t["name"] == name)
        dims = self.io["dims"]
        if all(isinstance(d, int) or d in dims for d in spec["shape"]):
            return tuple(d if isinstance(d, int) else dims[d][2] for d in spec["shape"])
        for n in self.input_names:
            self._set_input_shape(n, self._max_shape(n))
        return tuple(self.context.get_tensor_shape(name))

    def _allocate(self) -> dict[str, Any]:
        """One device buffer per tensor, never empty; a state output and its input share one size."""
        sizes = {n: _volume(self._max_shape(n)) for n in [*self.input_names, *self.output_names]}
        for out, inp in self.state.items():
            sizes[out] = sizes[inp] = max(sizes[out], sizes[inp])
        dtype = {t["name"]: getattr(self.torch, t["dtype"]) for t in [*self.io["inputs"], *self.io["outputs"]]}
        return {n: self.torch.empty(max(1, size), dtype=dtype[n], device="cuda") for n, size in sizes.items()}

    def _view(self, name: str, shape: tuple[int, ...]) -> Any:
        return self.buffers[name][: _volume(shape)].view(shape)

    def _set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
        low, _, high = (tuple(s) for s in self.engine.get_tensor_profile_shape(name, 0))
        if len(shape) != len(low) or any(not lo <= s <= hi for s, lo, hi in zip(shape, low, high)):
            raise ValueError(f"{self.name}: input {name!r} has shape {shape}, outside the engine's profile {low}..{high}")
        if not self.context.set_input_shape(name, shape):
            raise RuntimeError(f"{self.name}: TensorRT refused shape {shape} for input {name!r}")

    def _output_shape(self, name: str) -> tuple[int, ...]:
        shape = tuple(self.context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise RuntimeError(f"{self.name}: TensorRT cannot tell the shape of output {name!r} ({shape})")
        spec = next(t for t in self.io["outputs"] if t["name"] == name)
        for axis, size in zip(spec["shape"], shape):
            if isinstance(axis, str) and axis in self.io["dims"] and size > self.io["dims"][axis][2]:
                raise ValueError(f"{self.name}: output {name!r} axis {axis!r} would be {size}, beyond the engine's {self.io['dims'][axis][2]}")
        if _volume(shape) > self.buffers[name].numel():
            raise ValueError(f"{self.name}: output {name!r} would have shape {shape}, beyond its preallocated buffer")
        return shape

    def _bind(self, names: list[str]) -> None:
        for n in names:
            if not self.context.set_tensor_address(n, self.buffers[n].data_ptr()):
                raise RuntimeError(f"{self.name}: TensorRT refused the address of tensor {n!r}")

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"{self.name}: TensorRT execute_async_v3 failed")

    def _upload(self, name: str, value: Any) -> None:
        if isinstance(value, DeviceTensor) and value.current and value.data.data_ptr() == self.buffers[name].data_ptr():
            return  # the cache this engine wrote on its last call, already in this input's buffer
        host = self.torch.from_numpy(np.ascontiguousarray(np.asarray(value)))
        self._view(name, tuple(host.shape)).copy_(host, non_blocking=True)

    def _launch(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Run once; a static-shape engine captures a CUDA graph on its first call at these shapes and
        replays it whenever they come back (buffer addresses never change, which a graph needs), so
        batches of changing size (Triton's dynamic batching) each keep theirs: at most one per batch
        size the profile allows."""
        key = tuple(shapes.items())
        if self.use_graph and key in self.graphs:
            self.graphs[key].replay()
            return
        self._execute()  # eager first: TensorRT finishes its shape-dependent set-up before any capture
        if self.use_graph:
            graph = self.torch.cuda.CUDAGraph()
            with self.torch.cuda.graph(graph, stream=self.stream):
                self._execute()
            self.graphs[key] = graph

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        check_feeds(feeds, self.io["inputs"], self.io["dims"], self.name)
        shapes = {n: tuple(feeds[n].shape) for n in self.input_names}
        if shapes != self.shapes:
            self.shapes = {}  # unknown until every input is set: a refusal half way leaves the context mixed
            for n, shape in shapes.items():
                self._set_input_shape(n, shape)
            self.shapes = shapes
        out_shapes = {n: self._output_shape(n) for n in self.output_names}
        with self.torch.cuda.stream(self.stream):
            for n in self.input_names:
                self._upload(n, feeds[n])
            self._bind([*self.input_names, *self.output_names])
            self._launch(shapes)
        self.stream.synchronize()
        return self._results(out_shapes)

    def _results(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
        """Host arrays, and the state outputs as device tensors after swapping them into their inputs' place."""
        results = {n: self._view(n, s).cpu().numpy() for n, s in shapes.items() if n not in self.state}
        if self.state:
            self.version += 1
            for out, inp in self.state.items():
                self.buffers[out], self.buffers[inp] = self.buffers[inp], self.buffers[out]
                results[out] = DeviceTensor(self, self._view(inp, shapes[out]), self.version)
        return {n: results[n] for n in self.output_names}


class TorchEngine:
    """The checkpoint's PyTorch module for a component: the reference behind the same interface.
    On `cuda`, `precision` fp16/bf16 runs it under autocast (tf32: see `Engines`)."""

    def __init__(self, module: Any, io: dict[str, Any], device: str = "cpu", precision: str = "fp32") -> None:
        import torch

        self.torch, self.io, self.device = torch, io, device
        self.module = module.to(device)
        autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}
        self.autocast = torch.autocast(device, dtype=autocast[precision]) if precision in autocast else None
        self.input_names = [t["name"] for t in io["inputs"]]
        self.output_names = [t["name"] for t in io["outputs"]]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(feeds, self.io["inputs"], self.io["dims"], self.io.get("name", "engine"))
        args = [self.torch.from_numpy(np.asarray(feeds[n])).to(self.device) for n in self.input_names]
        with self.torch.no_grad(), (self.autocast or contextlib.nullcontext()):
            out = self.module(*args)
        out = out if isinstance(out, tuple) else (out,)
        return {n: o.float().cpu().numpy() if o.is_floating_point() else o.cpu().numpy() for n, o in zip(self.output_names, out)}


def resolve_backend(label: str) -> tuple[str, str]:
    """(engine kind, device) of a backend label; an unknown label is refused by name."""
    if label not in BACKENDS:
        raise ValueError(f"unknown backend {label!r}; known: {', '.join(BACKENDS)}")
    return BACKENDS[label]


def labels_for(kind: str) -> list[str]:
    """The labels a build of engine kind `kind` serves (torch runs from the checkpoint, beside any build)."""
    return [label for label, (k, _) in BACKENDS.items() if k == kind]


class Engines:
    """A build's components on one backend, each opened on first use and kept.

    Engine files are checked against the manifest's hashes when the set is created, so a stale or
    missing engine is refused before any request is served.
    """

    def __init__(self, build: Any, backend: str = "onnxruntime", threads: int = 0, precision: str = "fp32") -> None:
        """`backend`: a label of `BACKENDS`; `precision`: what torch on cuda (tf32, fp16, bf16) and ONNX
        Runtime's CUDA provider (tf32) compute in instead of fp32 (a TensorRT plan and the TensorRT
        provider compute in the build's own types)."""
        kind, device = resolve_backend(backend)
        self.build, self.backend, self.kind, self.device = build, backend, kind, device
        self.threads, self.precision = threads, precision
        self.opened: dict[str, Engine] = {}
        self._model: Any = None
        if kind == "tensorrt":
            require_tensorrt()
        check_build_serves(build, backend)
        if kind != "torch":
            for name, entry in build.components.items():
                check_requires(entry.get("requires", {}), f"{build.root} ({name}, {entry['backend']} {entry['precision']})")
        if kind == "torch" and device != "cpu":
            import torch

            if not torch.cuda.is_available():
                raise BackendUnavailable(f"the {backend} backend needs a CUDA GPU; torch.cuda.is_available() is False")
            if precision in ("fp32", "tf32"):
                # fp32 means IEEE fp32: torch lets cuDNN convolutions round through TF32 by default
                # (a 10-bit mantissa), which would put the GPU reference itself outside fp32 tolerances;
                # TF32 only when asked. Set here, not when an engine opens, so that a benchmark records
                # the state it runs in.
                torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        if kind != "torch":
            build.verify_files()

    def io(self, name: str) -> dict[str, Any]:
        return {"name": name, **self.build.component(name)}

    def __getitem__(self, name: str) -> Engine:
        if name not in self.opened:
            self.opened[name] = self._open(name)
        return self.opened[name]

    def _open(self, name: str) -> Engine:
        entry = self.build.component(name)
        if self.kind == "onnxruntime":
            # the CPU provider runs the CPU-fused file, the GPU providers the portable one
            if "provider_files" not in entry:
                raise BackendUnavailable(f"{self.build.root}: {name} predates per-provider files; rebuild it with export/build_engines.py")
            if self.device not in entry["provider_files"]:
                raise BackendUnavailable(
                    f"{self.build.root}: {name} is an onnxruntime {entry['precision']} build for the CPU provider; {self.backend} runs fp32 builds"
                )
            path = self.build.path(entry["provider_files"][self.device])
            cache = self.build.root / ORT_TRT_CACHE if self.device == "tensorrt" else None
            return OrtEngine(path, self.io(name), self.device, self.threads, precision=self.precision, cache_dir=cache)
        if self.kind == "tensorrt":
            return TrtEngine(self.build.path(entry["engine"]), self.io(name))
        if self.kind == "openvino":
            cache = self.build.root / OV_CACHE
            return OvEngine(self.build.path(entry["engine"]), self.io(name), entry["precision"], self.threads, cache)
        return TorchEngine(self._torch_module(name), self.io(name), self.device, self.precision)

    def _torch_module(self, name: str) -> Any:
        # The torch backend needs the training code and the checkpoint the build was made from.
        from train.model import load_checkpoint

        if self._model is None:
            self._model = load_checkpoint(Path(self.build.data["checkpoint"]["path"]))
        return torch_component(self._model, name, self.device)


def check_build_serves(build: Any, backend: str) -> None:
    """Refuse, in one line, a backend label the build's engines cannot run under."""
    kind, _ = resolve_backend(backend)
    kinds = {c["backend"] for c in build.components.values()}
    if kind != "torch" and kinds != {kind}:
        made = "/".join(sorted(kinds))
        serves = ", ".join(label for k in sorted(kinds) for label in labels_for(k))
        raise BackendUnavailable(f"{build.root} holds engines for {made}: they serve {serves} (and torch), not {backend}")


def torch_component(model: Any, name: str, where: Any) -> Any:
    """A component's module with everything it computes with moved `where` (a device or a dtype).
    Both moves are needed: a component reaches parts of the model that are not its submodules (an
    encoder's bound method), and the model does not hold the decoders as submodules."""
    from train.components import build_component

    return build_component(model.to(where), name).to(where)
