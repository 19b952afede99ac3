"""NExT-GPT assembled from its parts, and its checkpoint load/save."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from torch import nn

from train import checkpoint as ckpt
from train.decoders import build_decoder, load_decoder, save_decoder
from train.imagebind import ImageBindEncoder
from train.llm import build_llm, load_lora_state_dict, load_tokenizer, lora_state_dict, with_lora
from train.projectors import build_input_projection, build_projectors


class NextGPT(nn.Module):
    """Encoder, input projection, LLM with LoRA, output projectors and the three decoders."""

    def __init__(self, config: dict[str, Any], tokenizer: Any, decoders: dict[str, dict] | None = None) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.encoder = ImageBindEncoder(config["imagebind"])
        self.input_projection = build_input_projection(config)
        self.llm = with_lora(build_llm(config["llm"], config["llm"]["vocab_size"]), config["lora"])
        self.projectors = build_projectors(config)
        if decoders is None:
            decoders = {m: build_decoder(section) for m, section in config["decoders"].items()}
            for modality, components in decoders.items():
                components.update(shared_parts(config, modality, decoders))
        self.decoders = decoders
        self.eval()

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.llm.get_input_embeddings()

    def base_llm_state(self) -> dict[str, torch.Tensor]:
        """LLaMA weights without the adapter, under transformers' own key names."""
        state = self.llm.get_base_model().state_dict()
        return {k.replace(".base_layer.", "."): v for k, v in state.items() if "lora_" not in k}

    def load_base_llm_state(self, state: dict[str, torch.Tensor]) -> None:
        """The inverse of `base_llm_state`: peft moved the adapted weights under `.base_layer.`.
        The tensors are assigned, not copied, so the model may have been built on the meta device."""
        base = self.llm.get_base_model()
        wrapped = {k.replace(".base_layer.", "."): k for k in base.state_dict() if "lora_" not in k}
        base.load_state_dict({wrapped[k]: v for k, v in state.items()}, strict=False, assign=True)

    def module_parts(self) -> dict[str, nn.Module]:
        parts = {"imagebind": self.encoder, "input_projection": self.input_projection}
        parts.update({f"projector_{m}": p for m, p in self.projectors.items()})
        return parts


def shared_parts(config: dict[str, Any], modality: str, decoders: dict[str, dict]) -> dict[str, nn.Module]:
    """The parts of a decoder that another one owns: the VAE of the decoder its section names as
    `shared_vae` (the tiny ZeroScope uses SD's, as the released one reuses SD's), one module, saved
    once in the owner's folder."""
    sections = config["decoders"]
    owner = sections[modality].get("shared_vae")
    if owner is None:
        return {}
    if sections.get(owner, {}).get("vae") != sections[modality]["vae"]:
        raise ckpt.CheckpointError(f"decoder {modality!r} shares the VAE of {owner!r}, but their vae configs differ")
    return {"vae": decoders[owner]["vae"]}


def save_checkpoint(model: NextGPT, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ckpt.write_config(folder, model.config)
    model.tokenizer.save_pretrained(str(folder / ckpt.TOKENIZER))
    for name, module in model.module_parts().items():
        ckpt.save_state(module.state_dict(), ckpt.part_path(folder, name))
    ckpt.save_state(model.base_llm_state(), ckpt.part_path(folder, "llm"))
    ckpt.save_state(lora_state_dict(model.llm), ckpt.part_path(folder, "lora"))
    for modality, components in model.decoders.items():
        save_decoder(components, ckpt.decoder_path(folder, model.config, modality), shared_parts(model.config, modality, model.decoders))


def load_checkpoint(folder: Path) -> NextGPT:
    """Load and validate every part against `config.json`; raises CheckpointError on mismatch."""
    folder = Path(folder)
    config = ckpt.read_config(folder)
    if not (folder / ckpt.TOKENIZER).is_dir():
        raise ckpt.CheckpointError(f"{folder / ckpt.TOKENIZER}: missing tokenizer folder")
    tokenizer = load_tokenizer(folder / ckpt.TOKENIZER)
    if len(tokenizer) != config["llm"]["vocab_size"]:
        raise ckpt.CheckpointError(
            f"{folder / ckpt.TOKENIZER}: {len(tokenizer)} tokens, config.json says {config['llm']['vocab_size']}"
        )
    decoders: dict[str, dict] = {}
    for m, section in config["decoders"].items():  # an owner's section comes before its sharers'
        decoders[m] = load_decoder(ckpt.decoder_path(folder, config, m), section, shared_parts(config, m, decoders))
    # Parameters on the meta device (buffers, computed at init, stay real): no random weights are
    # drawn and no memory is held for them; the mmap'd checkpoint tensors take their place.
    with init_empty_weights():
        model = NextGPT(config, tokenizer, decoders)
    for name, module in model.module_parts().items():
        ckpt.load_module_part(module, ckpt.part_path(folder, name))
    model.load_base_llm_state(ckpt.read_checked(ckpt.part_path(folder, "llm"), model.base_llm_state()))
    load_lora_state_dict(model.llm, ckpt.read_checked(ckpt.part_path(folder, "lora"), lora_state_dict(model.llm)))
    empty = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if empty:
        raise ckpt.CheckpointError(f"{folder}: no checkpoint part holds {empty[0]} ({len(empty)} tensors left unloaded)")
    return model.eval()
