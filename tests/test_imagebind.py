"""ImageBind vision/audio encoder: shapes, norms, clip semantics, the official checkpoint layout."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from train.imagebind import ImageBindEncoder, load_official_imagebind, official_key_filter
from runtime.preprocess import audio_rows
from train.presets import get_preset


@pytest.fixture(scope="module")
def cfg() -> dict:
    """The tiny sizes with ImageBind's own audio front end (log-mel only)."""
    ib = get_preset("tiny")["imagebind"]
    ib["audio"].update(pitch_classes=0, octaves=0)
    return ib


@pytest.fixture(scope="module")
def encoder(cfg: dict) -> ImageBindEncoder:
    torch.manual_seed(0)
    return ImageBindEncoder(cfg).eval()


def _images(cfg: dict, batch: int, clips: int = 1, frames: int = 1) -> Tensor:
    size = cfg["vision"]["image_size"]
    return torch.randn(batch, clips, 3, frames, size, size)


def _audio(cfg: dict, batch: int, clips: int) -> Tensor:
    return torch.randn(batch, clips, 1, audio_rows(cfg["audio"]), cfg["audio"]["target_length"])


def _official_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Key -> shape of imagebind_huge's vision/audio tensors, written from the reference layout."""
    out, v, a = cfg["out_embed_dim"], cfg["vision"], cfg["audio"]
    kt, kh, kw = v["kernel"]
    s, k, st = v["image_size"], a["kernel"], a["stride"]
    vision_tokens = 1 + (v["num_frames"] // kt) * (s // kh) * (s // kw)
    audio_tokens = 1 + ((a["num_mel_bins"] - k) // st + 1) * ((a["target_length"] - k) // st + 1)
    shapes: dict[str, tuple[int, ...]] = {}
    for m, c, proj, stem, tokens in (
        ("vision", v, "rgbt_stem.proj.1.weight", (3, kt, kh, kw), vision_tokens),
        ("audio", a, "rgbt_stem.proj.weight", (1, k, k), audio_tokens),
    ):
        d, hidden = c["embed_dim"], c["mlp_ratio"] * c["embed_dim"]
        pre = f"modality_preprocessors.{m}."
        shapes[pre + "cls_token"] = (1, 1, d)
        shapes[pre + proj] = (d, *stem)
        shapes[pre + "pos_embedding_helper.pos_embed"] = (1, tokens, d)
        for i in range(c["num_blocks"]):
            b = f"modality_trunks.{m}.blocks.{i}."
            shapes |= {
                b + "attn.in_proj_weight": (3 * d, d),
                b + "attn.in_proj_bias": (3 * d,),
                b + "attn.out_proj.weight": (d, d),
                b + "attn.out_proj.bias": (d,),
                b + "norm_1.weight": (d,),
                b + "norm_1.bias": (d,),
                b + "mlp.fc1.weight": (hidden, d),
                b + "mlp.fc1.bias": (hidden,),
                b + "mlp.fc2.weight": (d, hidden),
                b + "mlp.fc2.bias": (d,),
                b + "norm_2.weight": (d,),
                b + "norm_2.bias": (d,),
            }
        shapes[f"modality_heads.{m}.0.weight"] = (d,)
        shapes[f"modality_heads.{m}.0.bias"] = (d,)
        shapes[f"modality_heads.{m}.2.weight"] = (out, d)
    d = v["embed_dim"]
    shapes["modality_trunks.vision.pre_transformer_layer.0.weight"] = (d,)
    shapes["modality_trunks.vision.pre_transformer_layer.0.bias"] = (d,)
    d = a["embed_dim"]
    for i in range(a["num_blocks"]):
        shapes[f"modality_trunks.audio.blocks.{i}.attn.bias_k"] = (1, 1, d)
        shapes[f"modality_trunks.audio.blocks.{i}.attn.bias_v"] = (1, 1, d)
    shapes["modality_preprocessors.audio.rgbt_stem.norm_layer.weight"] = (d,)
    shapes["modality_preprocessors.audio.rgbt_stem.norm_layer.bias"] = (d,)
    shapes["modality_postprocessors.audio.1.log_logit_scale"] = ()
    return shapes


def _official_state(cfg: dict) -> dict[str, Tensor]:
    """A random checkpoint in the official layout, with text keys the loader must drop."""
    g = torch.Generator().manual_seed(1)
    state = {k: 0.2 * torch.randn(s, generator=g) for k, s in _official_shapes(cfg).items()}
    scale = torch.tensor(math.log(cfg["audio"]["logit_scale"]))
    state["modality_postprocessors.audio.1.log_logit_scale"] = scale
    state["modality_preprocessors.text.token_embedding.weight"] = torch.randn(10, 4)
    state["modality_trunks.text.blocks.0.attn.in_proj_weight"] = torch.randn(12, 4)
    state["modality_postprocessors.text.1.log_logit_scale"] = torch.tensor(2.0)
    return state


# A functional re-statement of the reference forward, reading the official keys directly.
def _ln(sd: dict[str, Tensor], p: str, x: Tensor, eps: float = 1e-6) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[p + "weight"], sd[p + "bias"], eps)


def _lin(sd: dict[str, Tensor], p: str, x: Tensor) -> Tensor:
    return F.linear(x, sd[p + "weight"], sd.get(p + "bias"))


def _ref_block(sd: dict[str, Tensor], p: str, x: Tensor, heads: int) -> Tensor:
    """BlockWithMasking on batch-first tokens: pre-norm attention and GELU MLP residuals."""
    b, _, d = x.shape
    h = _ln(sd, p + "norm_1.", x)
    q, k, v = F.linear(h, sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"]).chunk(3, -1)
    if p + "attn.bias_k" in sd:  # add_bias_kv: one extra key/value token
        k = torch.cat([k, sd[p + "attn.bias_k"].expand(b, 1, d)], dim=1)
        v = torch.cat([v, sd[p + "attn.bias_v"].expand(b, 1, d)], dim=1)
    q, k, v = (t.unflatten(-1, (heads, d // heads)).transpose(1, 2) for t in (q, k, v))
    att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
    x = x + _lin(sd, p + "attn.out_proj.", att)
    h = F.gelu(_lin(sd, p + "mlp.fc1.", _ln(sd, p + "norm_2.", x)))
    return x + _lin(sd, p + "mlp.fc2.", h)


def _ref_embed(sd: dict[str, Tensor], m: str, c: dict, patches: Tensor) -> Tensor:
    """Conv patches (N, D, ...) -> class token + position embedding, trunk, head: (N, out)."""
    pre = f"modality_preprocessors.{m}."
    tokens = patches.flatten(2).transpose(1, 2)
    if m == "audio":  # the audio stem's LayerNorm has PyTorch's default eps
        tokens = _ln(sd, pre + "rgbt_stem.norm_layer.", tokens, eps=1e-5)
    x = torch.cat([sd[pre + "cls_token"].expand(len(tokens), -1, -1), tokens], dim=1)
    x = x + sd[pre + "pos_embedding_helper.pos_embed"]
    if m == "vision":
        x = _ln(sd, "modality_trunks.vision.pre_transformer_layer.0.", x)
    for i in range(c["num_blocks"]):
        x = _ref_block(sd, f"modality_trunks.{m}.blocks.{i}.", x, c["num_heads"])
    return _lin(sd, f"modality_heads.{m}.2.", _ln(sd, f"modality_heads.{m}.0.", x)[:, 0])


def test_shapes(encoder: ImageBindEncoder, cfg: dict) -> None:
    out, v = cfg["out_embed_dim"], cfg["vision"]
    with torch.no_grad():
        assert encoder.encode_vision(_images(cfg, 2)).shape == (2, out)
        video = _images(cfg, 1, clips=v["video_clips"], frames=v["num_frames"])
        assert encoder.encode_vision(video).shape == (1, out)
        assert encoder.encode_audio(_audio(cfg, 2, cfg["audio"]["clips"])).shape == (2, out)


def test_norms(encoder: ImageBindEncoder, cfg: dict) -> None:
    with torch.no_grad():
        vision = encoder.encode_vision(_images(cfg, 2))
        audio = encoder.encode_audio(_audio(cfg, 2, 1))
    torch.testing.assert_close(vision.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(audio.norm(dim=-1), torch.full((2,), cfg["audio"]["logit_scale"]))


def test_state_dict_keys_are_official(encoder: ImageBindEncoder, cfg: dict) -> None:
    state = encoder.state_dict()
    expected = _official_shapes(cfg)
    assert set(state) == set(expected)
    assert {k: tuple(t.shape) for k, t in state.items()} == expected
    assert all(official_key_filter(k) for k in state)
    assert not official_key_filter("modality_trunks.text.blocks.0.norm_1.weight")
    assert not official_key_filter("modality_postprocessors.depth.1.log_logit_scale")


def test_official_checkpoint_loads_and_reproduces(cfg: dict, tmp_path: Path) -> None:
    state = _official_state(cfg)
    path = tmp_path / "imagebind_huge.pth"
    torch.save(state, path)
    encoder = ImageBindEncoder(cfg).eval()
    kept = load_official_imagebind(path, encoder)
    assert not any(".text." in k for k in kept)
    encoder.load_state_dict(kept, strict=True)

    v, a = cfg["vision"], cfg["audio"]
    video = _images(cfg, 2, clips=2, frames=v["num_frames"])
    # Quiet audio keeps the stem's patch variance near LayerNorm's eps, so the eps is checked too.
    audio = 0.01 * _audio(cfg, 2, 3)
    kt, kh, kw = v["kernel"]
    pre = "modality_preprocessors."
    with torch.no_grad():
        w = state[pre + "vision.rgbt_stem.proj.1.weight"]
        patches = F.conv3d(video.flatten(0, 1), w, stride=(kt, kh, kw))
        emb = F.normalize(_ref_embed(state, "vision", v, patches), dim=-1)
        torch.testing.assert_close(encoder.encode_vision(video), emb.unflatten(0, (2, 2)).mean(1))
        w = state[pre + "audio.rgbt_stem.proj.weight"]
        patches = F.conv2d(audio.flatten(0, 1), w, stride=a["stride"])
        emb = a["logit_scale"] * F.normalize(_ref_embed(state, "audio", a, patches), dim=-1)
        torch.testing.assert_close(encoder.encode_audio(audio), emb.unflatten(0, (2, 3)).mean(1))


@pytest.mark.parametrize(
    ("key", "change"),
    [
        ("modality_trunks.audio.blocks.1.attn.bias_k", "drop"),
        ("modality_preprocessors.vision.pos_embedding_helper.pos_embed", "reshape"),
    ],
)
def test_mismatched_checkpoint_names_the_key(
    cfg: dict, tmp_path: Path, key: str, change: str
) -> None:
    state = _official_state(cfg)
    if change == "drop":
        del state[key]
    else:
        state[key] = state[key][:, :-1]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_official_imagebind(path, ImageBindEncoder(cfg))


def test_single_frame_repeats_like_pad_im2video(encoder: ImageBindEncoder, cfg: dict) -> None:
    image = _images(cfg, 2)
    two_frames = image.expand(-1, -1, -1, cfg["vision"]["num_frames"], -1, -1).contiguous()
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode_vision(image), encoder.encode_vision(two_frames))


def test_clips_are_averaged_after_postprocessing(encoder: ImageBindEncoder, cfg: dict) -> None:
    v = cfg["vision"]
    clip = _images(cfg, 1, frames=v["num_frames"])
    audio = _audio(cfg, 1, cfg["audio"]["clips"])
    with torch.no_grad():
        one = encoder.encode_vision(clip)
        five = encoder.encode_vision(clip.expand(-1, v["video_clips"], -1, -1, -1, -1))
        torch.testing.assert_close(five, one)
        per_clip = encoder.encode_audio(audio.transpose(0, 1))  # each clip as its own input
        torch.testing.assert_close(encoder.encode_audio(audio), per_clip.mean(0, keepdim=True))


def test_pitch_rows_get_tokens_of_their_own(cfg: dict) -> None:
    """With pitch rows the official layout gains only their stem and one position per time step;
    the log-mel rows go through the official stem as before, and the pitch rows count."""
    plain = _official_shapes(cfg)
    with_pitch = {**cfg, "audio": {**cfg["audio"], "pitch_classes": 12, "octaves": 6}}
    torch.manual_seed(0)
    encoder = ImageBindEncoder(with_pitch).eval()
    a, shapes = with_pitch["audio"], {k: tuple(t.shape) for k, t in encoder.state_dict().items()}
    steps = (a["target_length"] - a["kernel"]) // a["stride"] + 1
    pos = "modality_preprocessors.audio.pos_embedding_helper.pos_embed"
    stem = "modality_preprocessors.audio.pitch_stem."
    assert set(shapes) - set(plain) == {stem + "proj.weight", stem + "norm_layer.weight", stem + "norm_layer.bias"}
    assert shapes[pos] == (1, plain[pos][1] + steps, a["embed_dim"])
    assert shapes[stem + "proj.weight"] == (a["embed_dim"], 1, 18, a["kernel"])
    x = _audio(with_pitch, 2, 1)
    moved = x.clone()
    moved[:, :, :, a["num_mel_bins"] :] = moved[:, :, :, a["num_mel_bins"] :].roll(1, dims=3)
    with torch.no_grad():
        assert encoder.encode_audio(x).shape == (2, cfg["out_embed_dim"])
        assert not torch.allclose(encoder.encode_audio(x), encoder.encode_audio(moved))
    with pytest.raises(ValueError, match=str(audio_rows(a))):
        encoder.encode_audio(_audio(cfg, 1, 1))
