"""NExT-GPT's input projection and its transformer-mode output projectors.

Attribute names (`fc`, `tfm`, `model`, `query_embs`) follow the reference `TextFcLayer`, so the
released `gen_text_hidden_fcs*` weights load by stripping a prefix.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class OutputProjector(nn.Module):
    """Signal-token hidden states (B, N, H) -> decoder conditioning (B, Q, out_dim)."""

    def __init__(self, llm_hidden: int, proj: dict[str, Any], out_tokens: int, out_dim: int) -> None:
        super().__init__()
        hidden = proj["hidden"]
        self.fc = nn.Linear(llm_hidden, hidden)
        self.tfm = nn.Transformer(
            d_model=hidden,
            nhead=proj["heads"],
            num_encoder_layers=proj["encoder_layers"],
            num_decoder_layers=proj["decoder_layers"],
            dim_feedforward=proj["ffn"],
            dropout=0.0,
            batch_first=True,
            norm_first=True,
        )
        self.model = nn.Linear(hidden, out_dim)
        self.query_embs = nn.Parameter(torch.randn(1, out_tokens, hidden))

    def forward(self, hidden_states: torch.Tensor, signal_embeds: torch.Tensor) -> torch.Tensor:
        x = self.fc(hidden_states + signal_embeds)
        queries = self.query_embs.expand(x.shape[0], -1, -1)
        return self.model(self.tfm(x, queries))


def build_projectors(config: dict[str, Any]) -> nn.ModuleDict:
    """One output projector per output modality, sized by its decoder's conditioning."""
    hidden = config["llm"]["hidden_size"]
    return nn.ModuleDict(
        {
            modality: OutputProjector(hidden, config["projector"], dec["embed_tokens"], dec["embed_dim"])
            for modality, dec in config["decoders"].items()
        }
    )


def build_input_projection(config: dict[str, Any]) -> nn.Linear:
    """ImageBind embedding -> one LLM token (the reference `llama_proj`)."""
    return nn.Linear(config["imagebind"]["out_embed_dim"], config["llm"]["hidden_size"])
