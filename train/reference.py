"""The PyTorch reference pipeline, run the way NExT-GPT's authors run it.

HF `generate` for the text, one forward pass for the signal-token hidden states, the output
projectors, then diffusers pipelines fed `prompt_embeds`. Every later backend is compared
against this.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from runtime.conversation import Conversation, Medium, Turn
from runtime.inputs import prepare_media
from runtime.limits import Limits
from runtime.prompt import PromptIds, check_fits, conversation_prompt
from runtime.request import OUTPUT_MODALITIES, Request, Response
from runtime.signals import SignalVocab
from train.decoders import build_pipeline, generate
from train.model import NextGPT



class SignalConstraint(LogitsProcessor):
    """Force a started run to completion; never sample a run's later tokens out of a run."""

    def __init__(self, vocab: SignalVocab) -> None:
        self.vocab = vocab
        self.banned = torch.tensor(vocab.banned_outside_run)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, ids in enumerate(input_ids.tolist()):
            forced = self.vocab.forced_next(ids)
            if forced is None:
                scores[row, self.banned] = -torch.inf
            else:
                keep = scores[row, forced].clone()
                scores[row] = -torch.inf
                scores[row, forced] = keep
        return scores


class StopOnText(StoppingCriteria):
    """Stop once the visible text contains the template's stop marker ("###")."""

    def __init__(self, decode: Callable[[list[int]], str], stop: str) -> None:
        self.decode, self.stop = decode, stop

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.tensor([self.stop in self.decode(ids) for ids in input_ids.tolist()])


class ReferencePipeline:
    """A loaded checkpoint plus the pipelines built once (the reference rebuilds them per call)."""

    def __init__(self, model: NextGPT, progress: bool = True) -> None:
        self.model = model
        self.config = model.config
        self.vocab = SignalVocab({m: list(ids) for m, ids in self.config["tokens"]["signal_ids"].items()})
        self.pipelines = {
            m: build_pipeline(model.decoders[m], self.config["decoders"][m], progress=progress)
            for m in OUTPUT_MODALITIES
        }

    def text_of(self, ids: list[int]) -> str:
        return self.model.tokenizer.decode(self.vocab.strip(ids), skip_special_tokens=True)

    def answer_text(self, ids: list[int]) -> str:
        """Generated ids as the answer's text in a later prompt: signal runs written out, EOS dropped."""
        return self.model.tokenizer.decode(ids, skip_special_tokens=True)

    @torch.no_grad()
    def encode(self, inputs: list[tuple[str, np.ndarray]]) -> torch.Tensor:
        """(N, H): one LLM token per input, the input projection of its ImageBind embedding."""
        enc = self.model.encoder
        tokens = [torch.zeros(0, self.config["llm"]["hidden_size"])] + [
            self.model.input_projection(
                enc.encode_audio(torch.from_numpy(x)) if m == "audio" else enc.encode_vision(torch.from_numpy(x))
            )
            for m, x in inputs
        ]
        return torch.cat(tokens)

    def prompt_embeds(self, prompt: PromptIds, media_tokens: torch.Tensor | None) -> torch.Tensor:
        """`inputs_embeds` of the prompt: each media token at its own position (none without media)."""
        embeds = self.model.embed_tokens(torch.tensor([prompt.ids]))
        if prompt.media_positions:
            embeds[0, prompt.media_positions] = media_tokens.to(embeds.dtype)
        return embeds

    def prompt(self, conversation: Conversation, reserved: int) -> PromptIds:
        tok = self.model.tokenizer
        prompt = conversation_prompt(
            conversation,
            self.config["prompt"],
            lambda s: tok.encode(s, add_special_tokens=False),
            self.config["tokens"]["bos_id"],
            tok.unk_token_id,
            self.answer_text,
        )
        check_fits(len(prompt.ids), reserved, self.config["llm"]["max_position_embeddings"])
        return prompt

    def build_prompt(self, text: str, media: int, reserved: int) -> PromptIds:
        """One user turn of `text` with `media` input media."""
        return self.prompt(Conversation((Turn.user(text, [Medium("image", Path())] * int(media)),)), reserved)

    @torch.no_grad()
    def generate_ids(self, embeds: torch.Tensor, req: Request) -> list[int]:
        gen = self.config["generation"]
        temperature = gen["temperature"] if req.temperature is None else req.temperature
        top_p = gen["top_p"] if req.top_p is None else req.top_p
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
        stop = self.config["prompt"]["stop"]
        out = self.model.llm.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
            max_new_tokens=req.max_new_tokens or gen["max_new_tokens"],
            logits_processor=LogitsProcessorList([SignalConstraint(self.vocab)]),
            stopping_criteria=StoppingCriteriaList([StopOnText(self.text_of, stop)]),
            pad_token_id=self.model.tokenizer.unk_token_id,
            eos_token_id=self.model.tokenizer.eos_token_id,
            **sampling,
        )
        ids = out[0].tolist()
        while ids and stop in self.text_of(ids):
            ids.pop()
        return ids

    @torch.no_grad()
    def signal_conditions(self, embeds: torch.Tensor, ids: list[int]) -> dict[str, torch.Tensor]:
        """Projector outputs for each complete run: last-layer post-norm states at its tokens."""
        runs = self.vocab.completed(ids)
        if not runs:
            return {}
        full = torch.cat([embeds, self.model.embed_tokens(torch.tensor([ids]))], dim=1)
        hidden = self.model.llm(inputs_embeds=full, output_hidden_states=True).hidden_states[-1]
        conds = {}
        for modality, start in runs.items():
            run_ids = torch.tensor([self.vocab.runs[modality]])
            pos = embeds.shape[1] + start
            h = hidden[:, pos : pos + run_ids.shape[1]]
            conds[modality] = self.model.projectors[modality](h, self.model.embed_tokens(run_ids))
        return conds

    def __call__(self, req: Request) -> Response:
        limits = Limits.for_config(self.config)
        req.check(limits)
        conversation = req.dialogue
        conversation.check(self.vocab)
        max_new = req.max_new_tokens or self.config["generation"]["max_new_tokens"]
        reserved = max_new + sum(len(r) for r in self.vocab.runs.values())
        prompt = self.prompt(conversation, reserved)
        limits.check_prompt_tokens(len(prompt.ids))
        inputs = prepare_media(self.config["imagebind"], conversation.inputs(), limits=limits)
        torch.manual_seed(req.seed)
        embeds = self.prompt_embeds(prompt, self.encode(inputs))
        ids = self.vocab.finish(self.generate_ids(embeds, req), [req.output] if req.output else [])
        conds = self.signal_conditions(embeds, ids)
        media = {m: self.decode(m, c, req) for m, c in conds.items()}
        return Response(self.text_of(ids).strip(), ids, media, prompt_tokens=len(prompt.ids))

    def decode(self, modality: str, cond: torch.Tensor, req: Request) -> np.ndarray:
        section = self.config["decoders"][modality]
        generator = torch.Generator().manual_seed(req.seed)
        return generate(
            self.pipelines[modality],
            section,
            cond,
            steps=req.steps or section["steps"],
            guidance=section["guidance"] if req.guidance is None else req.guidance,
            generator=generator,
        )
