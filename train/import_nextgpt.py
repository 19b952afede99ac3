"""Assemble a checkpoint from local copies of the released NExT-GPT weights.

    python train/import_nextgpt.py --imagebind imagebind_huge.pth --vicuna vicuna-7b/ \\
        --delta nextgpt/pytorch_model.pt --sd stable-diffusion-v1-5/ --audioldm audioldm-l-full/ \\
        --zeroscope zeroscope_v2_576w/ --out train/checkpoints/nextgpt-7b [--preset nextgpt-7b]

Parts are written one by one (no whole model is ever built, so a 7B import fits in host memory);
each is checked against modules built on the meta device from the preset, the delta under its own
key names. Every input is checked to exist, and the Vicuna sizes against the preset, before anything
large is read. Foreign `.pth`/`.pt` files are read with `torch.load(weights_only=True)`. Nothing is
fetched from a hub.
"""
from __future__ import annotations

import contextlib
import pickle
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

if __package__ in (None, ""):  # run as a script: the repository root first, not train/ (its train.py shadows the package)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from runtime.cli import add_force, make_parser, refuse_non_empty
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
# BLIP-2's Q-Former layers run query tokens through `intermediate_query`/`output_query`; transformers'
# BERT layers name their one feed-forward `intermediate`/`output`
QFORMER_FFN = re.compile(r"^(Qformer\.bert\.encoder\.layer\.\d+)\.(intermediate|output)\.")
# the parameter only one mode of the reference TextFcLayer has; a projector with neither is `linear`
MODE_MARKERS = {"query_embs": "transformer", "query_tokens": "qformer"}
LORA_PREFIX = "llama_model."
ADAPTER = "default"  # peft's adapter name: in NExT-GPT's parameter names, not in get_peft_model_state_dict's
LLM_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
TORCH_FILES = ("imagebind", "delta")  # the other inputs are folders
RESIZE_SEED = 0  # the added rows' (tiny) sampling noise: the same inputs give the same checkpoint


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

    def check_exists(self) -> None:
        """Every input where it is said to be, before anything is read."""
        for field in fields(self):
            path, is_file = getattr(self, field.name), field.name in TORCH_FILES
            if not (path.is_file() if is_file else path.is_dir()):
                raise ckpt.CheckpointError(f"{path}: no such {'file' if is_file else 'folder'} (--{field.name})")


def official_lora_key(key: str) -> str:
    """A `get_peft_model_state_dict` key -> its name in NExT-GPT's delta (model prefix, adapter name)."""
    return LORA_PREFIX + re.sub(r"\.(lora_[AB])\.", rf".\1.{ADAPTER}.", key)


def official_projector_key(key: str) -> str:
    """An output projector's key -> its name in the reference TextFcLayer."""
    return QFORMER_FFN.sub(r"\1.\2_query.", key)


def released_modes(delta: dict[str, torch.Tensor]) -> dict[str, str]:
    """Each output projector's mode, read from the parameters the delta holds for it."""
    modes = {}
    for prefix, part in DELTA_PARTS.items():
        if part.startswith("projector_"):
            names = {k[len(prefix) :] for k in delta if k.startswith(prefix)}
            found = [mode for marker, mode in MODE_MARKERS.items() if marker in names]
            modes[part.removeprefix("projector_")] = found[0] if found else "linear"
    return modes


def delta_layout(config: dict[str, Any]) -> dict[str, tuple[str, str, torch.Tensor]]:
    """Every tensor the delta must hold: its key there -> (our part, key in the part, shape-only tensor)."""
    with torch.device("meta"):
        projectors = build_projectors(config)
        modules = {"input_projection": build_input_projection(config)}
        modules.update({f"projector_{m}": p for m, p in projectors.items()})
        llm = with_lora(build_llm(config["llm"], config["llm"]["vocab_size"]), config["lora"])
    prefixes = {part: prefix for prefix, part in DELTA_PARTS.items()}
    layout = {
        prefixes[part] + official_projector_key(key): (part, key, value)
        for part, module in modules.items()
        for key, value in module.state_dict().items()
    }
    layout.update({official_lora_key(key): ("lora", key, value) for key, value in lora_state_dict(llm).items()})
    return layout


