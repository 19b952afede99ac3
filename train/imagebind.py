"""The vision and audio halves of ImageBind (imagebind_huge), with the official state-dict names.

Every module attribute mirrors `facebookresearch/ImageBind` so that the real `imagebind_huge.pth`,
minus its text/depth/thermal/imu keys, loads with `strict=True`. Sizes come from the config's
`imagebind` section. The encoder is frozen in NExT-GPT, so the audio trunk's stochastic depth
(drop path 0.1, identity at inference) is left out. Inputs must have the configured sizes: the
reference's position-embedding interpolation for other sizes is not needed and not implemented.
"""
from __future__ import annotations

import math
from os import PathLike
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runtime.preprocess import audio_rows, pitch_shape

MODALITIES = ("vision", "audio")
_GROUPS = ("modality_preprocessors", "modality_trunks", "modality_heads", "modality_postprocessors")
# The reference's LearnableLogitScaling clamps the scale at this value.
_MAX_LOGIT_SCALE = 100.0
# The reference uses eps 1e-6 everywhere except the audio stem's LayerNorm (PyTorch default).
_EPS = 1e-6


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


class _PadIm2Video(nn.Module):
    """Repeats a single frame `num_frames` times; a full clip passes through unchanged."""

    def __init__(self, num_frames: int) -> None:
        super().__init__()
        self.num_frames = num_frames

    def forward(self, x: Tensor) -> Tensor:
        # expand broadcasts T=1 and is a no-op for T=num_frames: same values as the reference's
        # repeat, without a branch on the shape.
        return x.expand(-1, -1, self.num_frames, -1, -1)


class _PatchStem(nn.Module):
    """PatchEmbedGeneric: conv patchify, flatten to (B, N, D), optional LayerNorm."""

    def __init__(self, proj: nn.Module, norm_layer: nn.Module | None = None) -> None:
        super().__init__()
        self.proj = proj
        self.norm_layer = norm_layer

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        return x if self.norm_layer is None else self.norm_layer(x)


class _PosEmbedding(nn.Module):
    """SpatioTemporalPosEmbeddingHelper(learnable=True): just holds `pos_embed`."""

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(1, num_tokens, dim) * dim**-0.5)


