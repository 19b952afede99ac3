"""Write a Triton model repository for a build of engines.

    python triton_repo/build_repo.py --engines engines/tiny --out triton_models \\
        [--backend onnxruntime|onnxruntime-cuda|onnxruntime-trt|tensorrt] [--engines-at /engines/tiny] \\
        [--instances media=4,llm=2] [--max-queue-delay-us 0] [--bls auto|all|unets|none] [--threads 0] \\
        [--native] [--limits NAME=VALUE,...] [--deadline-s 300] [--max-queue-size 64] [--upload-dir DIR] [--force]

Models (every config is generated from the manifest's IO and `triton_repo/protocol.py`; the
models read the build in place). The repository moves: it names the build by its path relative
to the repository, so the two copied together (keeping their relative places) serve the same
answers anywhere; or, with `--engines-at`, by the path where the build will be mounted where the
server runs (a container's volume), which need not exist here.

- one model per stateless engine whose every tensor has the batch as its first axis (encoders,
  projectors, UNets, VAE decoders, vocoder): `max_batch_size` is the spec's batch maximum and
  dynamic batching merges concurrent requests. A Python model hosting the runtime's engine by
  default; with `--native`, an `onnxruntime_onnx` or `tensorrt_plan` config over the build's
  file, for NVIDIA's Triton container (the `nvidia-pytriton` server has only the Python backend).
- `preprocess` (files -> clips), `encode` (clips -> media token), `llm` (-> text, token ids,
  signal states; the LLM keeps its KV cache inside) and `media` (-> image, video, audio):
  Python models hosting the runtime, calling the engine models through BLS.
- `any2any`: the ensemble preprocess -> encode -> llm -> media.
- `any2any_stream`: decoupled; the whole pipeline, sending text pieces and denoising steps as they come.

`--instances ROLE=N,...` sets instance counts (roles: preprocess, encode, llm, media,
any2any_stream, engines); several `media` instances are what lets concurrent denoising loops
share UNet batches. `--max-queue-delay-us` is how long an engine model waits to fill a batch.

Deadlines and queues (`Serving`): every request has a deadline, the client's timeout (the
`timeout` request parameter, which `triton_repo/client.py` sends with its gRPC deadline) or at most
`--deadline-s` (the default and the ceiling). The pipeline models stop their token and denoising
loops at the next step once it passes or the client cancels, answering CANCELLED. Every model
except the ensemble queues through Triton's dynamic batcher with `default_queue_policy`: at most
`--max-queue-size` requests wait per model (more are refused at once, UNAVAILABLE "Exceeds
maximum queue size"), and one that waits past its deadline is rejected (UNAVAILABLE "Request
timeout expired"; `allow_timeout_override` lets a client's shorter timeout apply). The pipeline
models have `max_batch_size: 0`, so their batcher only queues: one request per execution.
`--bls` says which engine models the pipeline models call (the others they run in process):
`all` batches every engine across requests; each call is a round trip between processes (about
1 ms on 2 CPU cores), which a small model's request feels. `unets` keeps the batching where a
request calls an engine once per denoising step; `none` has the least latency and no batching
across requests. `auto` (the default) is `all` where the engines run on a GPU, where shared
batches raise throughput, and `none` on CPU, where the cores are busy either way and measured
`none` gave both the lower latency and the higher throughput (docs/notes/results/triton_load*.md).
`--limits` replaces any of the build's request limits (runtime/limits.py); the pipeline models
refuse what exceeds them, and repo.json records the values in force.
The repository is written beside OUT and moved in whole; OUT is only ever replaced if it is a
repository this script wrote, and from the command line only with `--force`.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from runtime.backends import BACKENDS, check_build_serves
from runtime.cli import add_backend, add_force, make_parser, refuse_non_empty
from runtime.inputs import INPUT_MODALITIES
from runtime.limits import Limits
from runtime.manifest import Build, read_manifest
from runtime.pipeline import ENCODERS
from runtime.request import OUTPUT_MODALITIES
from runtime.response import media_meta
from triton_repo.protocol import (
    ENSEMBLE, FILES, MEDIA, MEDIA_ORDER, MEDIA_TOKEN, PARAMS, PROGRESS, PROTOCOL, STREAM, TEXT, TRITON_DTYPES, Tensor, clips_name, engine_dims,
    hidden_name,
)

ROLES = ("preprocess", "encode", "llm", "media")  # the ensemble's steps, in order
DEFAULT_INSTANCES = {"preprocess": 1, "encode": 1, "llm": 2, "media": 4, STREAM: 1, "engines": 1}
BLS = {"all": lambda name: True, "unets": lambda name: name.endswith("_unet"), "none": lambda name: False}
BLS_CHOICES = ("auto", *BLS)
NATIVE_PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
SERVED_BACKENDS = tuple(label for label, (kind, _) in BACKENDS.items() if kind in NATIVE_PLATFORMS)
MODEL_SOURCES = Path(__file__).resolve().parent / "models"
MARKER = "repo.json"  # what this script generated; its presence makes OUT replaceable


@dataclass(frozen=True)
class Serving:
    """How long a request may take, how many may wait per model (see the module's docstring), and
    where the models save uploaded files (empty: the system's temporary folder)."""

    deadline_s: float = 300.0  # the longest request the tiny CPU build serves takes seconds; a 7B build on a GPU, about a minute
    max_queue_size: int = 64  # per model: eight clients' worth of requests for each of the default instances
    upload_dir: str = ""

    def __post_init__(self) -> None:
        if not self.deadline_s > 0:
            raise ValueError(f"--deadline-s must be above 0, got {self.deadline_s}")
        if self.max_queue_size < 1:
            raise ValueError(f"--max-queue-size must be at least 1, got {self.max_queue_size}")

    def queue_policy(self) -> dict[str, Any]:
        """Triton's `default_queue_policy` (inside `dynamic_batching`)."""
        return {
            "timeout_action": Enum("REJECT"),
            "default_timeout_microseconds": round(self.deadline_s * 1e6),
            "allow_timeout_override": True,
            "max_queue_size": self.max_queue_size,
        }


class Enum(str):
    """A protobuf enum value: written bare in the text format."""


def pbtxt(message: dict[str, Any], indent: int = 0) -> str:
    """Protobuf text format of a message given as a dict; a list of dicts is a repeated message."""
    pad, lines = " " * indent, []
    for key, value in message.items():
        if isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], dict)):
            for item in value if isinstance(value, list) else [value]:
                lines += [f"{pad}{key} {{", pbtxt(item, indent + 2), f"{pad}}}"]
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(line for line in lines if line)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, Enum) or isinstance(value, int):
        return str(value)
    return json.dumps(value)


