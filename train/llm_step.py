"""The LLM as one exportable step: prefill and one-token decode share a graph.

The step takes the past keys/values as plain tensors and returns the present ones, so the
runtime owns the cache and the exported graph stays stateless.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, LlamaForCausalLM

from train.model import NextGPT


def merged_llm(model: NextGPT) -> LlamaForCausalLM:
    """A copy of the LLM with the LoRA adapter folded into its weights; `model` is left as it was."""
    # merge_and_unload rewrites the peft model in place, hence the deepcopy.
    return copy.deepcopy(model.llm).merge_and_unload().eval()


def empty_cache(config: dict[str, Any], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-length past keys and values, (L, B, KV, 0, D): the past of a prefill."""
    llm = config["llm"]
    shape = (
        llm["num_hidden_layers"],
        batch,
        llm["num_key_value_heads"],
        0,
        llm["hidden_size"] // llm["num_attention_heads"],
    )
    return torch.zeros(shape), torch.zeros(shape)


class LlmStep(nn.Module):
    """Merged LLaMA over a chunk of S tokens after P cached ones (P = 0: prefill, S = 1: decode).

    There is no attention mask input: rows of a batch are never padded, every row has the same
    P and S. The multimodal token replaces the embedding at `media_position` (-1: none).
    """

    def __init__(self, llm: LlamaForCausalLM) -> None:
        super().__init__()
        self.llm = llm
        # Inference only: a fresh nn.Module starts in training mode, which the exporter warns about.
        self.eval()

    def forward(
        self,
        input_ids: torch.Tensor,
        media_token: torch.Tensor,
        media_position: torch.Tensor,
        past_keys: torch.Tensor,
        past_values: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B,S) ids, (B,H) token, (B,) position, (L,B,KV,P,D) past ->
        (B,V) last-position logits, (B,S,H) last-layer post-norm states, (L,B,KV,P+S,D) present."""
        seq, past = input_ids.shape[1], past_keys.shape[3]
        embeds = self.llm.get_input_embeddings()(input_ids)
        # A mask instead of indexing keeps the graph free of data-dependent control flow.
        is_media = torch.arange(seq, device=input_ids.device)[None, :] == media_position[:, None]
        embeds = torch.where(is_media[..., None], media_token[:, None, :], embeds)
        position_ids = (past + torch.arange(seq, device=input_ids.device))[None, :]
        # One stacked tensor per keys/values gives one fixed input/output name whatever the layer
        # count; the price is a copy of the cache per step (the stack), negligible at these sizes.
        # P = 0 is safe in the exported graph: torch.export bakes in the P > 0 side of any Python
        # branch on P without complaint, and the one on this path (`numel() == 0` in transformers'
        # `get_seq_length`) gives 0 on both sides. The P = 0 ONNX tests catch a change there.
        cache = DynamicCache()
        for layer in range(past_keys.shape[0]):
            cache.update(past_keys[layer], past_values[layer], layer)
        out = self.llm.model(inputs_embeds=embeds, position_ids=position_ids, past_key_values=cache, use_cache=True)
        hidden = out.last_hidden_state
        logits = self.llm.lm_head(hidden[:, -1])
        present_keys = torch.stack([layer.keys for layer in cache.layers])
        present_values = torch.stack([layer.values for layer in cache.layers])
        return logits, hidden, present_keys, present_values
