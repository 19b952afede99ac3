"""A stateless engine (encoder, projector, UNet, VAE decoder, vocoder) as its own Triton model.

Triton's dynamic batcher hands `execute` the requests that arrived within the queue delay; those
whose shapes past the batch axis agree run as one engine call and are split back, so concurrent
requests (say, the UNet steps of several denoising loops) share a batch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends import Engines, check_feeds
from runtime.manifest import read_manifest
from triton_repo.served import answer, error_response, getter, model_parameters


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        params = model_parameters(args)
        build = read_manifest(Path(params["engines"]))
        self.name = args["model_name"]
        self.engine = Engines(build, params["backend"], int(params["threads"]))[self.name]
        self.inputs, self.dims = build.component(self.name)["inputs"], build.component(self.name)["dims"]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple[tuple[int, ...], ...], list[tuple[int, dict[str, np.ndarray]]]] = {}
        for i, request in enumerate(requests):
            get = getter(request)
            feeds = {n: get(n) for n in self.engine.input_names}
            try:
                check_feeds(feeds, self.inputs, self.dims, self.name)
            except ValueError as e:
                responses[i] = error_response(e)
                continue
            groups.setdefault(tuple(v.shape[1:] for v in feeds.values()), []).append((i, feeds))
        for members in groups.values():
            try:
                batch = {n: np.concatenate([feeds[n] for _, feeds in members]) for n in self.engine.input_names}
                outputs = self.engine.run(batch)
            except Exception as e:  # noqa: BLE001 - answered as errors, the instance lives on
                for i, _ in members:
                    responses[i] = error_response(e)
                continue
            start = 0
            for i, feeds in members:
                end = start + len(feeds[self.engine.input_names[0]])
                responses[i] = answer({n: v[start:end] for n, v in outputs.items()})
                start = end
        return responses
