"""Assemble a checkpoint from local copies of the released NExT-GPT weights.

    python train/import_nextgpt.py --imagebind imagebind_huge.pth --vicuna vicuna-7b/ \
        --delta nextgpt/pytorch_model.pt --sd stable-diffusion-v1-5/ --audioldm audioldm-l-full/ \
        --zeroscope zeroscope_v2_576w/ --out train/checkpoints/nextgpt-7b [--preset nextgpt-7b]

Parts are written one by one (no whole model is ever built, so a 7B import fits in host memory);
each is checked against modules built on the meta device from the preset. Foreign `.pth`/`.pt`
files are read with `torch.load(weights_only=True)`. Nothing is fetched from a hub.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaForCausalLM

from train import checkpoint as ckpt
from train.decoders import import_decoder, save_decoder
from train.imagebind import ImageBindEncoder, load_official_imagebind
from train.llm import add_nextgpt_tokens, build_llm, load_tokenizer, lora_state_dict, with_lora
from train.presets import get_preset
from train.projectors import build_input_projection, build_projectors

# Delta key prefix in NExT-GPT's `pytorch_model.pt` -> our checkpoint part.
DELTA_PARTS = {
    "llama_proj.": "input_projection",
    "gen_text_hidden_fcs.0.": "projector_image",
    "gen_text_hidden_fcs_video.0.": "projector_video",
    "gen_text_hidden_fcs_audio.0.": "projector_audio",
}
LORA_PREFIX = "llama_model."
LLM_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")


@dataclass(frozen=True)
class ReleasedWeights:
    imagebind: Path
    vicuna: Path
    delta: Path
    sd: Path
    audioldm: Path
    zeroscope: Path

    def decoder_folders(self) -> dict[str, Path]:
        return {"image": self.sd, "video": self.zeroscope, "audio": self.audioldm}


def split_delta(delta: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Route every delta key to a part; LoRA keys lose `llama_model.` and peft's adapter name."""
    parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in [*DELTA_PARTS.values(), "lora"]}
    unknown = []
    for key, value in delta.items():
        prefix = next((p for p in DELTA_PARTS if key.startswith(p)), None)
        if prefix is not None:
            parts[DELTA_PARTS[prefix]][key[len(prefix) :]] = value
        elif key.startswith(LORA_PREFIX) and ".lora_" in key:
            parts["lora"][key[len(LORA_PREFIX) :].replace(".default.", ".")] = value
        else:
            unknown.append(key)
    if unknown:
        raise ckpt.CheckpointError(f"delta checkpoint: {len(unknown)} keys of no known part (e.g. {unknown[0]})")
    return parts


def load_foreign(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ckpt.CheckpointError(f"{path}: no such file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ckpt.CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def expected_modules(config: dict[str, Any]) -> dict[str, torch.nn.Module]:
    """Shape-only modules for every delta part, built without allocating weights."""
    with torch.device("meta"):
        projectors = build_projectors(config)
        modules = {"input_projection": build_input_projection(config)}
        modules.update({f"projector_{m}": p for m, p in projectors.items()})
        return modules


def import_llm(folder: Path, config: dict[str, Any], vocab_size: int) -> LlamaForCausalLM:
    llm = LlamaForCausalLM.from_pretrained(str(folder), local_files_only=True, torch_dtype="auto")
    for name in LLM_SIZES:
        if getattr(llm.config, name) != config["llm"][name]:
            raise ckpt.CheckpointError(
                f"{folder}: {name} is {getattr(llm.config, name)}, preset {config['preset']} says {config['llm'][name]}"
            )
    # The reference re-randomises the 38 added rows at every load; we keep and save them.
    llm.resize_token_embeddings(vocab_size, mean_resizing=True)
    return llm


def import_nextgpt(src: ReleasedWeights, out: Path, preset: dict[str, Any]) -> dict[str, Any]:
    tokenizer = load_tokenizer(src.vicuna)
    token_ids = add_nextgpt_tokens(tokenizer)
    config = ckpt.make_config(preset, token_ids, tokenizer.bos_token_id, len(tokenizer))
    delta = split_delta(load_foreign(src.delta))
    for part, module in expected_modules(config).items():
        ckpt.check_state(module.state_dict(), delta[part], src.delta)
    with torch.device("meta"):
        meta_llm = with_lora(build_llm(config["llm"], len(tokenizer)), config["lora"])
        encoder = ImageBindEncoder(config["imagebind"])
    ckpt.check_state(lora_state_dict(meta_llm), delta["lora"], src.delta)
    imagebind = load_official_imagebind(src.imagebind, encoder)
    decoders = {m: import_decoder(folder, config["decoders"][m]) for m, folder in src.decoder_folders().items()}
    llm = import_llm(src.vicuna, config, len(tokenizer))

    out.mkdir(parents=True, exist_ok=True)
    ckpt.save_state(imagebind, ckpt.part_path(out, "imagebind"))
    ckpt.save_state(llm.state_dict(), ckpt.part_path(out, "llm"))
    for part, state in delta.items():
        ckpt.save_state(state, ckpt.part_path(out, part))
    for modality, components in decoders.items():
        save_decoder(components, ckpt.decoder_path(out, config, modality))
    tokenizer.save_pretrained(str(out / ckpt.TOKENIZER))
    ckpt.write_config(out, config)  # last: a folder without config.json is not a checkpoint
    return config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ReleasedWeights.__dataclass_fields__:
        p.add_argument(f"--{name}", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", default="nextgpt-7b")
    args = p.parse_args(argv)
    src = ReleasedWeights(**{k: getattr(args, k) for k in ReleasedWeights.__dataclass_fields__})
    try:
        import_nextgpt(src, args.out, get_preset(args.preset))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