def split_delta(
    delta: dict[str, torch.Tensor], layout: dict[str, tuple[str, str, torch.Tensor]], where: Path
) -> dict[str, dict[str, torch.Tensor]]:
    """Check the delta under its own key names (errors name them), then route every tensor to its part."""
    ckpt.check_state({key: value for key, (_, _, value) in layout.items()}, delta, where)
    parts: dict[str, dict[str, torch.Tensor]] = {part: {} for part, _, _ in layout.values()}
    for official, (part, key, _) in layout.items():
        parts[part][key] = delta[official]
    return parts


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """torch.load refusing a file (weights_only) or failing on a damaged one, as an error naming the file."""
    try:
        yield
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        detail = re.search(r"Unsupported (global: GLOBAL \S+|operand \S+)", text)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        why = detail.group(0) if detail else (lines[0] if lines else type(e).__name__)
        raise ckpt.CheckpointError(f"{path}: not a file torch.load(weights_only=True) reads ({why})") from None


def load_foreign(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ckpt.CheckpointError(f"{path}: no such file")
    with _reading(path):
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ckpt.CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def check_llm_config(folder: Path, config: dict[str, Any]) -> None:
    """The Vicuna folder's sizes against the preset, from its config.json alone."""
    llm = LlamaConfig.from_pretrained(str(folder), local_files_only=True)
    for name in LLM_SIZES:
        if getattr(llm, name) != config["llm"][name]:
            raise ckpt.CheckpointError(
                f"{folder}: {name} is {getattr(llm, name)}, preset {config['preset']} says {config['llm'][name]}"
            )


def import_llm(folder: Path, vocab_size: int) -> LlamaForCausalLM:
    llm = LlamaForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype="auto")
    # The reference re-randomises the 38 added rows at every load; we keep and save them.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RESIZE_SEED)
        llm.resize_token_embeddings(vocab_size, mean_resizing=True)
    return llm


def import_nextgpt(src: ReleasedWeights, out: Path, preset: dict[str, Any]) -> dict[str, Any]:
    src.check_exists()
    check_llm_config(src.vicuna, preset)
    tokenizer = load_tokenizer(src.vicuna)
    token_ids = add_nextgpt_tokens(tokenizer)
    config = ckpt.make_config(preset, token_ids, tokenizer.bos_token_id, len(tokenizer))
    # each released pipeline folder holds its own VAE: an imported checkpoint shares none, whatever
    # the preset says (the tiny one stores ZeroScope's VAE once, in SD's folder)
    config["decoders"] = {m: {k: v for k, v in d.items() if k != "shared_vae"} for m, d in config["decoders"].items()}
    released = load_foreign(src.delta)
    config["projector"] = {**config["projector"], "modes": released_modes(released)}
    delta = split_delta(released, delta_layout(config), src.delta)
    with torch.device("meta"):
        encoder = ImageBindEncoder(config["imagebind"])
    with _reading(src.imagebind):
        imagebind = load_official_imagebind(src.imagebind, encoder)
    decoders = {m: import_decoder(folder, config["decoders"][m]) for m, folder in src.decoder_folders().items()}
    llm = import_llm(src.vicuna, len(tokenizer))

    out.mkdir(parents=True, exist_ok=True)
    # a folder without config.json is not a checkpoint: an earlier one here stops being one until this is done
    (out / ckpt.CONFIG).unlink(missing_ok=True)
    ckpt.save_state(imagebind, ckpt.part_path(out, "imagebind"))
    ckpt.save_state(llm.state_dict(), ckpt.part_path(out, "llm"))
    for part, state in delta.items():
        ckpt.save_state(state, ckpt.part_path(out, part))
    for modality, components in decoders.items():
        save_decoder(components, ckpt.decoder_path(out, config, modality))
    tokenizer.save_pretrained(str(out / ckpt.TOKENIZER))
    ckpt.write_config(out, config)  # last
    return config


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    for name in ReleasedWeights.__dataclass_fields__:
        p.add_argument(f"--{name}", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    add_force(p)
    p.add_argument("--preset", default="nextgpt-7b")
    args = p.parse_args(argv)
    refuse_non_empty(args.out, args.force)
    src = ReleasedWeights(**{k: getattr(args, k) for k in ReleasedWeights.__dataclass_fields__})
    try:
        import_nextgpt(src, args.out, get_preset(args.preset))
    except (ValueError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, whatever the library wrote
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