def parameters(**values: str) -> list[dict[str, Any]]:
    return [{"key": k, "value": {"string_value": v}} for k, v in values.items()]


def tensor_config(t: Tensor) -> dict[str, Any]:
    return {"name": t.name, "data_type": Enum(TRITON_DTYPES[t.dtype]), "dims": list(t.dims), **({"optional": True} if t.optional else {})}


def engine_tensor_config(t: dict[str, Any]) -> dict[str, Any]:
    config = {"name": t["name"], "data_type": Enum(TRITON_DTYPES[t["dtype"]]), "dims": engine_dims(t["shape"])}
    return {**config, "reshape": {"shape": []}} if len(t["shape"]) == 1 else config


def batchable(entry: dict[str, Any]) -> bool:
    """Triton batches along the first axis: only a component whose every tensor starts with the
    spec's `batch` axis can be served with max_batch_size > 0 (not the LLM: its cache starts with layers)."""
    return all(t["shape"][:1] == ["batch"] for t in entry["inputs"] + entry["outputs"])


def _rows(entry: dict[str, Any], name: str) -> tuple[int, ...]:
    """An engine input's shape as a pipeline tensor: zero or one rows, then the engine's own dims."""
    spec = next(t for t in entry["inputs"] if t["name"] == name)
    return (-1, *engine_dims(spec["shape"]))


