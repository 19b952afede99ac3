"""The diffusion decoders (SD, ZeroScope, AudioLDM): build, save/load, reference generation.

A decoder section of a preset (`preset["decoders"][modality]`) sizes one decoder. Its components are
the diffusers `unet`, `vae`, `scheduler`, AudioLDM's `vocoder`, and `uncond_embedding`: the decoder's
text encoder run on "", the negative prompt of classifier-free guidance. NExT-GPT's projectors replace
the text encoder at run time, so deployment needs only that one constant. Training needs the encoder
itself, for the caption embeddings the projectors learn to match: a checkpoint may also keep
`text_encoder` and `tokenizer` (optional; `load_text_encoder` reads them, `load_decoder` does not).

Generation is the reference's: the diffusers pipelines fed `prompt_embeds` and
`negative_prompt_embeds`, except that a pipeline is built once per loaded decoder, not per call.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AudioLDMPipeline,
    AutoencoderKL,
    DiffusionPipeline,
    SchedulerMixin,
    StableDiffusionPipeline,
    TextToVideoSDPipeline,
    UNet2DConditionModel,
    UNet3DConditionModel,
)
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tokenizers import Regex as TokRegex
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoTokenizer,
    ClapTextModelWithProjection,
    CLIPTextModel,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    SpeechT5HifiGan,
)

UNCOND_FILE = "uncond_embedding.safetensors"
MODULES = ("unet", "vae", "vocoder")  # the networks a section may size, each saved in its own subfolder
TEXT_PARTS = ("text_encoder", "tokenizer")  # optional subfolders, needed only to encode captions

Components = dict[str, Any]  # MODULES present in the section, "scheduler", "uncond_embedding", TEXT_PARTS if kept


class _AudioLDMFromEmbeds(AudioLDMPipeline):
    """AudioLDMPipeline driven by embeddings only, with no text encoder.

    `AudioLDMPipeline._encode_prompt` casts even given embeddings to `self.text_encoder.dtype`
    (pipeline_audioldm.py lines 180 and 235 in diffusers 0.42.1), so `text_encoder=None` crashes there,
    where SD and text-to-video fall back to `unet.dtype`. Only that method is replaced; the rest
    (class_labels conditioning, guidance, trimming, vocoder) is the pipeline's own.
    """

    def _encode_prompt(
        self,
        prompt: None,
        device: torch.device,
        num_waveforms_per_prompt: int,
        do_classifier_free_guidance: bool,
        negative_prompt: None = None,
        prompt_embeds: Tensor | None = None,
        negative_prompt_embeds: Tensor | None = None,
    ) -> Tensor:
        # the parent's layout: the negatives then the prompts, each repeated per waveform
        embeds = [negative_prompt_embeds, prompt_embeds] if do_classifier_free_guidance else [prompt_embeds]
        embeds = torch.cat(embeds).repeat_interleave(num_waveforms_per_prompt, dim=0)
        return embeds.to(device, self.unet.dtype)


@dataclass(frozen=True)
class _Spec:
    """What differs between the decoders, by section name."""

    pipeline: type[DiffusionPipeline]
    unet: type[nn.Module]
    text_encoder: type[PreTrainedModel]
    empty_prompt_length: Callable[[Any], int]  # how long the pipeline pads "", from the encoder config
    pipeline_kwargs: dict[str, Any]
    class_labels: bool  # embeddings enter the UNet as class labels (batch, dim), not as (batch, tokens, dim)


_SPECS = {
    "sd": _Spec(
        StableDiffusionPipeline,
        UNet2DConditionModel,
        CLIPTextModel,
        lambda config: config.max_position_embeddings,  # the tokenizer's model_max_length, 77
        {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False},
        class_labels=False,
    ),
    "zeroscope": _Spec(
        TextToVideoSDPipeline,
        UNet3DConditionModel,
        CLIPTextModel,
        lambda config: config.max_position_embeddings,
        {},
        class_labels=False,
    ),
    "audioldm": _Spec(
        _AudioLDMFromEmbeds,
        UNet2DConditionModel,
        ClapTextModelWithProjection,
        # _encode_prompt pads "" to prompt_embeds.shape[1] (line 211): the projection dim, not a token count
        lambda config: config.projection_dim,
        {},
        class_labels=True,
    ),
}


def _spec(section: dict[str, Any]) -> _Spec:
    if section["name"] not in _SPECS:
        raise ValueError(f"unknown decoder {section['name']!r}; known: {', '.join(_SPECS)}")
    return _SPECS[section["name"]]


def takes_class_labels(section: dict[str, Any]) -> bool:
    """Whether the decoder's UNet takes its conditioning as class labels (batch, dim) (AudioLDM)."""
    return _spec(section).class_labels


