"""What the Python-backend models share (imported inside Triton's Python stub only).

- `BlsEngine`: a component that Triton serves as its own model, behind the runtime's engine
  interface (`run(feeds) -> outputs`); each call is a BLS request, so concurrent callers' calls
  can meet in that model's dynamic batch.
- `ServedEngines`: the runtime's `Engines` with those components as BLS engines; the LLM (which
  keeps its own KV cache) stays a local engine. `pipeline_from_parameters` is the runtime's
  `Any2AnyPipeline` on them.
- `PipelineModel`: the request loop of a non-decoupled model, where a bad request becomes an
  INVALID_ARGUMENT error response and never takes the model instance down.
- `request_should_stop`: a request's deadline and cancellation as the runtime's `should_stop`.

Only light modules are imported at the top (no torch, no diffusers): every engine model and
`preprocess` import this, and a Python model's imports are paid at each server start.
"""
from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import triton_python_backend_utils as pb_utils

from runtime.backends import Engine, Engines, check_feeds
from runtime.limits import Limits
from runtime.stop import ShouldStop, Stopped, deadline, first_of
from triton_repo.protocol import Getter, has_files, save_files

if TYPE_CHECKING:
    from runtime.pipeline import Any2AnyPipeline


def model_parameters(args: dict[str, str]) -> dict[str, str]:
    """The `parameters` of a model's config.pbtxt, as build_repo.py wrote them, with the build's
    path made absolute: a relative one is relative to the repository (`model_repository` is the
    model's folder in it), so that the repository moves with its engines."""
    config = json.loads(args["model_config"])
    params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
    if "engines" in params:
        params["engines"] = str(Path(args["model_repository"]).parent / params["engines"])
    return params


def empty_outputs(args: dict[str, str]) -> dict[str, np.ndarray]:
    """A zero-size array for each output the model's config declares: what is sent for an output
    that a request's answer does not have (no image, no media token), so that every declared
    output is always there for the ensemble and the client."""
    config = json.loads(args["model_config"])
    return {
        o["name"]: np.zeros([max(d, 0) for d in o["dims"]], pb_utils.triton_string_to_numpy(o["data_type"]))
        for o in config["output"]
    }


def getter(request: Any) -> Getter:
    def get(name: str) -> np.ndarray | None:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()

    return get


def answer(tensors: dict[str, np.ndarray]) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, v) for n, v in tensors.items()])


def error_code(error: Exception) -> int:
    """Refused input (the runtime's MediaError, PromptError and every other ValueError) is the
    client's to fix: INVALID_ARGUMENT. A request stopped at its deadline or by its client:
    CANCELLED. Files the server cannot save (its upload folder unusable or full): UNAVAILABLE,
    the server's to fix and the client's to retry. Anything else: INTERNAL."""
    if isinstance(error, Stopped):
        return pb_utils.TritonError.CANCELLED
    if isinstance(error, UploadError):
        return pb_utils.TritonError.UNAVAILABLE
    return pb_utils.TritonError.INVALID_ARG if isinstance(error, ValueError) else pb_utils.TritonError.INTERNAL


def error_response(error: Exception) -> Any:
    if isinstance(error, Stopped):  # the log shows that the loop stopped, and why, when nobody waits for the answer
        pb_utils.Logger.log_info(f"request stopped: {error.reason}")
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error) or type(error).__name__, error_code(error)))


CANCEL_POLL_S = 0.05  # is_cancelled() is a round trip to the server process: asked at most this often


def request_should_stop(request: Any, deadline_s: float) -> ShouldStop:
    """The request's `should_stop`: its deadline from now (the client's `timeout` parameter, at most
    `deadline_s`, the repository's ceiling), or the client's cancellation.

    A client's gRPC deadline or cancel reaches a model's own request; inside the ensemble it
    reaches only the steps not yet started, so a running step learns of it through the timeout
    that Triton copies onto every step's request.
    """
    timeout_s = request.timeout() / 1e6
    seconds = min(timeout_s, deadline_s) if timeout_s > 0 else deadline_s
    asked = [0.0]

    def cancelled() -> str | None:
        now = time.monotonic()
        if now - asked[0] < CANCEL_POLL_S:
            return None
        asked[0] = now
        return "cancelled by the client" if request.is_cancelled() else None

    return first_of(deadline(seconds), cancelled)


class UploadError(OSError):
    """The server could not save a request's files: its upload folder is unusable or full."""


@contextmanager
def request_files(get: Getter, limits: Limits, upload_dir: str = "") -> Iterator[dict[str, Path | None]]:
    """The request's input files saved where the runtime can read them, for the duration: in a
    fresh folder inside `upload_dir` (empty: the system's temporary folder); no folder when the
    request has no files. Each file's name and size are checked against `limits` before any is
    written.

    An error that names a saved file names it as the client sent it, without the temporary folder.
    A folder that cannot be made or written is an `UploadError` naming it.
    """
    if not has_files(get):
        yield {}
        return
    with _upload_folder(upload_dir or None) as folder:
        try:
            files = save_files(get, folder, limits)
        except OSError as e:
            raise UploadError(f"the server cannot save uploaded files in {folder.parent}: {e.strerror or e}") from None
        try:
            yield files
        except ValueError as e:
            message = str(e)
            for path in files.values():
                message = message.replace(str(path), path.name)
            raise ValueError(message) from None