def step_io(build: Build) -> dict[str, tuple[list[Tensor], list[Tensor]]]:
    """(inputs, outputs) of each ensemble step; the tensors between steps are shaped by the manifest."""
    comp = build.components
    clips = [Tensor(clips_name(m), "float32", (-1,) * len(comp[ENCODERS[m]]["inputs"][0]["shape"])) for m in INPUT_MODALITIES]
    token = Tensor(MEDIA_TOKEN, "float32", _rows(comp["llm"], "media_token"))
    order = Tensor(MEDIA_ORDER, "object", (-1,))
    taken_order = replace(order, optional=True)  # an input absent when a step is called on its own (outputs cannot be optional)
    hidden = [Tensor(hidden_name(m), "float32", _rows(comp[f"projector_{m}"], "hidden")) for m in OUTPUT_MODALITIES]
    return {
        "preprocess": ([*PARAMS, *FILES], [*clips, order]),
        "encode": ([*clips, taken_order], [token]),
        "llm": ([*PARAMS, token, taken_order], [*TEXT, *hidden]),
        "media": ([*PARAMS, *hidden], list(MEDIA)),
    }


def _instances(count: int, kind: str = "KIND_CPU") -> list[dict[str, Any]]:
    return [{"count": count, "kind": Enum(kind)}]


def on_gpu(backend: str) -> bool:
    return BACKENDS[backend][1] != "cpu"


def resolve_bls(bls: str, backend: str) -> str:
    """`auto` -> `all` when the engines run on a GPU (every backend label but `onnxruntime`), else `none`."""
    if bls not in BLS_CHOICES:
        raise ValueError(f"bls must be one of {', '.join(BLS_CHOICES)}, got {bls!r}")
    if bls != "auto":
        return bls
    return "all" if on_gpu(backend) else "none"


def resolve_backend(build: Build, backend: str | None) -> str:
    """The label the engines run under: by default the build's own kind (CPU for onnxruntime); a
    label the build cannot serve, or one that cannot serve a build (torch), is refused."""
    label = backend or {c["backend"] for c in build.components.values()}.pop()
    if label not in SERVED_BACKENDS:
        raise ValueError(f"a model repository serves a build's engines: --backend is one of {', '.join(SERVED_BACKENDS)}, not {label!r}")
    check_build_serves(build, label)
    return label


def engines_reference(build: Build, out: Path, engines_at: str | None) -> str:
    """How the models name the build: `engines_at` (an absolute mount point where the server
    runs), or else the build's path relative to the repository `out`."""
    if engines_at is not None:
        if not os.path.isabs(engines_at):
            raise ValueError(f"--engines-at must be an absolute path (a mount point), got {engines_at!r}")
        return engines_at
    return os.path.relpath(build.root.resolve(), out.resolve())