def _module_names(section: dict[str, Any]) -> list[str]:
    return [name for name in MODULES if name in section]


def _module_class(section: dict[str, Any], name: str) -> type[nn.Module]:
    return {"unet": _spec(section).unet, "vae": AutoencoderKL, "vocoder": SpeechT5HifiGan}[name]


def _new_module(cls: type[nn.Module], config: dict[str, Any]) -> nn.Module:
    """A random-weight module from a preset config dict, in eval mode (the pipelines never switch it)."""
    if issubclass(cls, PreTrainedModel):
        return cls(cls.config_class(**config)).eval()
    return cls.from_config(config).eval()


def build_network(section: dict[str, Any], name: str) -> nn.Module:
    """One network of a decoder section (`unet`, `vae` or `vocoder`) with random weights, seeded by the
    caller's torch.manual_seed: the part alone, without the text encoder `build_decoder` also makes."""
    if name not in _module_names(section):
        raise ValueError(f"{section['name']} has no {name!r}; it has {', '.join(_module_names(section))}")
    return _new_module(_module_class(section, name), section[name])


def _new_scheduler(config: dict[str, Any]) -> SchedulerMixin:
    return getattr(diffusers, config["_class_name"]).from_config(config)


def build_decoder(section: dict[str, Any]) -> Components:
    """The components of one decoder section with random weights, seeded by the caller's torch.manual_seed.

    The random text encoder is kept; a tokenizer is the caller's to add (`caption_tokenizer`).
    """
    components: Components = {
        name: _new_module(_module_class(section, name), section[name]) for name in _module_names(section)
    }
    components["scheduler"] = _new_scheduler(section["scheduler"])
    encoder = _new_module(_spec(section).text_encoder, section["text_encoder"])
    components["text_encoder"] = encoder
    components["uncond_embedding"] = _encoder_unconditional(encoder, section)
    return components


def _empty_prompt(config: Any, length: int) -> tuple[Tensor, Tensor]:
    """Token ids and attention mask of "" as the decoder's tokenizer pads it: BOS, EOS, then pad.

    SD-1.5's CLIP tokenizer gives [49406, 49407, 49407, ...] and AudioLDM's RoBERTa one [0, 2, 1, 1, ...].
    The ids come from the encoder config because a tiny encoder has no tokenizer and a vocabulary too
    small for the real CLIP ids; the tiny preset gives them the same roles and layout.
    """
    ids = torch.full((1, length), config.pad_token_id)
    ids[0, :2] = torch.tensor([config.bos_token_id, config.eos_token_id])
    mask = (torch.arange(length) < 2).long().unsqueeze(0)
    return ids, mask


@torch.no_grad()
def text_encoder_embedding(
    text_encoder: CLIPTextModel | ClapTextModelWithProjection, input_ids: Tensor, attention_mask: Tensor
) -> Tensor:
    """What the decoder's pipeline makes of tokenized text.

    (batch, tokens, dim) for CLIP (SD, ZeroScope), (batch, dim) for CLAP (AudioLDM).
    """
    input_ids, attention_mask = input_ids.to(text_encoder.device), attention_mask.to(text_encoder.device)
    if isinstance(text_encoder, ClapTextModelWithProjection):
        # AudioLDMPipeline._encode_prompt: the projected text_embeds, L2-normalised (lines 223-229)
        return F.normalize(text_encoder(input_ids, attention_mask=attention_mask).text_embeds, dim=-1)
    # StableDiffusionPipeline.encode_prompt passes the mask only to encoders configured for it (line 417);
    # SD-1.5's and ZeroScope's are not: the pad positions are encoded like tokens, under the causal mask only
    use_mask = getattr(text_encoder.config, "use_attention_mask", False)
    return text_encoder(input_ids, attention_mask=attention_mask if use_mask else None)[0]


