"""An OpenAI-compatible HTTP API in front of the any2any deployment: `/v1/chat/completions`, `/v1/models`.

    python triton_repo/openai_api.py --engines engines/tiny --port 8080
    python triton_repo/openai_api.py --url 127.0.0.1:8001 --port 8080 [--allowed-local-media-path DIR]

With `--engines` it writes the build's model repository to a temporary folder and starts Triton on
loopback itself (stopped, with the folder removed, on SIGTERM or Ctrl-C); with `--url` it attaches
to a running Triton. Either way it talks to Triton over gRPC only (`triton_repo.client`) and binds
127.0.0.1 unless `--host` says otherwise.

Messages take OpenAI's content parts: `text`, `image_url` and `video_url` (a base64 data URL, or a
`file://` URL of a file under `--allowed-local-media-path`; nothing is fetched from the network),
`input_audio` (`data` base64, `format`). `modalities` asks for one output medium (`image`, `audio`
or `video` beside `text`); audio comes back as `message.audio` {id, data, format, transcript,
expires_at}, images and videos in the extension field `message.media` [{modality, mime_type,
data}]. Beyond OpenAI's sampling fields (temperature, top_p, max_tokens or max_completion_tokens,
seed) the body takes `steps`, `guidance` and `session`; the answer's `message.token_ids` (the ids
the model generated), sent back on that assistant message, makes the next turn's prompt exactly
the model's own. Bad input answers 400 with OpenAI's error JSON; the deployment's limits and the
request deadline (`--request-timeout`) apply. The details: docs/serving-chat.md.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

import uvicorn
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from tritonclient.utils import InferenceServerException

from runtime.cli import make_parser
from runtime.conversation import Conversation, Medium, Turn
from runtime.limits import Limits
from runtime.request import OUTPUT_MODALITIES, Request, Response
from runtime.response import media_filename, write_response
from triton_repo.client import DEFAULT_TIMEOUT_S, Any2AnyClient
from triton_repo.serve import ServerError, add_deployment_args, deployment

MODEL = "any2any"
OUTPUT_MIME = {"image": "image/png", "audio": "audio/wav", "video": "video/mp4"}  # what write_response writes
# The MIME types of a data URL the runtime reads (runtime/media.py), and the suffix its reader
# goes by; a GIF is a video when it comes as a video_url.
INPUT_MIME = {
    "image": {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif", "image/bmp": ".bmp"},
    "audio": {"audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav", "audio/flac": ".flac",
              "audio/mpeg": ".mp3", "audio/mp3": ".mp3", "audio/ogg": ".ogg"},
    "video": {"video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov", "video/x-matroska": ".mkv",
              "video/x-msvideo": ".avi", "image/gif": ".gif"},
}
AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg")  # input_audio.format
# gRPC status of a refusal -> HTTP status and OpenAI error type
GRPC_STATUS = {
    "StatusCode.INVALID_ARGUMENT": (400, "invalid_request_error"),
    "StatusCode.DEADLINE_EXCEEDED": (504, "timeout"),
    "StatusCode.UNAVAILABLE": (503, "server_error"),
    "StatusCode.RESOURCE_EXHAUSTED": (429, "rate_limit_error"),
}


class APIError(Exception):
    """A refusal in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error",
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.kind, self.code = message, param, status, kind, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def api_error(e: BaseException) -> APIError:
    """What a failed call to the deployment means for the HTTP client."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, InferenceServerException):
        status, kind = GRPC_STATUS.get(str(e.status()), (500, "server_error"))
        return APIError(e.message() or str(e), status=status, kind=kind)
    if isinstance(e, ValueError):  # refused by the client before sending: a conversation rule, a missing file
        return APIError(str(e))
    return APIError(f"{type(e).__name__}: {e}", status=500, kind="server_error")


class AudioParam(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["wav"] = "wav"
    voice: str | None = None  # OpenAI's voices: the model has none, so it is ignored


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The body of /v1/chat/completions; a field this server does not implement is refused by name."""

    model_config = ConfigDict(extra="forbid")
    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    modalities: list[Literal["text", "image", "audio", "video"]] | None = None
    audio: AudioParam | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None  # none: 0, so that an answer is reproducible unless asked otherwise
    n: Literal[1] = 1
    user: str | None = None  # OpenAI's end-user id: nothing here uses it
    # extensions
    steps: int | None = Field(None, description="denoising steps of the media output (default: the model's)")
    guidance: float | None = Field(None, description="classifier-free guidance scale of the media output")
    session: str | None = Field(None, description="keep the conversation's KV cache on the server for the next turn")

    def settings(self) -> dict[str, Any]:
        """The keyword arguments of `Any2AnyClient.chat` these fields ask for."""
        media = [m for m in self.modalities or () if m in OUTPUT_MODALITIES]
        if len(media) > 1:
            raise APIError(f"modalities: one output medium per answer, got {', '.join(media)}", "modalities")
        if self.stream_options is not None and not self.stream:
            raise APIError("stream_options is only allowed when stream is true", "stream_options")
        if self.max_tokens is not None and self.max_completion_tokens not in (None, self.max_tokens):
            raise APIError("max_tokens and max_completion_tokens differ; give one", "max_completion_tokens")
        return {
            "output": media[0] if media else None, "seed": self.seed or 0, "session": self.session,
            "max_new_tokens": self.max_completion_tokens or self.max_tokens, "temperature": self.temperature,
            "top_p": self.top_p, "steps": self.steps, "guidance": self.guidance,
        }


