"""gRPC client of the any2any deployment: a request in, `response.json` and the media out.

    python triton_repo/client.py --url 127.0.0.1:8001 --prompt "show me a red circle" --out outputs/grpc \\
        [--image F] [--audio F] [--video F] [--stream] [--seed N] [--output image|audio|video] \\
        [--steps N] [--guidance G] [--temperature T] [--top-p P] [--max-new-tokens N] [--video-format mp4|gif] \\
        [--conversation FILE] [--session ID]

The same flags and files as `python -m runtime`. Without `--stream` it calls the `any2any`
ensemble; with it, the decoupled `any2any_stream` model, printing the text as it comes. Bad input
(a missing or corrupt file, an empty or over-long prompt, ...) prints the server's one-line reason
as `error: ...` and exits with status 2, leaving `--out` untouched.

With `--conversation FILE` (and `--prompt` for the next turn) it sends the whole conversation and
writes `OUT/conversation.json` with the answer appended, which the next call continues; `--session ID`
lets the server reuse the conversation's KV cache for the follow-up (docs/conversation.md).

As a library: `with Any2AnyClient(url) as c: c.infer(Request(...))` or `c.stream(req, on_text, on_step)`
for one turn, `c.chat(conversation, session=..., stream=..., ...)` for a conversation; each
returns a `runtime.request.Response` (`response.turn(files)` is its assistant turn).

`--request-timeout` is the request's deadline: the gRPC deadline, and also sent as the request's
`timeout` parameter, which every model of the ensemble sees, so that the server stops working
on the request when the client stops waiting (DEADLINE_EXCEEDED here). A stream the client leaves
early is cancelled, which stops the server's loops too.
"""
from __future__ import annotations

import json
import queue
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from runtime.cli import add_url, make_parser
from runtime.conversation import Conversation
from runtime.limits import Limits
from runtime.request import Request, Response, add_request_args, request_from_args
from runtime.response import write_conversation_answer, write_response
from triton_repo.protocol import (
    CLIENT_DTYPES, ENSEMBLE, FILES, PARAMS, PROTOCOL, STREAM, TRITON_DTYPES, decode_answer, encode_request,
)

DEFAULT_TIMEOUT_S = 600.0
TYPES = {t.name: CLIENT_DTYPES[TRITON_DTYPES[t.dtype]] for t in (*PARAMS, *FILES)}


def infer_inputs(req: Request) -> list[grpcclient.InferInput]:
    inputs = []
    for name, value in encode_request(req).items():
        tensor = grpcclient.InferInput(name, list(value.shape), TYPES[name])
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


