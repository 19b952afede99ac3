"""Ensemble step 4: signal-token states -> image, video, audio (output projectors, denoising
loops, VAE decoders, vocoder: runtime.diffusion with every engine a served model)."""
from __future__ import annotations

import numpy as np

from runtime.request import OUTPUT_MODALITIES
from runtime.stop import ShouldStop
from triton_repo.protocol import Getter, decode_request, hidden_name
from triton_repo.served import PipelineModel, pipeline_from_parameters


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        self.pipeline = pipeline_from_parameters(self.params)
        self.decoders = self.pipeline.decoders

    def answer(self, get: Getter, should_stop: ShouldStop) -> dict[str, np.ndarray]:
        req = decode_request(get)
        req.check(self.limits)  # also when called on its own, not through the ensemble
        out = {}
        for modality in OUTPUT_MODALITIES:
            hidden = get(hidden_name(modality))
            if hidden is not None and hidden.size:
                embeds = self.pipeline.project(modality, hidden)
                decoder = self.decoders[modality]
                out[modality.upper()] = decoder.generate(embeds, req.seed, req.steps, req.guidance, should_stop=should_stop)
        return out
