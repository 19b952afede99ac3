"""Ensemble step 1: the request's files -> ImageBind-ready clips (runtime.inputs), one tensor per
input modality. The request's values are checked here against the repository's limits, before
any other step works on it."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.inputs import prepare_inputs
from runtime.manifest import read_manifest
from runtime.stop import ShouldStop
from triton_repo.protocol import Getter, clips_name, decode_request
from triton_repo.served import PipelineModel, request_files


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        self.imagebind = read_manifest(Path(self.params["engines"])).config["imagebind"]

    def answer(self, get: Getter, should_stop: ShouldStop) -> dict[str, np.ndarray]:
        decode_request(get).check(self.limits)  # before any file is written
        with request_files(get, self.limits, self.params["upload_dir"]) as files:
            inputs = prepare_inputs(self.imagebind, files, limits=self.limits)
        return {clips_name(m): clips for m, clips in inputs.items()}
