"""Ensemble step 1: the request's files -> ImageBind-ready clips (runtime.inputs), one tensor per
input modality holding one row per medium of it, in conversation order. The request's values are
checked here against the repository's limits, before any other step works on it."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.inputs import prepare_media
from runtime.manifest import read_manifest
from runtime.stop import ShouldStop
from triton_repo.protocol import MEDIA_ORDER, Getter, clips_name, decode_request
from triton_repo.served import PipelineModel, request_files


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        self.imagebind = read_manifest(Path(self.params["engines"])).config["imagebind"]

    def answer(self, get: Getter, should_stop: ShouldStop) -> dict[str, np.ndarray]:
        decode_request(get).check(self.limits)  # before any file is written
        with request_files(get, self.limits, self.params["upload_dir"]) as files:
            media = decode_request(get, files).dialogue.inputs()
            inputs = prepare_media(self.imagebind, media, limits=self.limits)
        rows: dict[str, list[np.ndarray]] = {}
        for modality, clips in inputs:
            rows.setdefault(modality, []).append(clips)
        order = np.array([m.encode() for m, _ in inputs], dtype=object)
        return {MEDIA_ORDER: order, **{clips_name(m): np.concatenate(r) for m, r in rows.items()}}
