"""NExT-GPT's input projection and its three output projector modes (`TextFcLayer`).

Attribute names follow the reference `TextFcLayer`, so released `gen_text_hidden_fcs*` weights load
by stripping a prefix: `model` (the last Linear of every mode), `fc`, `tfm` and `query_embs`
(transformer), `fc`, `Qformer.bert.*` and `query_tokens` (qformer). The Q-Former's BERT layers are
transformers' own; its feed-forward names differ from BLIP-2's (train/import_nextgpt.py maps them).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEncoder

from train.presets import SIGNAL_TOKEN_COUNTS


class TransformerProjector(nn.Module):
    """Signal-token states -> Linear -> nn.Transformer decoding learned queries -> Linear."""

    def __init__(self, llm_hidden: int, sizes: dict[str, Any], signal_tokens: int, out_tokens: int, out_dim: int) -> None:
        super().__init__()
        hidden = sizes["hidden"]
        self.fc = nn.Linear(llm_hidden, hidden)
        self.tfm = nn.Transformer(
            d_model=hidden,
            nhead=sizes["heads"],
            num_encoder_layers=sizes["encoder_layers"],
            num_decoder_layers=sizes["decoder_layers"],
            dim_feedforward=sizes["ffn"],
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


class LinearProjector(nn.Module):
    """The reference's `linear` mode, one Linear applied to each signal-token state (the reference
    adds no signal embedding here), then the signal tokens pooled to the decoder's token count.

    The reference returns one output token per signal token, which no decoder there can take (4 image
    tokens against SD's 77, and its forward asserts); adaptive average pooling over the token axis
    (repeat when there are fewer signal tokens, average when more) fixes the count without adding a
    parameter, so a released `linear` projector's weights are all the weights this mode has."""

    def __init__(self, llm_hidden: int, sizes: dict[str, Any], signal_tokens: int, out_tokens: int, out_dim: int) -> None:
        super().__init__()
        self.model = nn.Linear(llm_hidden, out_dim)
        # a constant (out_tokens, signal_tokens) matrix: one MatMul in ONNX for any pair of counts
        pool = F.adaptive_avg_pool1d(torch.eye(signal_tokens)[None], out_tokens)[0].T
        self.register_buffer("token_pool", pool.contiguous(), persistent=False)

    def forward(self, hidden_states: torch.Tensor, signal_embeds: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.token_pool, self.model(hidden_states))


class _Embeddings(nn.Module):
    """BLIP-2's Q-Former embeddings for query tokens alone: LayerNorm and dropout, no positions."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.LayerNorm(queries))


class _QFormerBert(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.embeddings = _Embeddings(config)
        self.encoder = BertEncoder(config)
        # transformers builds cross-attention only into decoder layers and makes their
        # self-attention causal; BLIP-2's queries attend to each other both ways
        for layer in self.encoder.layer:
            layer.attention.self.is_causal = False

    def forward(self, queries: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        out = self.encoder(self.embeddings(queries), encoder_hidden_states=encoder_hidden_states)
        return out.last_hidden_state


class _QFormer(nn.Module):
    """Holds `bert`, so parameter names read `Qformer.bert.*` as in the reference."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.bert = _QFormerBert(config)


def qformer_config(sizes: dict[str, Any], query_length: int) -> BertConfig:
    """The reference's `init_Qformer` config at the preset's sizes: cross-attention in every layer."""
    config = BertConfig(
        hidden_size=sizes["hidden"],
        num_hidden_layers=sizes["layers"],
        num_attention_heads=sizes["heads"],
        intermediate_size=sizes["ffn"],
        hidden_dropout_prob=sizes["dropout"],
        attention_probs_dropout_prob=sizes["dropout"],
        is_decoder=True,
        add_cross_attention=True,
    )
    config.query_length = query_length
    # SDPA: unmasked, it exports as ONNX Runtime's fused attention in the CPU ONNX (export/onnx_export.py)
    config._attn_implementation = "sdpa"
    return config


class QFormerProjector(nn.Module):
    """Signal-token states -> Linear -> BERT whose learned query tokens cross-attend to them -> Linear."""

    def __init__(self, llm_hidden: int, sizes: dict[str, Any], signal_tokens: int, out_tokens: int, out_dim: int) -> None:
        super().__init__()
        config = qformer_config(sizes, out_tokens)
        self.fc = nn.Linear(llm_hidden, config.hidden_size)
        self.Qformer = _QFormer(config)
        self.query_tokens = nn.Parameter(torch.randn(1, out_tokens, config.hidden_size) * config.initializer_range)
        self.model = nn.Linear(config.hidden_size, out_dim)

    def forward(self, hidden_states: torch.Tensor, signal_embeds: torch.Tensor) -> torch.Tensor:
        x = self.fc(hidden_states + signal_embeds)
        queries = self.query_tokens.expand(x.shape[0], -1, -1)
        return self.model(self.Qformer.bert(queries, x))


PROJECTORS: dict[str, type[nn.Module]] = {
    "transformer": TransformerProjector,
    "linear": LinearProjector,
    "qformer": QFormerProjector,
}
MODES = tuple(PROJECTORS)


def projector_mode(config: dict[str, Any], modality: str) -> str:
    """The output projector mode a checkpoint's config names for one output modality."""
    mode = config["projector"]["modes"][modality]
    if mode not in PROJECTORS:
        raise ValueError(f"projector mode {mode!r} for {modality} is not one of {', '.join(MODES)}")
    return mode


def build_projector(config: dict[str, Any], modality: str) -> nn.Module:
    """Signal-token hidden states (B, N, H) -> decoder conditioning (B, Q, out_dim), in the config's mode."""
    mode = projector_mode(config, modality)
    dec = config["decoders"][modality]
    return PROJECTORS[mode](
        config["llm"]["hidden_size"], config["projector"][mode], SIGNAL_TOKEN_COUNTS[modality], dec["embed_tokens"], dec["embed_dim"]
    )


def build_projectors(config: dict[str, Any]) -> nn.ModuleDict:
    """One output projector per output modality, sized by its decoder's conditioning."""
    return nn.ModuleDict({modality: build_projector(config, modality) for modality in config["decoders"]})


def build_input_projection(config: dict[str, Any]) -> nn.Linear:
    """ImageBind embedding -> one LLM token (the reference `llama_proj`)."""
    return nn.Linear(config["imagebind"]["out_embed_dim"], config["llm"]["hidden_size"])