@contextmanager
def _upload_folder(parent: str | None) -> Iterator[Path]:
    try:
        folder = tempfile.TemporaryDirectory(prefix="any2any-", dir=parent)
    except OSError as e:
        where = parent or "the temporary folder"
        raise UploadError(f"the server cannot save uploaded files in {where}: {e.strerror or e}") from None
    with folder as name:
        yield Path(name)


class BlsEngine:
    """A component served as its own Triton model, called like a local engine.

    Feeds are checked against the manifest first, so a bad one fails with the local engines'
    message. A tensor that is only the batch axis travels as (batch, 1): Triton cannot declare
    empty dims (see `protocol.engine_dims`).
    """

    def __init__(self, io: dict[str, Any]) -> None:
        self.io, self.name = io, io["name"]
        self.input_names = [t["name"] for t in io["inputs"]]
        self.output_names = [t["name"] for t in io["outputs"]]
        self.scalar = {t["name"] for t in io["inputs"] + io["outputs"] if len(t["shape"]) == 1}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(feeds, self.io["inputs"], self.io["dims"], self.name)
        inputs = [pb_utils.Tensor(n, feeds[n].reshape(-1, 1) if n in self.scalar else feeds[n]) for n in self.input_names]
        response = pb_utils.InferenceRequest(
            model_name=self.name, inputs=inputs, requested_output_names=self.output_names
        ).exec()
        if response.has_error():
            raise RuntimeError(f"{self.name}: {response.error().message()}")
        outputs = {n: pb_utils.get_output_tensor_by_name(response, n).as_numpy() for n in self.output_names}
        return {n: v.reshape(-1) if n in self.scalar else v for n, v in outputs.items()}


class DeferredEngine:
    """A local engine opened by `load` or on its first run; its names come from the manifest.
    A model that never runs it (the media model never runs the LLM) never loads it."""

    def __init__(self, io: dict[str, Any], open_engine: Callable[[], Engine]) -> None:
        self.input_names = [t["name"] for t in io["inputs"]]
        self.output_names = [t["name"] for t in io["outputs"]]
        self.open_engine = open_engine
        self.engine: Engine | None = None

    def load(self) -> Engine:
        if self.engine is None:
            self.engine = self.open_engine()
        return self.engine

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.load().run(feeds)


class ServedEngines:
    """The runtime's `Engines` as the pipeline models see them (`Any2AnyPipeline(..., wrap=...)`):
    the components in `served` are Triton models reached through BLS; the rest (the LLM) are the
    runtime's own engines, deferred to their first run."""

    def __init__(self, engines: Engines, served: set[str]) -> None:
        self.local, self.served, self.build = engines, served, engines.build
        self.opened: dict[str, BlsEngine | DeferredEngine] = {}

    def __getitem__(self, name: str) -> BlsEngine | DeferredEngine:
        if name not in self.opened:
            io = self.local.io(name)
            self.opened[name] = BlsEngine(io) if name in self.served else DeferredEngine(io, lambda: self.local[name])
        return self.opened[name]


def pipeline_from_parameters(params: dict[str, str]) -> Any2AnyPipeline:
    """The runtime's `Any2AnyPipeline` on the build and served engines that build_repo.py wrote
    into the model's parameters, with the engines this model runs in process already open."""
    from runtime.pipeline import Any2AnyPipeline  # torch and diffusers: only in the models that run it

    served = set(filter(None, params["bls"].split(",")))
    pipeline = Any2AnyPipeline(
        Path(params["engines"]), params["backend"], int(params["threads"]),
        wrap=lambda engines: ServedEngines(engines, served), limits=Limits.from_json(params["limits"]),
    )
    for name in filter(None, params["preload"].split(",")):
        pipeline.engines[name].load()
    return pipeline


class PipelineModel:
    """A non-decoupled Python model: `answer(get)` maps one request's tensors to its outputs.

    Requests are answered one by one; an output the answer lacks is sent empty; an exception
    becomes that request's error response. `should_stop` is the request's deadline and
    cancellation, for the models whose loops ask it.
    """

    def initialize(self, args: dict[str, str]) -> None:
        self.params, self.empty = model_parameters(args), empty_outputs(args)
        self.limits = Limits.from_json(self.params["limits"])  # each step that takes the request checks it
        self.deadline_s = float(self.params["deadline_s"])
        self.setup()

    def setup(self) -> None:
        """Load what the model needs, so the first request does not wait for it."""

    def answer(self, get: Getter, should_stop: ShouldStop) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                outputs = self.answer(getter(request), request_should_stop(request, self.deadline_s))
                responses.append(answer({**self.empty, **outputs}))
            except Exception as e:  # noqa: BLE001 - every failure is answered, the instance lives on
                responses.append(error_response(e))
        return responses
