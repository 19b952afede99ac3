"""Importing the released NExT-GPT weights.

Fake "released" files are written with the official key names and folder layouts at the `tiny` sizes:
`imagebind_huge.pth`, a Vicuna HF folder, NExT-GPT's delta `pytorch_model.pt` and the SD-1.5 /
ZeroScope / AudioLDM diffusers folders. They are imported once; the checkpoint must load strictly and
hold exactly the released tensors.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, processors
from torch import nn
from transformers import (
    AutoTokenizer,
    ClapTextConfig,
    ClapTextModelWithProjection,
    CLIPTextConfig,
    CLIPTextModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from train import checkpoint as ckpt
from train.decoders import build_decoder, load_text_encoder
from train.imagebind import ImageBindEncoder
from train.import_nextgpt import ReleasedWeights, import_nextgpt, main, official_projector_key
from train.llm import train_tiny_tokenizer
from train.pretrain.language import world_corpus
from train.model import load_checkpoint
from train.presets import added_tokens, get_preset, signal_tokens
from train.projectors import build_input_projection, build_projectors

PRESET = get_preset("tiny")
MODALITIES = ("image", "video", "audio")
# Released folder names and the text encoder / padded length of "" of each pipeline.
DECODER_FOLDERS = {"image": "stable-diffusion-v1-5", "video": "zeroscope_v2_576w", "audio": "audioldm-l-full"}
TEXT_ENCODERS = {
    "image": (CLIPTextConfig, CLIPTextModel, "max_position_embeddings"),  # CLIP pads "" to 77 tokens
    "video": (CLIPTextConfig, CLIPTextModel, "max_position_embeddings"),
    "audio": (ClapTextConfig, ClapTextModelWithProjection, "projection_dim"),  # AudioLDM pads "" to 512
}
PIPELINES = {"image": "StableDiffusionPipeline", "video": "TextToVideoSDPipeline", "audio": "AudioLDMPipeline"}
# One layer of each part, written out: the names NExT-GPT's training writes into pytorch_model.pt.
SPOT_KEYS = [
    "llama_proj.weight",
    "llama_proj.bias",
    "gen_text_hidden_fcs.0.fc.weight",
    "gen_text_hidden_fcs.0.fc.bias",
    "gen_text_hidden_fcs.0.tfm.encoder.layers.0.self_attn.in_proj_weight",
    "gen_text_hidden_fcs.0.tfm.encoder.layers.0.linear1.weight",
    "gen_text_hidden_fcs.0.tfm.encoder.norm.weight",
    "gen_text_hidden_fcs.0.tfm.decoder.layers.0.multihead_attn.out_proj.weight",
    "gen_text_hidden_fcs.0.tfm.decoder.layers.0.norm3.bias",
    "gen_text_hidden_fcs.0.model.weight",
    "gen_text_hidden_fcs.0.model.bias",
    "gen_text_hidden_fcs.0.query_embs",
    "gen_text_hidden_fcs_video.0.query_embs",
    "gen_text_hidden_fcs_video.0.tfm.decoder.layers.0.self_attn.in_proj_bias",
    "gen_text_hidden_fcs_audio.0.model.weight",
    "gen_text_hidden_fcs_audio.0.fc.weight",
    *(
        f"llama_model.base_model.model.model.layers.0.self_attn.{p}_proj.lora_{ab}.default.weight"
        for p in "qkvo"
        for ab in "AB"
    ),
]
# Keys of the modalities ImageBind has and NExT-GPT does not use: the importer must drop them.
OTHER_IMAGEBIND = {
    "modality_preprocessors.text.token_embedding.weight": (64, 24),
    "modality_trunks.text.blocks.0.attn.in_proj_weight": (72, 24),
    "modality_heads.text.proj.1.weight": (32, 24),
    "modality_postprocessors.text.1.log_logit_scale": (),
    "modality_preprocessors.depth.rgbt_stem.proj.1.weight": (24, 1, 16, 16),
    "modality_trunks.thermal.blocks.0.norm_1.weight": (24,),
    "modality_heads.imu.2.weight": (32, 24),
}


def _random(shape: torch.Size | tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed)).to(dtype)


# --- the fake release -------------------------------------------------------------------------------


class ReleasedNextGPT(nn.Module):
    """The attribute layout of NExT-GPT's model, whose `named_parameters` name the delta's tensors."""

    def __init__(self, preset: dict[str, Any], vocab_size: int) -> None:
        super().__init__()
        llm, lora = preset["llm"], preset["lora"]
        sizes = {k: llm[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")}
        llama = LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, tie_word_embeddings=False, **sizes))
        config = LoraConfig(
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=list(lora["targets"]),
            task_type="CAUSAL_LM",
        )
        self.llama_model = get_peft_model(llama, config)
        self.llama_proj = build_input_projection(preset)
        projectors = build_projectors(preset)
        self.gen_text_hidden_fcs = nn.ModuleList([projectors["image"]])
        self.gen_text_hidden_fcs_video = nn.ModuleList([projectors["video"]])
        self.gen_text_hidden_fcs_audio = nn.ModuleList([projectors["audio"]])


def released_delta(preset: dict[str, Any], vocab_size: int) -> dict[str, torch.Tensor]:
    """NExT-GPT's save rule: trainable parameters plus every `gen_text_hidden_fcs*` / `llama_proj` one.

    fp16 random values, as DeepSpeed fp16 training leaves them.
    """
    with torch.device("meta"):
        model = ReleasedNextGPT(preset, vocab_size)
    names = [
        k
        for k, p in model.named_parameters()
        if p.requires_grad or "gen_text_hidden_fcs" in k or "llama_proj" in k
    ]
    shapes = dict(model.named_parameters())
    return {k: _random(shapes[k].shape, seed, torch.float16) for seed, k in enumerate(names)}


def write_vicuna(folder: Path, tokenizer: Any, llm: dict[str, Any], seed: int) -> LlamaForCausalLM:
    """A Vicuna HF folder: fp16 safetensors weights and the base tokenizer, without NExT-GPT's tokens."""
    sizes = {
        k: llm[k]
        for k in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
            "rms_norm_eps",
        )
    }
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=False, **sizes))
    model = model.to(torch.float16).eval()
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return model


