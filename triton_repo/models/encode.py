"""Ensemble step 2: clips -> the one multimodal LLM token (ImageBind through its served engines,
the inputs' tokens summed), as `Any2AnyPipeline.encode` makes it."""
from __future__ import annotations

import numpy as np

from runtime.inputs import INPUT_MODALITIES
from runtime.stop import ShouldStop
from triton_repo.protocol import MEDIA_TOKEN, Getter, clips_name
from triton_repo.served import PipelineModel, pipeline_from_parameters


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        self.pipeline = pipeline_from_parameters(self.params)

    def answer(self, get: Getter, should_stop: ShouldStop) -> dict[str, np.ndarray]:
        inputs = {m: clips for m in INPUT_MODALITIES if (clips := get(clips_name(m))) is not None and clips.size}
        tokens = self.pipeline.encode(inputs.items())
        return {MEDIA_TOKEN: tokens} if len(tokens) else {}
