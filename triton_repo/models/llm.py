"""Ensemble step 3: the conversation and its media tokens -> text, token ids and the hidden states
at each signal-token run (runtime.generation on the local LLM engine, which keeps its KV cache here,
and, for a request with a session, keeps it between turns: runtime.sessions)."""
from __future__ import annotations

import numpy as np

from runtime.request import Response
from runtime.stop import ShouldStop
from triton_repo.protocol import MEDIA_TOKEN, Getter, decode_request, dialogue, encode_answer, hidden_name
from triton_repo.served import PipelineModel, pipeline_from_parameters


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        self.llm = pipeline_from_parameters(self.params).llm

    def answer(self, get: Getter, should_stop: ShouldStop) -> dict[str, np.ndarray]:
        req = decode_request(get)
        req.check(self.limits)  # also when called on its own, not through the ensemble
        tokens = get(MEDIA_TOKEN)
        gen = self.llm.generate(
            self.llm.prompt(dialogue(get), self.limits),
            None if tokens is None else tokens.reshape(-1, self.llm.hidden_size),
            max_new_tokens=req.max_new_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            required=[req.output] if req.output else [],
            should_stop=should_stop,
            session=req.session,
        )
        answer = encode_answer(Response(gen.text, gen.ids, {}, gen.reused, gen.prompt_tokens))
        return {**answer, **{hidden_name(m): h for m, h in gen.signal_hidden.items()}}