@dataclass
class MediaReader:
    """Turns content parts into input files in `folder` (data URLs) or paths under `local_root`."""

    folder: Path
    limits: Limits
    local_root: Path | None

    def medium(self, where: str, modality: str, part: dict[str, Any]) -> Medium:
        if modality == "audio":
            return self._audio(where, _field(part, "input_audio", dict, where))
        url = _field(_field(part, f"{modality}_url", dict, where), "url", str, f"{where}.{modality}_url")
        where = f"{where}.{modality}_url.url"
        if url.startswith("data:"):
            data, suffix = self._data_url(where, url, modality)
            return self._write(where, modality, data, suffix)
        if url.startswith("file:"):
            return Medium(modality, self._local(where, url))
        raise APIError(f"{where}: give a base64 data URL (data:<MIME type>;base64,...); this server fetches nothing "
                       "from the network, and reads local files only under --allowed-local-media-path", where)

    def _audio(self, where: str, part: dict[str, Any]) -> Medium:
        fmt = _field(part, "format", str, f"{where}.input_audio")
        if fmt not in AUDIO_FORMATS:
            raise APIError(f"{where}.input_audio.format: {fmt!r} is not one of {', '.join(AUDIO_FORMATS)}", f"{where}.input_audio.format")
        data = self._decode(f"{where}.input_audio.data", _field(part, "data", str, f"{where}.input_audio"))
        return self._write(where, "audio", data, f".{fmt}")

    def _data_url(self, where: str, url: str, modality: str) -> tuple[bytes, str]:
        header, comma, payload = url.removeprefix("data:").partition(",")
        mime, *options = header.split(";")
        if not comma or "base64" not in options:
            raise APIError(f"{where}: not a base64 data URL (data:<MIME type>;base64,<data>)", where)
        suffix = INPUT_MIME[modality].get(mime.strip().lower())
        if suffix is None:
            raise APIError(f"{where}: MIME type {mime!r} is not a {modality} this model reads "
                           f"({', '.join(INPUT_MIME[modality])})", where)
        return self._decode(where, payload), suffix

    def _decode(self, where: str, payload: str) -> bytes:
        # Refused by its size before it is decoded: the deployment would refuse the file anyway.
        if len(payload) * 3 // 4 > self.limits.max_file_bytes:
            raise APIError(f"{where}: about {len(payload) * 3 // 4} bytes exceed the limit max_file_bytes={self.limits.max_file_bytes}", where)
        try:
            data = base64.b64decode(payload, validate=True)
        except binascii.Error as e:
            raise APIError(f"{where}: not valid base64 ({e})", where) from None
        if not data:
            raise APIError(f"{where}: no data", where)
        return data

    def _write(self, where: str, modality: str, data: bytes, suffix: str) -> Medium:
        # Named after its place in the request, so that the server's refusal of a corrupt file says which.
        path = self.folder / (where.replace("[", "").replace("]", "").replace(".", "_").removesuffix("_url_url") + suffix)
        path.write_bytes(data)
        return Medium(modality, path)

    def _local(self, where: str, url: str) -> Path:
        if self.local_root is None:
            raise APIError(f"{where}: local files are read only when the server is started with --allowed-local-media-path", where)
        path = Path(unquote(urlparse(url).path)).resolve()
        if not path.is_relative_to(self.local_root):
            raise APIError(f"{where}: {path} is outside --allowed-local-media-path ({self.local_root})", where)
        return path


def _field(obj: dict[str, Any], name: str, kind: type, where: str) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind):
        raise APIError(f"{where}.{name}: expected {'an object' if kind is dict else 'a string'}", f"{where}.{name}")
    return value


PART_MODALITIES = {"image_url": "image", "input_audio": "audio", "video_url": "video"}