class Any2AnyClient:
    def __init__(self, url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.timeout_s = timeout_s
        self.protocol: int | None = None  # the deployment's, asked once

    @property
    def timeout_us(self) -> int:
        return round(self.timeout_s * 1e6)

    def infer(self, req: Request) -> Response:
        """One request through the `any2any` ensemble; InferenceServerException on refusal."""
        result = self.client.infer(ENSEMBLE, infer_inputs(req), timeout=self.timeout_us, client_timeout=self.timeout_s)
        return decode_answer(result.as_numpy)

    def chat(
        self,
        conversation: Conversation,
        *,
        session: str | None = None,
        stream: bool = False,
        on_text: Callable[[str], None] | None = None,
        on_step: Callable[[str, int, int], None] | None = None,
        output: str | None = None,
        seed: int = 0,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        steps: int | None = None,
        guidance: float | None = None,
    ) -> Response:
        """The answer to `conversation`'s last (user) turn: through `any2any_stream` with `stream`
        (then `on_text` and `on_step` see it come), else the `any2any` ensemble. With `session`, the
        server may keep the conversation's KV cache for the next turn (`Response.reused_tokens`
        says how much of the prompt it held). Continue with
        `conversation.then(response.turn(files)).then(Turn.user(...))`."""
        self.check_protocol()
        req = Request(
            conversation=conversation, session=session, output=output, seed=seed, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, steps=steps, guidance=guidance,
        )
        req.check()
        return self.stream(req, on_text, on_step) if stream else self.infer(req)

    def check_protocol(self) -> None:
        """Refuse, by name, a deployment older than this client (its repository records an older protocol)."""
        if self.protocol is None:
            params = self.client.get_model_config(ENSEMBLE, as_json=True)["config"].get("parameters", {})
            self.protocol = int(params.get("protocol", {}).get("string_value", "1"))
        if self.protocol < PROTOCOL:
            raise ValueError(
                f"the server's model repository speaks protocol {self.protocol}; this client needs {PROTOCOL}: "
                "rebuild it with triton_repo/build_repo.py"
            )

    def stream(
        self,
        req: Request,
        on_text: Callable[[str], None] | None = None,
        on_step: Callable[[str, int, int], None] | None = None,
    ) -> Response:
        """One request through `any2any_stream`: text pieces and denoising steps reach the callbacks
        as the server sends them; the final response (the one with TOKEN_IDS) is the answer."""
        results: queue.Queue[tuple[Any, InferenceServerException | None]] = queue.Queue()
        self.client.start_stream(callback=lambda result, error: results.put((result, error)), stream_timeout=self.timeout_s)
        answered = False
        try:
            self.client.async_stream_infer(STREAM, infer_inputs(req), timeout=self.timeout_us)
            while True:
                result, error = results.get()  # the stream's deadline ends it with an error at the latest
                if error is not None:
                    raise error
                if result.as_numpy("TOKEN_IDS") is not None:
                    answered = True
                    return decode_answer(result.as_numpy)
                progress = result.as_numpy("PROGRESS")
                if progress is not None:
                    if on_step is not None:
                        on_step(result.as_numpy("MODALITY")[0].decode(), int(progress[0]), int(progress[1]))
                elif on_text is not None:
                    on_text(result.as_numpy("TEXT")[0].decode("utf-8"))
        finally:
            # Leaving before the answer (an error, a callback that raised, Ctrl-C) cancels the
            # request on the server, which stops its loops; otherwise this would wait for them.
            self.client.stop_stream(cancel_requests=not answered)

    def media_meta(self) -> dict[str, dict[str, Any]]:
        """Audio sample rate and video frame rate, as the repository recorded them from the build."""
        config = self.client.get_model_config(ENSEMBLE, as_json=True)["config"]
        return json.loads(config["parameters"]["media_meta"]["string_value"])

    def limits(self) -> Limits:
        """The limits the deployment enforces (build_repo.py --limits), so that a front end can refuse
        early, before it decodes or sends anything beyond them."""
        config = self.client.get_model_config(STREAM, as_json=True)["config"]
        return Limits.from_json(config["parameters"]["limits"]["string_value"])

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Any2AnyClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def time_routes(url: str, inputs: dict[str, Path], runs: int, steps: int | None = None) -> list[dict[str, Any]]:
    """Median, p90 and p99 ms of `runs` gRPC requests per demo route, after one untimed request
    each (benchmarks/compare_latency.py --triton puts them beside the in-process runtime)."""
    from train.demo import ROUTES
    from triton_repo.demo import route_request  # not at the top: the demo imports this module

    rows = []
    with Any2AnyClient(url) as client:
        for route in ROUTES:
            req = route_request(route, inputs, 0, steps)
            client.infer(req)
            ms = []
            for _ in range(runs):
                start = time.perf_counter()
                client.infer(req)
                ms.append((time.perf_counter() - start) * 1e3)
            rows.append({"route": route, "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
                         "p99_ms": float(np.percentile(ms, 99)), "runs": runs})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    add_url(p)
    p.add_argument("--stream", action="store_true", help="stream text and progress (the any2any_stream model)")
    p.add_argument("--request-timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait for the answer")
    add_request_args(p)
    args = p.parse_args(argv)
    from runtime.__main__ import Progress  # the runtime CLI's bars; imported here, it loads torch

    progress = Progress(not args.quiet)
    try:
        req = request_from_args(args)
        req.check()
        with Any2AnyClient(args.url, args.request_timeout) as client:
            if req.conversation is not None or req.session is not None:
                client.check_protocol()
            if args.stream:
                resp = client.stream(req, on_text=lambda piece: print(piece, end="", flush=True), on_step=progress)
                progress.close()
                print()
            else:
                resp = client.infer(req)
                print(resp.text)
            extra = {"prompt": args.prompt, "seed": args.seed, "backend": "triton", "url": args.url, "num_tokens": len(resp.token_ids)}
            body = write_response(args.out, resp.text, resp.media, client.media_meta(), extra, args.video_format)
            write_conversation_answer(args.out, req.dialogue, resp, body["media"])
    except InferenceServerException as e:
        progress.close()
        print(f"\nerror: {e.message()}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:
        progress.close()
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    for modality, name in body["media"].items():
        print(f"{modality}: {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