def _check_uncond_shape(embedding: Tensor, section: dict[str, Any], where: str) -> None:
    shape, expected = tuple(embedding.shape), (section["embed_tokens"], section["embed_dim"])
    if shape != expected:
        raise ValueError(f"{where}: unconditional embedding is {shape}, section wants {expected}")


def unconditional_embedding(section: dict[str, Any]) -> Tensor:
    """The section's `text_encoder` (random weights, caller-seeded) on "": (embed_tokens, embed_dim).

    For audio that is (1, embed_dim): AudioLDM's one CLAP vector per prompt.
    """
    return _encoder_unconditional(_new_module(_spec(section).text_encoder, section["text_encoder"]), section)


def refresh_unconditional(components: Components, section: dict[str, Any]) -> None:
    """Recompute `uncond_embedding` from the components' own text encoder, after it was trained."""
    components["uncond_embedding"] = _encoder_unconditional(components["text_encoder"], section)


def _encoder_unconditional(encoder: CLIPTextModel | ClapTextModelWithProjection, section: dict[str, Any]) -> Tensor:
    ids, mask = _empty_prompt(encoder.config, _spec(section).empty_prompt_length(encoder.config))
    embedding = torch.atleast_2d(text_encoder_embedding(encoder, ids, mask)[0])
    _check_uncond_shape(embedding, section, f"{section['name']} text_encoder")
    return embedding


def caption_length(section: dict[str, Any]) -> int:
    """How many tokens the decoder's pipeline pads a prompt to: its tokenizer's model_max_length.

    CLIP: the position count (77). AudioLDM pads to the tokenizer's length, RoBERTa's positions minus
    the two its ids start after; `unconditional_embedding` pads "" to the same count (the projection
    dim, 512 = 514 - 2 at full size).
    """
    config = section["text_encoder"]
    return config["max_position_embeddings"] - (2 if _spec(section).class_labels else 0)