class _Preprocessor(nn.Module):
    """RGBDTPreprocessor: patch tokens, one class token in front, learnable position embedding."""

    def __init__(self, stem: _PatchStem, num_patches: int, dim: int) -> None:
        super().__init__()
        # The reference names the stem `rgbt_stem` for audio too (AudioPreprocessor subclasses it).
        self.rgbt_stem = stem
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * dim**-0.5)
        self.pos_embedding_helper = _PosEmbedding(num_patches + 1, dim)

    def patches(self, x: Tensor) -> Tensor:
        return self.rgbt_stem(x)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patches(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat((cls, tokens), dim=1) + self.pos_embedding_helper.pos_embed


class _PitchPreprocessor(_Preprocessor):
    """The audio preprocessor for clips with pitch rows below the log-mel (a preset's `pitch_classes`
    and `octaves`; ImageBind has none): the rows get a stem of their own, one patch of all of them
    per time step of the log-mel's patches, and their tokens follow the log-mel's."""

    def __init__(self, stem: _PatchStem, pitch_stem: _PatchStem, mel_rows: int, num_patches: int, dim: int) -> None:
        super().__init__(stem, num_patches, dim)
        self.pitch_stem = pitch_stem
        self.mel_rows = mel_rows

    def patches(self, x: Tensor) -> Tensor:
        mel, pitch = x[:, :, : self.mel_rows], x[:, :, self.mel_rows :]
        return torch.cat((self.rgbt_stem(mel), self.pitch_stem(pitch)), dim=1)


def _vision_preprocessor(cfg: dict[str, Any]) -> _Preprocessor:
    kt, kh, kw = cfg["kernel"]
    dim, size = cfg["embed_dim"], cfg["image_size"]
    conv = nn.Conv3d(3, dim, kernel_size=(kt, kh, kw), stride=(kt, kh, kw), bias=False)
    # nn.Sequential so the conv is `proj.1`, as in the reference.
    stem = _PatchStem(nn.Sequential(_PadIm2Video(cfg["num_frames"]), conv))
    num_patches = (
        _conv_out(cfg["num_frames"], kt, kt) * _conv_out(size, kh, kh) * _conv_out(size, kw, kw)
    )
    return _Preprocessor(stem, num_patches, dim)


def _audio_preprocessor(cfg: dict[str, Any]) -> _Preprocessor:
    dim, k, s = cfg["embed_dim"], cfg["kernel"], cfg["stride"]
    # A single-layer stem is stored bare (`proj.weight`, no `.0`) in the reference.
    conv = nn.Conv2d(1, dim, kernel_size=k, stride=s, bias=False)
    stem = _PatchStem(conv, nn.LayerNorm(dim))
    steps = _conv_out(cfg["target_length"], k, s)
    num_patches = _conv_out(cfg["num_mel_bins"], k, s) * steps
    rows = sum(pitch_shape(cfg))
    if not rows:
        return _Preprocessor(stem, num_patches, dim)
    pitch_conv = nn.Conv2d(1, dim, kernel_size=(rows, k), stride=(rows, s), bias=False)
    return _PitchPreprocessor(stem, _PatchStem(pitch_conv, nn.LayerNorm(dim)), cfg["num_mel_bins"], num_patches + steps, dim)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    """BlockWithMasking without layer scale: pre-norm attention and MLP residuals."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, add_bias_kv: bool) -> None:
        super().__init__()
        # Sequence-first like the reference; this also keeps nn.MultiheadAttention off its
        # batch-first inference fast path, so eval, tracing and export run the same ops.
        self.attn = nn.MultiheadAttention(dim, heads, bias=True, add_bias_kv=add_bias_kv)
        self.norm_1 = nn.LayerNorm(dim, eps=_EPS)
        self.mlp = _Mlp(dim, int(mlp_ratio * dim))
        self.norm_2 = nn.LayerNorm(dim, eps=_EPS)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm_2(x))


class _Trunk(nn.Module):
    """SimpleTransformer: optional pre-LayerNorm, then blocks over (L, B, D) tokens."""

    def __init__(self, cfg: dict[str, Any], pre_layer_norm: bool, add_bias_kv: bool) -> None:
        super().__init__()
        dim = cfg["embed_dim"]
        # Index 0 as in the reference, whose index 1 (a parameter-free rearrange) is the
        # transpose in forward.
        self.pre_transformer_layer = nn.Sequential(
            nn.LayerNorm(dim, eps=_EPS) if pre_layer_norm else nn.Identity()
        )
        self.blocks = nn.Sequential(
            *(
                _Block(dim, cfg["num_heads"], cfg["mlp_ratio"], add_bias_kv)
                for _ in range(cfg["num_blocks"])
            )
        )

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.pre_transformer_layer(tokens).transpose(0, 1)
        return self.blocks(x).transpose(0, 1)


class _SelectToken(nn.Module):
    """SelectElement(index=0): the class token of (B, L, D) tokens."""

    def forward(self, x: Tensor) -> Tensor:
        return x[:, 0]


def _head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim, eps=_EPS), _SelectToken(), nn.Linear(dim, out_dim, bias=False)
    )


class _Normalize(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1, p=2)


class _LogitScale(nn.Module):
    """LearnableLogitScaling(learnable=False): a fixed scale kept as a (saved) buffer."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.register_buffer("log_logit_scale", torch.tensor(math.log(scale)))

    def forward(self, x: Tensor) -> Tensor:
        return torch.clamp(self.log_logit_scale.exp(), max=_MAX_LOGIT_SCALE) * x


class ImageBindEncoder(nn.Module):
    """ImageBind's vision and audio encoders: multi-clip inputs to one embedding per input."""

    def __init__(self, cfg_imagebind: dict[str, Any]) -> None:
        super().__init__()
        vision, audio = cfg_imagebind["vision"], cfg_imagebind["audio"]
        out_dim = cfg_imagebind["out_embed_dim"]
        self.vision_cfg, self.audio_cfg = vision, audio
        self.modality_preprocessors = nn.ModuleDict(
            {"vision": _vision_preprocessor(vision), "audio": _audio_preprocessor(audio)}
        )
        self.modality_trunks = nn.ModuleDict(
            {
                "vision": _Trunk(vision, pre_layer_norm=True, add_bias_kv=False),
                "audio": _Trunk(audio, pre_layer_norm=False, add_bias_kv=True),
            }
        )
        self.modality_heads = nn.ModuleDict(
            {m: _head(c["embed_dim"], out_dim) for m, c in (("vision", vision), ("audio", audio))}
        )
        self.modality_postprocessors = nn.ModuleDict(
            {
                "vision": _Normalize(),
                "audio": nn.Sequential(_Normalize(), _LogitScale(audio["logit_scale"])),
            }
        )

    def _encode(self, modality: str, clips: Tensor) -> Tensor:
        """(B, C, ...) clips -> (B, out): every clip encoded and postprocessed, then averaged."""
        num_clips = clips.shape[1]
        x = self.modality_preprocessors[modality](clips.flatten(0, 1))
        x = self.modality_heads[modality](self.modality_trunks[modality](x))
        x = self.modality_postprocessors[modality](x)
        # The reference averages after postprocessing, so a video's embedding has norm <= 1.
        return x.unflatten(0, (-1, num_clips)).mean(dim=1)

    def encode_vision(self, clips: Tensor) -> Tensor:
        """(B, C, 3, T, S, S) with T = 1 (image) or num_frames (video clip) -> (B, out)."""
        frames, size = self.vision_cfg["num_frames"], self.vision_cfg["image_size"]
        shape = tuple(clips.shape)
        if len(shape) != 6 or shape[2:4] not in ((3, 1), (3, frames)) or shape[4:] != (size, size):
            want = f"(B, C, 3, 1 or {frames}, {size}, {size})"
            raise ValueError(f"vision clips must be {want}, got {shape}")
        return self._encode("vision", clips)

    def encode_audio(self, clips: Tensor) -> Tensor:
        """(B, C, 1, rows, T) log-mel (and pitch-row) clips -> (B, out), norm logit_scale for C = 1."""
        mel, frames = audio_rows(self.audio_cfg), self.audio_cfg["target_length"]
        shape = tuple(clips.shape)
        if len(shape) != 5 or shape[2:] != (1, mel, frames):
            raise ValueError(f"audio clips must be (B, C, 1, {mel}, {frames}), got {shape}")
        return self._encode("audio", clips)


def official_key_filter(key: str) -> bool:
    """True for an official imagebind_huge key of a modality kept here (vision, audio)."""
    parts = key.split(".")
    return len(parts) > 2 and parts[0] in _GROUPS and parts[1] in MODALITIES


def _listing(names: list[str], limit: int = 5) -> str:
    more = f", ... (+{len(names) - limit})" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def load_official_imagebind(
    path: str | PathLike[str], encoder: ImageBindEncoder
) -> dict[str, Tensor]:
    """The vision/audio part of an official ImageBind checkpoint, checked against `encoder`.

    Raises ValueError naming missing, unexpected and wrongly shaped keys, so a checkpoint of
    another size (or a non-ImageBind file) fails before `load_state_dict`.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    kept = {k: v for k, v in state.items() if official_key_filter(k)}
    expected = encoder.state_dict()
    missing = sorted(expected.keys() - kept.keys())
    unexpected = sorted(kept.keys() - expected.keys())
    wrong = sorted(
        f"{k} (checkpoint {tuple(kept[k].shape)}, encoder {tuple(v.shape)})"
        for k, v in expected.items()
        if k in kept and kept[k].shape != v.shape
    )
    found = {"missing": missing, "unexpected": unexpected, "wrong shape": wrong}
    problems = [f"{len(names)} {what}: {_listing(names)}" for what, names in found.items() if names]
    if problems:
        raise ValueError(f"{path} does not match the ImageBind encoder: " + "; ".join(problems))
    return kept
