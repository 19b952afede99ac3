"""Ensemble step 2: clips -> one LLM token per input medium, in the order of the prompt's media
slots (ImageBind through its served engines), as `Any2AnyPipeline.encode` makes them."""
from __future__ import annotations

import numpy as np

from runtime.stop import ShouldStop
from triton_repo.protocol import MEDIA_TOKEN, Getter, clips_name, media_order
from triton_repo.served import PipelineModel, pipeline_from_parameters


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        self.pipeline = pipeline_from_parameters(self.params)

    def answer(self, get: Getter, should_stop: ShouldStop) -> dict[str, np.ndarray]:
        order = media_order(get)
        clips = {m: get(clips_name(m)) for m in set(order)}  # one row per medium of that modality, in order
        taken = dict.fromkeys(clips, 0)
        inputs = []
        for modality in order:
            inputs.append((modality, clips[modality][taken[modality] : taken[modality] + 1]))
            taken[modality] += 1
        tokens = self.pipeline.encode(inputs)
        return {MEDIA_TOKEN: tokens} if len(tokens) else {}
