"""What a caller asks for and what it gets back, shared by every pipeline (reference, engines, Triton)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

OUTPUT_MODALITIES = ("image", "video", "audio")


@dataclass
class Request:
    prompt: str
    files: dict[str, Path | None] = field(default_factory=dict)
    output: str | None = None  # a modality the answer must contain
    seed: int = 0
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    steps: int | None = None
    guidance: float | None = None

    def check(self) -> None:
        """Refuse what is wrong before any work."""
        if self.output is not None and self.output not in OUTPUT_MODALITIES:
            raise ValueError(f"unknown output modality {self.output!r}; known: {', '.join(OUTPUT_MODALITIES)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps must be at least 1, got {self.steps}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")


@dataclass
class Response:
    text: str
    token_ids: list[int]
    media: dict[str, np.ndarray]