class RepoWriter:
    """Writes the models of one build into `root`; `served` are the engines with models of their
    own, `bls` those of them the pipeline models call (`bls`: a policy of `BLS`)."""

    def __init__(
        self,
        build: Build,
        root: Path,
        instances: dict[str, int],
        delay_us: int,
        bls: str,
        threads: int,
        backend: str,
        engines: str,
        limits: Limits,
        serving: Serving,
    ) -> None:
        """`engines`: the build as the models find it (`engines_reference`)."""
        self.build, self.root, self.instances, self.delay_us = build, root, instances, delay_us
        self.limits, self.serving, self.gpu = limits, serving, on_gpu(backend)
        self.runtime = {"engines": engines, "backend": backend, "threads": str(threads)}
        self.served = [n for n, c in build.components.items() if batchable(c)]
        self.bls = [n for n in self.served if BLS[bls](n)]

    def write(self, name: str, config: dict[str, Any], source: str | None = None, version: str | None = None) -> None:
        """`name/config.pbtxt` and version 1: a copy of models/SOURCE.py as its model.py, or a link
        to the folder `version` (a native engine's folder in the build, relative to the model's
        folder or absolute), or empty (the ensemble)."""
        folder = self.root / name
        folder.mkdir()
        (folder / "config.pbtxt").write_text(pbtxt({"name": name, **config}) + "\n")
        if version is not None:
            (folder / "1").symlink_to(version, target_is_directory=True)
            return
        (folder / "1").mkdir()
        if source:
            shutil.copy2(MODEL_SOURCES / f"{source}.py", folder / "1" / "model.py")

    def _batched(self, name: str) -> dict[str, Any]:
        entry = self.build.component(name)
        return {
            "max_batch_size": entry["dims"]["batch"][2],
            "input": [engine_tensor_config(t) for t in entry["inputs"]],
            "output": [engine_tensor_config(t) for t in entry["outputs"]],
            "dynamic_batching": {"max_queue_delay_microseconds": self.delay_us, "default_queue_policy": self.serving.queue_policy()},
        }

    def engine(self, name: str) -> None:
        config = {"backend": "python", **self._batched(name), "instance_group": _instances(self.instances["engines"])}
        self.write(name, {**config, "parameters": parameters(**self.runtime)}, "engine")

    def native_engine(self, name: str) -> None:
        """A config for NVIDIA's container; version 1 is a link to the engine's folder in the build."""
        entry = self.build.component(name)
        # ONNX Runtime on a GPU reads the portable file; the CPU-fused one carries CPU-only kernels
        engine = entry["provider_files"]["cuda"] if entry["backend"] == "onnxruntime" and self.gpu else entry["engine"]
        config = {
            "platform": NATIVE_PLATFORMS[entry["backend"]],
            "default_model_filename": Path(engine).name,
            **self._batched(name),
            "instance_group": _instances(self.instances["engines"], "KIND_GPU" if self.gpu else "KIND_CPU"),
        }
        if entry["backend"] == "onnxruntime" and self.runtime["threads"] != "0":
            config["parameters"] = parameters(intra_op_thread_count=self.runtime["threads"])
        folder = self.build.path(entry["engine"]).resolve().parent.relative_to(self.build.root.resolve())
        # the link starts in the model's folder, one level below the repository
        engines = self.runtime["engines"]
        self.write(name, config, version=os.path.join(engines if os.path.isabs(engines) else os.path.join("..", engines), folder))

    def _pipeline_parameters(self, role: str) -> list[dict[str, Any]]:
        """Where the build is, which engines are reached through BLS, and which ones this model runs
        in process (opened at load, not at the first request; the LLM only where it runs)."""
        encoders, everything = set(ENCODERS.values()), set(self.build.components)
        runs = {"preprocess": set(), "encode": encoders, "llm": {"llm"}, "media": everything - encoders - {"llm"}, STREAM: everything}
        local = sorted(runs[role] - set(self.bls))
        return parameters(
            **self.runtime, bls=",".join(self.bls), preload=",".join(local), limits=self.limits.to_json(),
            deadline_s=str(self.serving.deadline_s), upload_dir=self.serving.upload_dir,
        )

    def _queued(self) -> dict[str, Any]:
        """A pipeline model's scheduling: the dynamic batcher for its queue policy, one request per execution."""
        return {"max_batch_size": 0, "dynamic_batching": {"default_queue_policy": self.serving.queue_policy()}}

    def pipeline(self) -> None:
        steps = step_io(self.build)
        for role, (inputs, outputs) in steps.items():
            io = {"input": [tensor_config(t) for t in inputs], "output": [tensor_config(t) for t in outputs]}
            config = {"backend": "python", **self._queued(), **io, "instance_group": _instances(self.instances[role])}
            self.write(role, {**config, "parameters": self._pipeline_parameters(role)}, role)
        public = {"input": [tensor_config(t) for t in (*PARAMS, *FILES)], "max_batch_size": 0}
        # for the client's WAV and MP4 writers, and its check that the deployment speaks conversations
        meta = parameters(media_meta=json.dumps(media_meta(self.build.config)), protocol=str(PROTOCOL))
        scheduling = [
            {
                "model_name": role,
                "model_version": -1,
                "input_map": [{"key": t.name, "value": t.name} for t in inputs],
                "output_map": [{"key": t.name, "value": t.name} for t in outputs],
            }
            for role, (inputs, outputs) in steps.items()
        ]
        answer = [tensor_config(t) for t in (*TEXT, *MEDIA)]
        ensemble = {"platform": "ensemble", **public, "output": answer, "ensemble_scheduling": {"step": scheduling}}
        self.write(ENSEMBLE, {**ensemble, "parameters": meta})
        stream = {
            "backend": "python",
            **public,
            **self._queued(),
            "output": answer + [tensor_config(t) for t in PROGRESS],
            "model_transaction_policy": {"decoupled": True},
            "instance_group": _instances(self.instances[STREAM]),
            "parameters": self._pipeline_parameters(STREAM) + meta,
        }
        self.write(STREAM, stream, "stream")