def _decoder_tokenizer(text_encoder: dict[str, Any], length: int) -> PreTrainedTokenizerFast:
    """A word-level stand-in for CLIP's / RoBERTa's tokenizer: "" -> BOS EOS PAD..., ids in the encoder's vocab."""
    special = {text_encoder["bos_token_id"]: "<bos>", text_encoder["eos_token_id"]: "<eos>"}
    special.setdefault(text_encoder["pad_token_id"], "<pad>")
    vocab = {special.get(i, f"w{i}"): i for i in range(text_encoder["vocab_size"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    bos, eos = special[text_encoder["bos_token_id"]], special[text_encoder["eos_token_id"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=special[text_encoder["pad_token_id"]],
        unk_token="w3",
        model_max_length=length,
    )


def write_decoder(folder: Path, modality: str, seed: int) -> SimpleNamespace:
    """A released diffusers pipeline folder: unet/ vae/ scheduler/ text_encoder/ tokenizer/ (+ vocoder/)."""
    section = PRESET["decoders"][modality]
    torch.manual_seed(seed)
    components = build_decoder(section)
    for name, part in components.items():
        if name != "uncond_embedding":
            part.save_pretrained(folder / name)
    config_cls, encoder_cls, length_field = TEXT_ENCODERS[modality]
    encoder = encoder_cls(config_cls(**section["text_encoder"])).eval()
    encoder.save_pretrained(folder / "text_encoder")
    length = section["text_encoder"][length_field]
    _decoder_tokenizer(section["text_encoder"], length).save_pretrained(str(folder / "tokenizer"))
    index = {"_class_name": PIPELINES[modality], "_diffusers_version": "0.14.0"}
    (folder / "model_index.json").write_text(json.dumps(index))
    return SimpleNamespace(components=components, encoder=encoder, length=length)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("released")
    # imagebind_huge.pth: official names already, plus other modalities' keys
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in ImageBindEncoder(PRESET["imagebind"]).state_dict().items()}
    imagebind = {k: _random(shape, 1000 + i) for i, (k, shape) in enumerate(shapes.items())}
    others = {k: _random(shape, 2000 + i) for i, (k, shape) in enumerate(OTHER_IMAGEBIND.items())}
    torch.save({**imagebind, **others}, root / "imagebind_huge.pth")

    tokenizer = train_tiny_tokenizer(world_corpus(), PRESET["llm"]["base_vocab_size"])
    vicuna = write_vicuna(root / "vicuna-7b-v0", tokenizer, PRESET["llm"], seed=1)

    delta = released_delta(PRESET, len(tokenizer) + len(added_tokens()))
    (root / "nextgpt").mkdir()
    torch.save(delta, root / "nextgpt" / "pytorch_model.pt")

    decoders = {m: write_decoder(root / DECODER_FOLDERS[m], m, seed=10 + i) for i, m in enumerate(MODALITIES)}
    src = ReleasedWeights(
        imagebind=root / "imagebind_huge.pth",
        vicuna=root / "vicuna-7b-v0",
        delta=root / "nextgpt" / "pytorch_model.pt",
        sd=root / DECODER_FOLDERS["image"],
        audioldm=root / DECODER_FOLDERS["audio"],
        zeroscope=root / DECODER_FOLDERS["video"],
    )
    return SimpleNamespace(
        src=src,
        imagebind=imagebind,
        delta=delta,
        vicuna=_state(vicuna),
        base_vocab=len(tokenizer),
        decoders=decoders,
        root=root,
    )


@pytest.fixture(scope="module")
def imported(release: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("imported") / "nextgpt-tiny"
    loads: list[tuple[Path, Any]] = []
    real_load = torch.load

    def spy(f: Any, *args: Any, **kwargs: Any) -> Any:
        loads.append((Path(f), kwargs.get("weights_only")))
        return real_load(f, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "load", spy)
        config = import_nextgpt(release.src, out, get_preset("tiny"))
    return SimpleNamespace(out=out, config=config, loads=loads)


@pytest.fixture(scope="module")
def model(imported: SimpleNamespace) -> Any:
    return load_checkpoint(imported.out)  # checks every part strictly against config.json


# --- the fake release itself ------------------------------------------------------------------------


def test_fake_delta_uses_the_official_names(release: SimpleNamespace) -> None:
    keys = set(release.delta)
    assert set(SPOT_KEYS) <= keys
    llm, lora = PRESET["llm"], PRESET["lora"]
    lora_keys = [k for k in keys if k.startswith("llama_model.")]
    assert len(lora_keys) == llm["num_hidden_layers"] * len(lora["targets"]) * 2
    assert all(".lora_A.default.weight" in k or ".lora_B.default.weight" in k for k in lora_keys)
    assert not any("embed_tokens" in k or "lm_head" in k for k in keys)  # the added rows are not released


# --- a successful import ----------------------------------------------------------------------------


def test_checkpoint_folder_is_complete(imported: SimpleNamespace) -> None:
    out = imported.out
    for part in ckpt.MODULE_PARTS:
        assert ckpt.part_path(out, part).is_file(), part
    for m in MODALITIES:
        folder = ckpt.decoder_path(out, imported.config, m)
        assert (folder / "uncond_embedding.safetensors").is_file()
        assert (folder / "text_encoder" / "model.safetensors").is_file() and (folder / "tokenizer").is_dir()
    assert json.loads((out / ckpt.CONFIG).read_text()) == imported.config


def test_foreign_files_are_read_weights_only(release: SimpleNamespace, imported: SimpleNamespace) -> None:
    read = {path: weights_only for path, weights_only in imported.loads}
    assert read.get(release.src.imagebind) is True
    assert read.get(release.src.delta) is True
    assert all(weights_only is True for _, weights_only in imported.loads), imported.loads


def test_imagebind_is_the_released_vision_and_audio(
    release: SimpleNamespace, imported: SimpleNamespace, model: Any
) -> None:
    saved = load_file(str(ckpt.part_path(imported.out, "imagebind")))
    assert set(saved) == set(release.imagebind)  # the other modalities are dropped
    loaded = model.encoder.state_dict()
    for key, value in release.imagebind.items():
        assert torch.equal(saved[key], value), key
        assert torch.equal(loaded[key], value), key


def test_projections_are_the_released_tensors(release: SimpleNamespace, model: Any) -> None:
    parts = {
        "llama_proj.": model.input_projection,
        "gen_text_hidden_fcs.0.": model.projectors["image"],
        "gen_text_hidden_fcs_video.0.": model.projectors["video"],
        "gen_text_hidden_fcs_audio.0.": model.projectors["audio"],
    }
    for prefix, module in parts.items():
        state = module.state_dict()
        released = {k[len(prefix) :]: v for k, v in release.delta.items() if k.startswith(prefix)}
        assert set(state) == set(released), prefix
        for key, value in released.items():
            assert torch.equal(state[key], value.float()), prefix + key


def test_lora_is_the_released_adapter(release: SimpleNamespace, imported: SimpleNamespace, model: Any) -> None:
    params = dict(model.llm.named_parameters())  # peft's live names: base_model.model..., adapter "default"
    released = {k: v for k, v in release.delta.items() if k.startswith("llama_model.")}
    for key, value in released.items():
        name = key[len("llama_model.") :]
        assert torch.equal(params[name], value.float()), key
    saved = load_file(str(ckpt.part_path(imported.out, "lora")))
    assert len(saved) == len(released)
    spot = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"  # peft's saved name
    assert torch.equal(saved[spot], release.delta[f"llama_model.{spot.replace('lora_A.', 'lora_A.default.')}"])


def test_llm_keeps_vicuna_and_saves_the_38_added_rows(
    release: SimpleNamespace, imported: SimpleNamespace, model: Any
) -> None:
    v0, added = release.base_vocab, len(added_tokens())
    assert added == 38
    config = imported.config
    assert config["llm"]["vocab_size"] == v0 + added
    saved = load_file(str(ckpt.part_path(imported.out, "llm")))
    assert set(saved) == set(release.vicuna)
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        rows = saved[key]
        assert rows.shape == (v0 + added, PRESET["llm"]["hidden_size"]), key
        assert torch.equal(rows[:v0], release.vicuna[key]), key
        # initialised once, at the mean of the released rows (transformers' mean_resizing), not zeros
        mean = release.vicuna[key].float().mean(0).expand(added, -1)
        torch.testing.assert_close(rows[v0:].float(), mean, atol=1e-4, rtol=0)
        assert rows[v0:].abs().sum() > 0, key
        # the rows the checkpoint loads are the ones saved
        loaded = model.llm.get_base_model().state_dict()[key]
        assert torch.equal(loaded, rows.float()), key
    for key, value in release.vicuna.items():
        if key not in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(saved[key], value), key


def test_signal_ids_point_at_the_added_tokens(release: SimpleNamespace, imported: SimpleNamespace) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(imported.out / ckpt.TOKENIZER), local_files_only=True)
    tokens = imported.config["tokens"]
    assert len(tokenizer) == imported.config["llm"]["vocab_size"]
    assert tokens["media_open_id"] == tokenizer.convert_tokens_to_ids("<Img>")
    assert tokenizer.convert_ids_to_tokens(tokens["signal_ids"]["image"]) == ["[IMG0]", "[IMG1]", "[IMG2]", "[IMG3]"]
    for m in MODALITIES:
        ids = tokens["signal_ids"][m]
        assert tokenizer.convert_ids_to_tokens(ids) == signal_tokens(m)
        assert min(ids) >= release.base_vocab  # new rows, not base-vocabulary ones
    ids = [tokenizer.convert_tokens_to_ids(t) for t in added_tokens()]
    assert sorted(ids) == list(range(release.base_vocab, release.base_vocab + 38))
    assert tokens["bos_id"] == tokenizer.bos_token_id


def test_decoders_are_the_released_networks(release: SimpleNamespace, model: Any) -> None:
    for m in MODALITIES:
        fake, loaded = release.decoders[m], model.decoders[m]
        for name in ("unet", "vae", "vocoder"):
            if name not in fake.components:
                continue
            want, got = fake.components[name].state_dict(), loaded[name].state_dict()
            assert set(got) == set(want), (m, name)
            for key in want:
                assert torch.equal(got[key], want[key]), (m, name, key)
        assert type(loaded["scheduler"]) is type(fake.components["scheduler"])


def test_the_released_text_encoders_are_kept(release: SimpleNamespace, imported: SimpleNamespace) -> None:
    for m in MODALITIES:
        folder = ckpt.decoder_path(imported.out, imported.config, m)
        encoder, tokenizer = load_text_encoder(folder, PRESET["decoders"][m])
        want = release.decoders[m].encoder.state_dict()
        assert set(encoder.state_dict()) == set(want)
        for key, value in want.items():
            assert torch.equal(encoder.state_dict()[key], value), (m, key)
        assert tokenizer.model_max_length == release.decoders[m].length


def test_uncond_embedding_is_the_released_text_encoder_on_empty_prompt(release: SimpleNamespace, model: Any) -> None:
    for m in MODALITIES:
        fake, te = release.decoders[m], PRESET["decoders"][m]["text_encoder"]
        # "" as the pipeline's tokenizer pads it: BOS, EOS, then PAD
        ids = torch.full((1, fake.length), te["pad_token_id"])
        ids[0, :2] = torch.tensor([te["bos_token_id"], te["eos_token_id"]])
        mask = (ids != te["pad_token_id"]).long()
        mask[0, :2] = 1
        with torch.no_grad():
            if m == "audio":  # AudioLDM: the projected CLAP embedding, L2-normalised, one vector
                want = F.normalize(fake.encoder(ids, attention_mask=mask).text_embeds, dim=-1)
            else:  # SD / ZeroScope: CLIP's last hidden state, no attention mask
                want = fake.encoder(ids).last_hidden_state[0]
        torch.testing.assert_close(model.decoders[m]["uncond_embedding"], want)


# --- the other projector modes, as the reference lays them out -------------------------------------


def released_qformer(llm_hidden: int, sizes: dict[str, Any], queries: int, out_dim: int) -> dict[str, tuple[int, ...]]:
    """TextFcLayer in `qformer` mode: fc, BLIP-2's Q-Former (BertLMHeadModel with word and position
    embeddings, `cls` and the text feed-forward set to None, so absent), query_tokens, model."""
    h, f = sizes["hidden"], sizes["ffn"]
    shapes = {
        "fc.weight": (h, llm_hidden),
        "fc.bias": (h,),
        "Qformer.bert.embeddings.LayerNorm.weight": (h,),
        "Qformer.bert.embeddings.LayerNorm.bias": (h,),
        "query_tokens": (1, queries, h),
        "model.weight": (out_dim, h),
        "model.bias": (out_dim,),
    }
    for i in range(sizes["layers"]):
        layer = f"Qformer.bert.encoder.layer.{i}."
        for attention in ("attention", "crossattention"):
            for linear in ("self.query", "self.key", "self.value", "output.dense"):
                shapes.update({f"{layer}{attention}.{linear}.weight": (h, h), f"{layer}{attention}.{linear}.bias": (h,)})
            shapes.update({f"{layer}{attention}.output.LayerNorm.{p}": (h,) for p in ("weight", "bias")})
        shapes.update({f"{layer}intermediate_query.dense.weight": (f, h), f"{layer}intermediate_query.dense.bias": (f,)})
        shapes.update({f"{layer}output_query.dense.weight": (h, f), f"{layer}output_query.dense.bias": (h,)})
        shapes.update({f"{layer}output_query.LayerNorm.{p}": (h,) for p in ("weight", "bias")})
    return shapes


def released_linear(llm_hidden: int, out_dim: int) -> dict[str, tuple[int, ...]]:
    """TextFcLayer in `linear` mode: `model = nn.Linear(in_dim, out_dim)` and nothing else."""
    return {"model.weight": (out_dim, llm_hidden), "model.bias": (out_dim,)}


MIXED_MODES = {"image": "qformer", "video": "linear", "audio": "transformer"}
PROJECTOR_PREFIXES = {"image": "gen_text_hidden_fcs.0.", "video": "gen_text_hidden_fcs_video.0.", "audio": "gen_text_hidden_fcs_audio.0."}


@pytest.fixture(scope="module")
def mixed(release: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The release with its image projector in qformer mode and its video one in linear mode."""
    hidden, dec = PRESET["llm"]["hidden_size"], PRESET["decoders"]
    layouts = {
        "image": released_qformer(hidden, PRESET["projector"]["qformer"], dec["image"]["embed_tokens"], dec["image"]["embed_dim"]),
        "video": released_linear(hidden, dec["video"]["embed_dim"]),
    }
    delta = {k: v for k, v in release.delta.items() if not k.startswith(tuple(PROJECTOR_PREFIXES[m] for m in layouts))}
    for i, (m, shapes) in enumerate(layouts.items()):
        delta.update({PROJECTOR_PREFIXES[m] + k: _random(s, 5000 + 100 * i + j, torch.float16) for j, (k, s) in enumerate(shapes.items())})
    root = tmp_path_factory.mktemp("mixed")
    src = _with_delta(release, root, delta)
    config = import_nextgpt(src, root / "imported", get_preset("tiny"))
    return SimpleNamespace(delta=delta, config=config, model=load_checkpoint(root / "imported"))


def test_each_projector_mode_is_read_from_the_delta(mixed: SimpleNamespace) -> None:
    assert mixed.config["projector"]["modes"] == MIXED_MODES


def test_every_released_projector_tensor_of_each_mode_is_loaded(mixed: SimpleNamespace) -> None:
    for m, prefix in PROJECTOR_PREFIXES.items():
        state = mixed.model.projectors[m].state_dict()
        released = {k[len(prefix) :]: v for k, v in mixed.delta.items() if k.startswith(prefix)}
        ours = {official_projector_key(k): k for k in state}
        assert set(ours) == set(released), m
        for key, value in released.items():
            assert torch.equal(state[ours[key]], value.float()), prefix + key
    layer = mixed.model.projectors["image"].state_dict()["Qformer.bert.encoder.layer.1.intermediate.dense.weight"]
    assert torch.equal(layer, mixed.delta["gen_text_hidden_fcs.0.Qformer.bert.encoder.layer.1.intermediate_query.dense.weight"].float())


# --- failures ---------------------------------------------------------------------------------------


def _with_delta(release: SimpleNamespace, tmp_path: Path, delta: dict[str, torch.Tensor]) -> ReleasedWeights:
    path = tmp_path / "pytorch_model.pt"
    torch.save(delta, path)
    return dataclasses.replace(release.src, delta=path)


def test_unknown_delta_key_is_named(release: SimpleNamespace, tmp_path: Path) -> None:
    key = "llama_model.base_model.model.model.embed_tokens.weight"
    src = _with_delta(release, tmp_path, {**release.delta, key: torch.zeros(3, 3)})
    with pytest.raises(ckpt.CheckpointError, match=key.replace(".", r"\.")):
        import_nextgpt(src, tmp_path / "out", get_preset("tiny"))
    assert not (tmp_path / "out" / ckpt.CONFIG).exists()


def test_missing_lora_key_names_the_file(release: SimpleNamespace, tmp_path: Path) -> None:
    key = "llama_model.base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight"
    delta = {k: v for k, v in release.delta.items() if k != key}
    src = _with_delta(release, tmp_path, delta)
    with pytest.raises(ckpt.CheckpointError) as e:
        import_nextgpt(src, tmp_path / "out", get_preset("tiny"))
    assert str(src.delta) in str(e.value) and "1 missing" in str(e.value)
    assert key in str(e.value)  # under the delta's own name, the one a user can look up


def test_wrong_projector_shape_names_the_tensor(release: SimpleNamespace, tmp_path: Path) -> None:
    key = "gen_text_hidden_fcs_video.0.model.weight"
    delta = dict(release.delta)
    delta[key] = torch.zeros(delta[key].shape[0] + 1, delta[key].shape[1], dtype=torch.float16)
    src = _with_delta(release, tmp_path, delta)
    with pytest.raises(ckpt.CheckpointError) as e:
        import_nextgpt(src, tmp_path / "out", get_preset("tiny"))
    assert key in str(e.value)


def test_vicuna_of_another_size_names_the_field(
    release: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm = {**PRESET["llm"], "hidden_size": 32}
    tokenizer = AutoTokenizer.from_pretrained(str(release.src.vicuna), local_files_only=True)
    write_vicuna(tmp_path / "vicuna", tokenizer, llm, seed=2)
    src = dataclasses.replace(release.src, vicuna=tmp_path / "vicuna")
    loads: list[Any] = []
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(args))
    with pytest.raises(ckpt.CheckpointError, match="hidden_size is 32, preset tiny says 128") as e:
        import_nextgpt(src, tmp_path / "out", get_preset("tiny"))
    assert str(src.vicuna) in str(e.value)
    assert loads == []  # found from config.json, before the large files are read


class _NotATensor:
    """Stands for arbitrary pickled code, which `torch.load(weights_only=True)` must refuse."""


@pytest.mark.parametrize("content", ["pickled object", "damaged file"])
def test_imagebind_is_read_weights_only(release: SimpleNamespace, tmp_path: Path, content: str) -> None:
    path = tmp_path / "imagebind_huge.pth"
    torch.save({**release.imagebind, "modality_trunks.text.extra": _NotATensor()}, path)
    if content == "damaged file":
        path.write_bytes(path.read_bytes()[:1000])
    src = dataclasses.replace(release.src, imagebind=path)
    with pytest.raises(ckpt.CheckpointError) as e:
        import_nextgpt(src, tmp_path / "out", get_preset("tiny"))
    assert str(path) in str(e.value) and "weights_only=True" in str(e.value)
    if content == "pickled object":
        assert "_NotATensor" in str(e.value)
    assert not (tmp_path / "out").exists()


def _cli_args(src: ReleasedWeights, out: Path) -> list[str]:
    args = [arg for field in dataclasses.fields(src) for arg in (f"--{field.name}", str(getattr(src, field.name)))]
    return [*args, "--out", str(out), "--preset", "tiny"]


@pytest.mark.parametrize("missing", [f.name for f in dataclasses.fields(ReleasedWeights)])
def test_cli_missing_input_is_one_line(
    release: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture, missing: str
) -> None:
    src = dataclasses.replace(release.src, **{missing: tmp_path / "nope" / getattr(release.src, missing).name})
    out = tmp_path / "out"
    assert main(_cli_args(src, out)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ") and str(getattr(src, missing)) in lines[0] and f"--{missing}" in lines[0]
    assert not out.exists()


def test_cli_unknown_preset_is_one_line(
    release: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = [*_cli_args(release.src, tmp_path / "out")[:-1], "nextgpt-13b"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nextgpt-13b" in err[0]
