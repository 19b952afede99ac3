"""Stage 0, language: the LLM learns the world's language (captions, questions and answers, requests)
in the prompt template, and learns to read one meaning-bearing token in the media slot.

A 7B LLM reads a projected ImageBind token out of the box; a 2-layer LM pre-trained on text alone
does not: frozen, it leaves stage 1's projection on a plateau at the caption prior (measured: the
stage-1 loss stays at 0.62-0.65 for 30 epochs, and the answers name a shape at chance). So beside the
text documents it learns X→text exchanges whose media slot holds a caption's embedding by the caption
tower the ImageBind part trained against (`WorldData.meanings`: text, in ImageBind's space) through a
reader Linear that is then discarded. The LM never sees a medium here; stage 1 still trains the input
projection from its random start.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train import synthetic
from train.batches import IGNORE, Tokens
from train.model import NextGPT
from train.pretrain.loop import fit
from train.pretrain.world_data import WorldData
from train.presets import PROMPT

MEANING_NOISE = 0.5  # norm of the noise added to a unit caption embedding: a medium's embedding is near its caption's, not on it
Row = tuple[list[int], list[int]]  # ids, labels


def _exchange(question: str, answer: str) -> str:
    return f"{PROMPT['human']}{question}{PROMPT['assistant']} {answer}\n{PROMPT['stop']}"


def world_documents(combos: dict[str, list[dict[str, str]]], seed: int) -> list[str]:
    """Per combination: a description asked for, questions about it answered with the caption in the
    question (the model must copy from its context), a request."""
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


def media_exchanges(combos: dict[str, list[dict[str, str]]], seed: int) -> list[tuple[str, int, str, str]]:
    """(modality, combination index, question, answer): a description asked for and each follow-up,
    about the medium in the slot."""
    rng = np.random.default_rng(seed)
    out = []
    for modality, items in combos.items():
        for i, a in enumerate(items):
            out.append((modality, i, str(rng.choice(synthetic.DESCRIBE[modality])), synthetic.CAPTION[modality](a)))
            out += [(modality, i, q, answer) for q, answer in synthetic.follow_ups(modality, a)]
    return out


def world_corpus() -> list[str]:
    """Every text of the world, held-out combinations included: what the tokenizer is trained on (the
    words, not the pairing of media and captions, which no text reveals)."""
    return world_documents({m: synthetic.combinations(m) for m in synthetic.CAPTION}, seed=0) + [
        *(q for qs in synthetic.DESCRIBE.values() for q in qs),
        *synthetic.ASK_FOR.values(),
        synthetic.ASK_BACK,
    ]


def _pad(rows: list[Row], pad: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ids, attention mask and labels."""
    ids = torch.full((len(rows), max(len(r[0]) for r in rows)), pad)
    labels = torch.full_like(ids, IGNORE)
    for r, (row_ids, row_labels) in enumerate(rows):
        ids[r, : len(row_ids)] = torch.tensor(row_ids)
        labels[r, : len(row_labels)] = torch.tensor(row_labels)
    mask = (torch.arange(ids.shape[1])[None] < torch.tensor([len(r[0]) for r in rows])[:, None]).long()
    return ids, mask, labels


def pretrain_language(model: NextGPT, data: WorldData, settings: dict[str, Any], seed: int, progress: bool = True) -> dict[str, float]:
    """Language modelling on the world's train-split documents and media exchanges (`settings["batch"]`
    of each per step); only the base LLM trains (the adapter is off and stays at its start)."""
    if not data.meanings:
        raise RuntimeError("stage 0's language part reads the caption embeddings the imagebind part leaves: run imagebind first")
    tok, config = model.tokenizer, model.config
    bos = config["tokens"]["bos_id"]
    texts = [(ids, ids) for ids in ([bos, *tok.encode(d, add_special_tokens=False)] for d in world_documents(data.combos, seed))]
    tokens = Tokens(tok, config)
    exchanges = []
    for modality, index, question, answer in media_exchanges(data.combos, seed):
        ids, labels, positions = tokens.dialogue([{"human": question, "assistant": answer}], [modality])
        exchanges.append((ids, labels, positions[0], data.meanings[modality][index]))
    llm = model.llm.get_base_model()
    reader = nn.Linear(config["imagebind"]["out_embed_dim"], config["llm"]["hidden_size"])
    base = [p for n, p in llm.named_parameters() if "lora_" not in n]
    for p in base:
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    pad = tok.unk_token_id

    def loss(step: int) -> dict[str, Tensor]:
        ids, mask, labels = _pad([texts[i] for i in torch.randint(len(texts), (settings["batch"],), generator=gen)], pad)
        text = llm(input_ids=ids, attention_mask=mask, labels=labels).loss
        picked = [exchanges[i] for i in torch.randint(len(exchanges), (settings["batch"],), generator=gen)]
        ids, mask, labels = _pad([(e[0], e[1]) for e in picked], pad)
        meanings = torch.stack([e[3] for e in picked])
        noise = torch.randn(meanings.shape, generator=gen) * MEANING_NOISE / meanings.shape[1] ** 0.5
        embeds = llm.get_input_embeddings()(ids).index_put(
            (torch.arange(len(picked)), torch.tensor([e[2] for e in picked])), reader(F.normalize(meanings + noise, dim=-1))
        )
        media = llm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
        return {"loss": text + media, "text": text, "media": media}

    llm.train()
    with model.llm.disable_adapter():
        result = fit([*base, *reader.parameters()], loss, settings, "stage 0: language", progress)
    llm.eval()
    model.requires_grad_(False)
    return result