def parse_instances(text: str | None) -> dict[str, int]:
    counts = dict(DEFAULT_INSTANCES)
    for item in filter(None, (text or "").split(",")):
        role, _, count = item.partition("=")
        if role not in counts or not count.isdigit() or int(count) < 1:
            raise ValueError(f"--instances: {item!r} is not ROLE=N with N >= 1 and ROLE one of {', '.join(counts)}")
        counts[role] = int(count)
    return counts


def build_repo(
    engines: Path,
    out: Path,
    instances: dict[str, int] | None = None,
    delay_us: int = 0,
    bls: str = "auto",
    threads: int = 0,
    backend: str | None = None,
    native: bool = False,
    limits: str | None = None,
    serving: Serving | None = None,
    engines_at: str | None = None,
) -> list[str]:
    """Write the repository; returns its model names. `backend`: a label of `SERVED_BACKENDS`
    (default: the build's own); `limits`: NAME=VALUE,... replacing the build's limits
    (`runtime.limits.Limits.for_build`); `engines_at`: see `engines_reference`."""
    build = read_manifest(Path(engines))
    build.verify_files()
    backend = resolve_backend(build, backend)
    policy = resolve_bls(bls, backend)
    checked = Limits.for_build(build).override(limits)
    out = Path(out)
    reference = engines_reference(build, out, engines_at)
    if out.exists() and not (out / MARKER).is_file():
        raise ValueError(f"{out} exists and was not written by build_repo.py; not replacing it")
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    serving = serving or Serving()
    writer = RepoWriter(
        build, staging, instances or dict(DEFAULT_INSTANCES), delay_us, policy, threads, backend, reference, checked, serving
    )
    for name in writer.served:
        (writer.native_engine if native else writer.engine)(name)
    writer.pipeline()
    models = sorted(p.name for p in staging.iterdir())
    record = {
        "engines": writer.runtime["engines"], "models": models, "batched": writer.served,
        "bls_policy": policy, "bls": writer.bls, "native": native, "limits": json.loads(checked.to_json()),
        **asdict(serving),
    }
    (staging / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return models


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    p.add_argument("--engines", type=Path, required=True, help="a build folder with manifest.json")
    p.add_argument("--out", type=Path, required=True, help="the model repository to write")
    add_force(p)
    add_backend(p, None, SERVED_BACKENDS, "what runs the engines (default: the build's own kind, on the CPU for onnxruntime)")
    p.add_argument(
        "--engines-at", metavar="DIR",
        help="where the build is mounted where the server runs (default: found relative to the repository)",
    )
    p.add_argument("--instances", help=f"ROLE=N,... (defaults: {','.join(f'{k}={v}' for k, v in DEFAULT_INSTANCES.items())})")
    p.add_argument(
        "--max-queue-delay-us", type=int, default=0,
        help="engine models: wait this long to fill a batch (0: batch what queued while the model was busy)",
    )
    p.add_argument(
        "--bls", choices=BLS_CHOICES, default="auto",
        help="engine models the pipeline models call, the rest run in process (auto: all on a GPU, none on CPU)",
    )
    p.add_argument("--threads", type=int, default=0, help="intra-op threads per engine (0: all cores)")
    p.add_argument("--native", action="store_true", help="engine models as onnxruntime/tensorrt configs for NVIDIA's container")
    p.add_argument("--limits", help="NAME=VALUE,... replacing the build's limits (runtime/limits.py), e.g. max_steps=100")
    p.add_argument(
        "--deadline-s", type=float, default=Serving.deadline_s,
        help="the longest a request may take, queued or running; a client's shorter timeout applies instead",
    )
    p.add_argument(
        "--max-queue-size", type=int, default=Serving.max_queue_size,
        help="requests waiting per model beyond which new ones are refused (UNAVAILABLE)",
    )
    p.add_argument("--upload-dir", default="", help="where the models save uploaded files (default: the system's temporary folder)")
    args = p.parse_args(argv)
    try:
        refuse_non_empty(args.out, args.force)
        models = build_repo(
            args.engines, args.out, parse_instances(args.instances), args.max_queue_delay_us, args.bls, args.threads,
            args.backend, args.native, args.limits, Serving(args.deadline_s, args.max_queue_size, args.upload_dir),
            args.engines_at,
        )
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(models)} models: {', '.join(models)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
