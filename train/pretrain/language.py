"""Stage 0, language: the LLM learns the world's language (captions, questions and answers, requests)
in the prompt template, with no media and no signal tokens; those come in stages 1 to 3."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from train import synthetic
from train.model import NextGPT
from train.pretrain.loop import fit
from train.presets import PROMPT


def _exchange(question: str, answer: str) -> str:
    return f"{PROMPT['human']}{question}{PROMPT['assistant']} {answer}\n{PROMPT['stop']}"


def world_documents(combos: dict[str, list[dict[str, str]]], seed: int) -> list[str]:
    """Per combination: a description asked for, questions about it answered with the caption in the
    question (the model must copy from its context, as it later reads the media token), a request."""
    rng = np.random.default_rng(seed)
    docs = []
    for modality, items in combos.items():
        for a in items:
            caption = synthetic.CAPTION[modality](a)
            docs.append(_exchange(str(rng.choice(synthetic.DESCRIBE[modality])), caption))
            for question, answer in synthetic.follow_ups(modality, a):
                docs.append(_exchange(f"{caption}. {question}", answer))
            request = str(rng.choice(synthetic.REQUEST[modality])).format(caption)
            docs.append(_exchange(request, synthetic.HERE[modality]))
    return docs


def world_corpus() -> list[str]:
    """Every text of the world, held-out combinations included: what the tokenizer is trained on (the
    words, not the pairing of media and captions, which no text reveals)."""
    return world_documents({m: synthetic.combinations(m) for m in synthetic.CAPTION}, seed=0) + [
        *(q for qs in synthetic.DESCRIBE.values() for q in qs),
        *synthetic.ASK_FOR.values(),
        synthetic.ASK_BACK,
    ]


def pretrain_language(
    model: NextGPT, combos: dict[str, list[dict[str, str]]], settings: dict[str, Any], seed: int, progress: bool = True
) -> dict[str, float]:
    """Language modelling on the world's train-split documents; only the base LLM trains (the adapter
    is off and stays at its start)."""
    tok = model.tokenizer
    docs = [[model.config["tokens"]["bos_id"], *tok.encode(d, add_special_tokens=False)] for d in world_documents(combos, seed)]
    llm = model.llm.get_base_model()
    base = [p for n, p in llm.named_parameters() if "lora_" not in n]
    for p in base:
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    pad = tok.unk_token_id

    def loss(step: int) -> dict[str, Tensor]:
        pick = torch.randint(len(docs), (settings["batch"],), generator=gen)
        rows = [docs[i] for i in pick]
        ids = torch.full((len(rows), max(map(len, rows))), pad)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
        mask = (torch.arange(ids.shape[1])[None] < torch.tensor([len(r) for r in rows])[:, None]).long()
        labels = ids.masked_fill(mask == 0, -100)
        return {"loss": llm(input_ids=ids, attention_mask=mask, labels=labels).loss}

    llm.train()
    with model.llm.disable_adapter():
        result = fit(base, loss, settings, "stage 0: language", progress)
    llm.eval()
    model.requires_grad_(False)
    return result