def conversation_from(messages: list[dict[str, Any]], reader: MediaReader) -> Conversation:
    """OpenAI messages as a conversation; the rules of its shape are `Conversation.check`'s."""
    turns = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role")
        if role == "user":
            turns.append(_user_turn(where, message.get("content"), reader))
        elif role == "assistant":
            turns.append(_assistant_turn(where, message))
        elif role in ("system", "developer"):
            raise APIError(f"{where}: the model has no {role} prompt; put the instruction in a user message", f"{where}.role")
        else:
            raise APIError(f"{where}.role: {role!r} is not user or assistant", f"{where}.role")
    return Conversation(tuple(turns))


def _user_turn(where: str, content: Any, reader: MediaReader) -> Turn:
    if isinstance(content, str):
        return Turn.user(content)
    if not isinstance(content, list):
        raise APIError(f"{where}.content: expected a string or a list of content parts", f"{where}.content")
    texts, media = [], []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(_field(part, "text", str, at))
        elif kind in PART_MODALITIES:
            media.append(reader.medium(at, PART_MODALITIES[kind], part))
        else:
            raise APIError(f"{at}.type: {kind!r} is not one of text, {', '.join(PART_MODALITIES)}", f"{at}.type")
    return Turn.user("\n".join(texts), media)


def _assistant_turn(where: str, message: dict[str, Any]) -> Turn:
    """Its text; its media are never fed back (NExT-GPT feeds back the signal tokens, which its
    `token_ids` hold when the client sends them back)."""
    content = message.get("content") or ""
    if isinstance(content, list):
        content = "".join(_field(p, "text", str, f"{where}.content") for p in content if isinstance(p, dict) and p.get("type") == "text")
    if not isinstance(content, str):
        raise APIError(f"{where}.content: expected a string or a list of text parts", f"{where}.content")
    ids = message.get("token_ids")
    if ids is not None and not (isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
        raise APIError(f"{where}.token_ids: expected a list of integers", f"{where}.token_ids")
    return Turn.assistant(content, ids)


def usage(resp: Response) -> dict[str, Any]:
    """OpenAI's token counts: the prompt as the model reads it (one slot per medium), the generated ids
    (signal runs and EOS included), and as `cached_tokens` the prompt tokens the session's KV cache held."""
    made = len(resp.token_ids)
    return {"prompt_tokens": resp.prompt_tokens, "completion_tokens": made, "total_tokens": resp.prompt_tokens + made,
            "prompt_tokens_details": {"cached_tokens": resp.reused_tokens}}


class ChatService:
    """Answers chat completions through the deployment at `url`, one gRPC client per request."""

    def __init__(self, url: str, model: str = MODEL, timeout_s: float = DEFAULT_TIMEOUT_S, local_root: Path | None = None) -> None:
        self.url, self.model, self.timeout_s = url, model, timeout_s
        self.local_root = local_root.resolve() if local_root else None
        with Any2AnyClient(url, timeout_s) as client:
            client.check_protocol()
            self.meta, self.limits = client.media_meta(), client.limits()
        self.created = int(time.time())

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model, "object": "model", "created": self.created, "owned_by": "any2any"}]}

    def answer(self, body: ChatRequest, on_text: Callable[[str], None] | None = None,
               on_step: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
        """The assistant message, finish reason and token usage for `body` (streamed when `on_text` is given)."""
        if body.model != self.model:
            raise APIError(f"model {body.model!r} does not exist; this server has {self.model!r}", "model", 404, code="model_not_found")
        settings = body.settings()
        with tempfile.TemporaryDirectory(prefix="any2any-api-") as tmp:
            conversation = conversation_from(body.messages, MediaReader(Path(tmp), self.limits, self.local_root))
            Request(conversation=conversation, **settings).check(self.limits)  # refused here, before anything is sent
            with Any2AnyClient(self.url, self.timeout_s) as client:
                resp = client.chat(conversation, stream=on_text is not None, on_text=on_text, on_step=on_step, **settings)
            message = self._message(resp, Path(tmp) / "answer")
        limit = settings["max_new_tokens"]
        return {"message": message, "finish_reason": "length" if limit and len(resp.token_ids) >= limit else "stop",
                "usage": usage(resp)}

    def _message(self, resp: Response, out: Path) -> dict[str, Any]:
        """The answer in OpenAI's shape; its media as the files `write_response` writes (PNG, WAV, MP4)."""
        message: dict[str, Any] = {"role": "assistant", "content": resp.text, "token_ids": resp.token_ids}
        write_response(out, resp.text, resp.media, self.meta)
        encoded = {m: base64.b64encode((out / media_filename(m)).read_bytes()).decode("ascii") for m in resp.media}
        if "audio" in encoded:
            # Nothing is kept on the server for a later turn: it expires as it is made.
            message["audio"] = {"id": f"audio_{uuid.uuid4().hex}", "data": encoded["audio"], "format": "wav",
                                "transcript": resp.text, "expires_at": int(time.time())}
        media = [{"modality": m, "mime_type": OUTPUT_MIME[m], "data": encoded[m]} for m in ("image", "video") if m in encoded]
        if media:
            message["media"] = media
        return message

    def completion(self, answer: dict[str, Any]) -> dict[str, Any]:
        choice = {"index": 0, "message": answer["message"], "finish_reason": answer["finish_reason"], "logprobs": None}
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model, "choices": [choice], "usage": answer["usage"]}

    async def stream(self, body: ChatRequest) -> AsyncIterator[str]:
        """Server-sent events as OpenAI sends them: a role chunk, content chunks, a chunk with the
        media, a final chunk with the finish reason, then `data: [DONE]`; denoising progress as SSE
        comments, which clients skip. The first event is awaited before this returns, so that a
        request the deployment refuses gets its 400 like any other; a client that goes away
        cancels the request on the server at its next text piece or step."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        gone = threading.Event()

        def put(kind: str, value: Any) -> None:
            if gone.is_set():
                raise ConnectionAbortedError("the HTTP client went away")
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        def work() -> None:
            try:
                answer = self.answer(body, lambda piece: put("text", piece),
                                     lambda m, done, total: put("step", f"{m} {done}/{total}"))
                put("answer", answer)
            except BaseException as e:  # noqa: BLE001 - every failure becomes the stream's error event
                if not gone.is_set():
                    loop.call_soon_threadsafe(events.put_nowait, ("error", e))

        loop.run_in_executor(None, work)
        first = await events.get()
        if first[0] == "error":
            raise api_error(first[1])
        return self._events(first, events, gone, bool(body.stream_options and body.stream_options.include_usage))

    async def _events(
        self, first: tuple[str, Any], events: asyncio.Queue, gone: threading.Event, usage_wanted: bool
    ) -> AsyncIterator[str]:
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> str:
            choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.model, "choices": choices}
            return f"data: {json.dumps({**body, **extra})}\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""})
            kind, value = first
            while True:
                if kind == "text":
                    yield chunk({"content": value})
                elif kind == "step":
                    yield f": progress {value}\n\n"
                elif kind == "error":
                    yield f"data: {json.dumps(api_error(value).body())}\n\n"
                    break
                else:
                    media = {k: v for k, v in value["message"].items() if k in ("audio", "media", "token_ids")}
                    yield chunk(media)
                    yield chunk({}, value["finish_reason"])
                    if usage_wanted:
                        yield chunk(None, usage=value["usage"])  # OpenAI's last chunk: no choices, the usage
                    break
                kind, value = await events.get()
            yield "data: [DONE]\n\n"
        finally:
            gone.set()


def create_app(service: ChatService) -> FastAPI:
    """The FastAPI application: every error, the framework's own included, in OpenAI's shape."""
    app = FastAPI(title="any2any OpenAI-compatible API", docs_url=None, redoc_url=None)

    @app.exception_handler(APIError)
    async def refused(request: Any, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Any, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if p != "body")
        message = f"unsupported field {param!r}" if first["type"] == "extra_forbidden" else f"{param}: {first['msg']}"
        return await refused(request, APIError(message, param or None))

    @app.exception_handler(HTTPException)
    async def http_error(request: Any, e: HTTPException) -> JSONResponse:
        return await refused(request, APIError(str(e.detail), status=e.status_code, kind="invalid_request_error"))

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return service.models()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatRequest) -> Any:
        if body.stream:
            return StreamingResponse(await service.stream(body), media_type="text/event-stream")
        try:
            answer = await run_in_threadpool(service.answer, body)
        except Exception as e:  # noqa: BLE001 - mapped to its HTTP status
            raise api_error(e) from None
        return service.completion(answer)

    return app


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    add_deployment_args(p, "the HTTP server", 8080)
    p.add_argument("--model-name", default=MODEL, help="the model id /v1/models lists and requests name")
    p.add_argument("--allowed-local-media-path", type=Path, metavar="DIR",
                   help="read file:// media URLs of files under DIR (default: none)")
    args = p.parse_args(argv)
    try:
        with deployment(args) as url:
            service = ChatService(url, args.model_name, args.request_timeout, args.allowed_local_media_path)
            print(f"triton: {url}\nopenai api: http://{args.host}:{args.port}/v1", flush=True)
            # uvicorn stops on SIGTERM or Ctrl-C and then re-raises the signal: leaving `deployment`
            # stops Triton.
            uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="warning")
    except KeyboardInterrupt:
        pass
    except (ServerError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