def caption_tokenizer(corpus: list[str], section: dict[str, Any], whole: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """A small deterministic BPE tokenizer for a tiny text encoder, trained on `corpus`.

    Its ids fit the encoder config: vocab_size ids in all, BOS, EOS and pad at the config's ids, "" as
    BOS EOS pad... like the real tokenizers (and `_empty_prompt`). It lower-cases like CLIP's. A tiny
    CLIP reads 8 positions, so merges run across spaces and the filler between the words of `whole`
    ("in the centre of a") becomes one token, while each word of `whole` (the attribute values, e.g.
    "red", "c sharp") is a piece of its own: a caption fits and its tokens stay compositional.
    """
    config = section["text_encoder"]
    special = {config["bos_token_id"]: "<|startoftext|>", config["eos_token_id"]: "<|endoftext|>"}
    special.setdefault(config["pad_token_id"], "<|pad|>")
    unk = "<|unk|>"
    trainer = trainers.BpeTrainer(
        vocab_size=config["vocab_size"] - len(special), special_tokens=[unk], show_progress=False
    )
    learner = Tokenizer(models.BPE(unk_token=unk))
    learner.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    if whole:
        # longest first, so "c sharp" wins over "c"; a word takes the space before it
        words = "|".join(re.escape(w) for w in sorted(set(whole), key=lambda w: (-len(w), w)))
        learner.pre_tokenizer = pre_tokenizers.Split(TokRegex(rf" ?\b(?:{words})\b"), behavior="isolated")
    learner.train_from_iterator(corpus, trainer=trainer)
    learned = json.loads(learner.to_str())["model"]
    # the learned tokens take the free ids in their own order; unused ids are filled, so ids run 0..vocab-1
    free = (i for i in range(config["vocab_size"]) if i not in special)
    vocab = {token: next(free) for token, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1])}
    vocab.update({f"<|unused{i}|>": i for i in free})
    vocab.update({name: i for i, name in special.items()})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) for m in learned["merges"]], unk_token=unk))
    tok.normalizer = learner.normalizer
    tok.pre_tokenizer = learner.pre_tokenizer
    bos, eos = special[config["bos_token_id"]], special[config["eos_token_id"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, config["bos_token_id"]), (eos, config["eos_token_id"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=special[config["pad_token_id"]],
        unk_token=unk,
        model_max_length=caption_length(section),
    )


@torch.no_grad()
def encode_captions(
    encoder: CLIPTextModel | ClapTextModelWithProjection, tokenizer: Any, captions: list[str], section: dict[str, Any]
) -> Tensor:
    """Captions as the decoder's pipeline encodes a prompt: (batch, embed_tokens, embed_dim), float32.

    Padded to the tokenizer's model_max_length and truncated, as `encode_prompt` does; AudioLDM's
    L2-normalised CLAP vector becomes one token.
    """
    tokens = tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    embedding = text_encoder_embedding(encoder, tokens.input_ids, tokens.attention_mask).float()
    if embedding.dim() == 2:
        embedding = embedding.unsqueeze(1)
    expected = (section["embed_tokens"], section["embed_dim"])
    if tuple(embedding.shape[1:]) != expected:
        got = tuple(embedding.shape[1:])
        raise ValueError(f"{section['name']}: captions encode to {got}, section wants {expected}")
    return embedding.cpu()


def save_decoder(components: Components, folder: str | Path, shared: Collection[str] = ()) -> None:
    """Diffusers layout: one `save_pretrained` subfolder per part (safetensors), plus UNCOND_FILE.
    `shared`: parts another decoder's folder holds (`shared_vae`), not written here."""
    folder = Path(folder)
    for name, part in components.items():
        if name in shared:
            continue
        if name == "tokenizer":
            part.save_pretrained(str(folder / name))
        elif name != "uncond_embedding":
            part.save_pretrained(folder / name)
    save_file({"embedding": components["uncond_embedding"].contiguous()}, folder / UNCOND_FILE)


def _config_dict(part: nn.Module | SchedulerMixin) -> dict[str, Any]:
    return part.config.to_dict() if isinstance(part, PreTrainedModel) else dict(part.config)


def _check_config(where: Path, config: dict[str, Any], expected: dict[str, Any]) -> None:
    for field, want in expected.items():
        have = json.loads(json.dumps(config.get(field)))  # tuples to lists, as the preset writes them
        if have != want:
            raise ValueError(f"{where}: config field {field!r} is {have!r}, the preset section has {want!r}")


def _load_modules(folder: Path, section: dict[str, Any], extra: tuple[str, ...], given: Components) -> Components:
    """The networks and scheduler of a diffusers folder, checked field by field against the section;
    `given` networks are taken as they are instead."""
    names = [name for name in _module_names(section) if name not in given]
    for entry in (*names, "scheduler", *extra):
        if not (folder / entry).exists():
            raise FileNotFoundError(f"decoder folder {folder} has no {entry}")
    components: Components = {
        name: _module_class(section, name).from_pretrained(folder / name, local_files_only=True)
        for name in names
    }
    # the class named in the saved config, as at build time, so a different scheduler shows in the check
    scheduler_config = json.loads((folder / "scheduler" / SchedulerMixin.config_name).read_text())
    components["scheduler"] = _new_scheduler(scheduler_config)
    for name, part in components.items():
        _check_config(folder / name, _config_dict(part), section[name])
    return {**components, **given}


def load_decoder(folder: str | Path, section: dict[str, Any], shared: Components | None = None) -> Components:
    """Components saved by `save_decoder`, checked field by field against the preset section;
    `shared`: the parts saved in another decoder's folder (`shared_vae`), already loaded."""
    folder = Path(folder)
    components = _load_modules(folder, section, (UNCOND_FILE,), shared or {})
    embedding = load_file(folder / UNCOND_FILE)["embedding"]
    _check_uncond_shape(embedding, section, str(folder / UNCOND_FILE))
    components["uncond_embedding"] = embedding
    return components


def load_text_encoder(folder: str | Path, section: dict[str, Any]) -> tuple[PreTrainedModel, Any]:
    """The decoder's own text encoder (eval mode) and tokenizer, as `save_decoder` or a released
    pipeline folder keeps them; a missing one is a FileNotFoundError naming it."""
    folder = Path(folder)
    for name in TEXT_PARTS:
        if not (folder / name).is_dir():
            raise FileNotFoundError(
                f"{folder / name}: missing; caption embeddings need the decoder's text encoder and tokenizer "
                "(re-make or re-import the checkpoint)"
            )
    encoder = _spec(section).text_encoder.from_pretrained(folder / "text_encoder", local_files_only=True).eval()
    _check_config(folder / "text_encoder", encoder.config.to_dict(), section["text_encoder"])
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
    return encoder, tokenizer


def import_decoder(folder: str | Path, section: dict[str, Any]) -> Components:
    """A released diffusers pipeline folder (SD-1.5, ZeroScope, AudioLDM) as checkpoint components.

    Its own text encoder and tokenizer run once on "" for the unconditional embedding, and are kept
    for the caption embeddings of training.
    """
    folder = Path(folder)
    components = _load_modules(folder, section, TEXT_PARTS, {})
    spec = _spec(section)
    encoder = spec.text_encoder.from_pretrained(folder / "text_encoder", local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
    length = spec.empty_prompt_length(encoder.config)
    tokens = tokenizer("", padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    embedding = torch.atleast_2d(text_encoder_embedding(encoder, tokens.input_ids, tokens.attention_mask)[0])
    _check_uncond_shape(embedding, section, str(folder / "text_encoder"))
    components.update(text_encoder=encoder, tokenizer=tokenizer, uncond_embedding=embedding)
    return components


@dataclass(frozen=True)
class DecoderPipeline:
    """A decoder ready to generate: its diffusers pipeline, built once, and its negative embedding."""

    pipeline: DiffusionPipeline
    negative: Tensor


def build_pipeline(components: Components, section: dict[str, Any], progress: bool = True) -> DecoderPipeline:
    """The section's diffusers pipeline over `components`; `progress` keeps or hides its tqdm bar."""
    spec = _spec(section)
    parts = {name: components[name] for name in (*_module_names(section), "scheduler")}
    # No text encoder or tokenizer: prompts arrive as embeddings. SD and text-to-video skip both when
    # prompt_embeds and negative_prompt_embeds are given and take the dtype from the UNet instead
    # (encode_prompt: SD lines 391, 439-444, 454; text-to-video 218, 266-271, 281); AudioLDM does not,
    # hence _AudioLDMFromEmbeds.
    pipeline = spec.pipeline(text_encoder=None, tokenizer=None, **parts, **spec.pipeline_kwargs)
    pipeline.set_progress_bar_config(disable=not progress)
    return DecoderPipeline(pipeline, components["uncond_embedding"])


def _size(section: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's output-size arguments, from whichever of them the section sets."""
    keys = {"height": "height", "width": "width", "frames": "num_frames", "audio_length_s": "audio_length_in_s"}
    return {arg: section[key] for key, arg in keys.items() if key in section}


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    # the rounding of diffusers' own numpy_to_pil; the pipelines already clamp to [0, 1]
    return (pixels * 255).round().astype(np.uint8)


def generate(
    decoder: DecoderPipeline,
    section: dict[str, Any],
    prompt_embeds: Tensor,
    steps: int | None = None,
    guidance: float | None = None,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """One sample from projector output (1, embed_tokens, embed_dim): an image uint8 (H, W, 3), a
    video uint8 (frames, H, W, 3) or a float32 waveform (the pipeline trims the vocoder's output to
    sample_rate × audio_length_s). Steps and guidance default to the section's."""
    expected = (1, section["embed_tokens"], section["embed_dim"])
    if tuple(prompt_embeds.shape) != expected:
        shape = tuple(prompt_embeds.shape)
        raise ValueError(f"{section['name']}: prompt_embeds is {shape}, expected {expected}")
    negative = decoder.negative.to(prompt_embeds).expand_as(prompt_embeds)
    spec = _spec(section)
    if spec.class_labels:  # AudioLDM's (batch, dim), as the reference's gen_emb.view(bs, dim)
        prompt_embeds, negative = prompt_embeds.flatten(1), negative.flatten(1)
    output = decoder.pipeline(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative,
        num_inference_steps=section["steps"] if steps is None else steps,
        guidance_scale=section["guidance"] if guidance is None else guidance,
        generator=generator,
        output_type="np",
        return_dict=False,
        **_size(section),
    )[0][0]
    return output.astype(np.float32) if spec.class_labels else _to_uint8(output)
