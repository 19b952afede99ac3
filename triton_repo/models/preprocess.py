"""Ensemble step 1: the request's files -> ImageBind-ready clips (runtime.inputs), one tensor per
input modality. The request's values are checked here, before any other step works on it."""
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
        with request_files(get, self.params["upload_dir"]) as files:
            decode_request(get, files).check()
            inputs = prepare_inputs(self.imagebind, files)
        return {clips_name(m): clips for m, clips in inputs.items()}
