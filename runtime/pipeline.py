"""The any-to-any pipeline on a build's engines: files in, text and media out.

preprocess -> encoders (one LLM token per input medium, each at its place in the conversation) ->
prompt -> LLM generation with the KV cache (kept per session between turns; constrained signal
runs, streaming text) -> output projectors -> denoising loops -> VAE ->
vocoder. Every engine is reached through `Engines`, so the same code drives ONNX Runtime,
TensorRT or the PyTorch modules.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from runtime.backends import Engines
from runtime.diffusion import Decoder
from runtime.generation import LlmGenerator
from runtime.inputs import prepare_media
from runtime.limits import Limits
from runtime.manifest import read_manifest
from runtime.request import OUTPUT_MODALITIES, Request, Response
from runtime.sessions import SessionCache
from runtime.stop import ShouldStop, check

ENCODERS = {"image": "imagebind_vision", "video": "imagebind_vision", "audio": "imagebind_audio"}
TextCallback = Callable[[str], None]
StepCallback = Callable[[str, int, int], None]  # modality, step done, steps in all


class Any2AnyPipeline:
    def __init__(
        self,
        build_dir: Path,
        backend: str = "onnxruntime",
        threads: int = 0,
        wrap: Callable[[Engines], Engines] | None = None,
        limits: Limits | None = None,
        precision: str = "fp32",
    ) -> None:
        """`backend`: a label of `runtime.backends.BACKENDS`; `wrap` lets a caller interpose on every
        engine call (timing, remote execution); `limits` default to the build's
        (`Limits.for_build`); `precision` as in `Engines`."""
        self.build = read_manifest(Path(build_dir))
        self.config = self.build.config
        self.limits = limits or Limits.for_build(self.build)
        engines = Engines(self.build, backend, threads, precision)
        self.engines = wrap(engines) if wrap else engines
        self.llm = LlmGenerator.from_engines(self.engines, SessionCache(self.limits))
        self.decoders = {m: Decoder(self.engines, self.build, m) for m in OUTPUT_MODALITIES}

    def warm_up(self) -> None:
        """Open every engine now, so the first request does not pay for it."""
        for name in self.build.components:
            self.engines[name]

    def encode(self, inputs: Iterable[tuple[str, np.ndarray]]) -> np.ndarray:
        """(N, H): each input's ImageBind embedding through the input projection, one row per input."""
        frames = self.config["imagebind"]["vision"]["num_frames"]
        tokens = [np.zeros((0, self.llm.hidden_size), np.float32)]
        for modality, clips in inputs:
            if modality == "image":  # a still image is a clip of one frame repeated, as PadIm2Video does
                clips = np.repeat(clips, frames, axis=3)
            tokens.append(self.engines[ENCODERS[modality]].run({"clips": clips})["token"])
        return np.concatenate(tokens)

    def project(self, modality: str, hidden: np.ndarray) -> np.ndarray:
        return self.engines[f"projector_{modality}"].run({"hidden": hidden.astype(np.float32)})["embeds"]

    def __call__(
        self,
        req: Request,
        on_text: TextCallback | None = None,
        on_step: StepCallback | None = None,
        should_stop: ShouldStop | None = None,
    ) -> Response:
        """`should_stop` is asked between the stages and at every token and denoising step; a
        reason it names raises `runtime.stop.Stopped`."""
        req.check(self.limits)
        conversation = req.dialogue
        prompt = self.llm.prompt(conversation, self.limits)
        inputs = prepare_media(self.config["imagebind"], conversation.inputs(), limits=self.limits)
        check(should_stop)
        gen = self.llm.generate(
            prompt,
            self.encode(inputs),
            max_new_tokens=req.max_new_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            required=[req.output] if req.output else [],
            on_text=on_text,
            should_stop=should_stop,
            session=req.session,
        )
        media = {}
        for modality, hidden in gen.signal_hidden.items():
            report = None if on_step is None else (lambda done, total, m=modality: on_step(m, done, total))
            media[modality] = self.decoders[modality].generate(
                self.project(modality, hidden), req.seed, req.steps, req.guidance, report, should_stop
            )
        return Response(gen.text, gen.ids, media, gen.reused, gen.prompt_tokens)
