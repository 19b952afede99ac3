"""`any2any_stream`: the whole pipeline in one decoupled model, sending each text piece and each
denoising step as it comes, then the complete answer as the final response.

It runs `Any2AnyPipeline.__call__` itself (on served engines: only the LLM is local), because text
streams from inside the token loop, which an ensemble step cannot report from. A client that
cancels the stream, or a deadline that passes, stops the loops at the next step (CANCELLED).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_repo.protocol import ANSWER, decode_request, encode_answer
from triton_repo.served import (
    answer, empty_outputs, error_response, getter, model_parameters, pipeline_from_parameters, request_files,
    request_should_stop,
)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        params = model_parameters(args)
        self.pipeline = pipeline_from_parameters(params)
        self.deadline_s, self.upload_dir = float(params["deadline_s"]), params["upload_dir"]
        empty = empty_outputs(args)
        self.empty = {t.name: empty[t.name] for t in ANSWER}

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()

            def send_text(piece: str) -> None:
                sender.send(answer({"TEXT": np.array([piece.encode("utf-8")], dtype=object)}))

            def send_step(modality: str, done: int, total: int) -> None:
                progress = {"MODALITY": np.array([modality.encode()], dtype=object), "PROGRESS": np.array([done, total], np.int64)}
                sender.send(answer(progress))

            get = getter(request)
            try:
                should_stop = request_should_stop(request, self.deadline_s)
                decode_request(get).check(self.pipeline.limits)  # before any file is written
                with request_files(get, self.pipeline.limits, self.upload_dir) as files:
                    resp = self.pipeline(decode_request(get, files), send_text, send_step, should_stop)
                final = answer({**self.empty, **encode_answer(resp)})
            except Exception as e:  # noqa: BLE001 - every failure is answered, the instance lives on
                final = error_response(e)
            sender.send(final, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
