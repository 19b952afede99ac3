"""The checkpoint format: one folder, a `config.json`, a tokenizer, safetensors per part.

```
config.json                    preset sizes, vocabulary size, signal-token ids, prompt template
tokenizer/                     tokenizer.json (+ config), with the 38 NExT-GPT tokens added
imagebind.safetensors          vision + audio trunks, official ImageBind key names
input_projection.safetensors   ImageBind embedding -> LLM token (`llama_proj`)
llm.safetensors                LLaMA base weights incl. the embedding and lm_head rows of added tokens
lora.safetensors               peft adapter weights (q, k, v, o)
projector_{image,video,audio}.safetensors
decoders/{sd,zeroscope,audioldm}/   diffusers folders + uncond_embedding.safetensors, and optionally
                               text_encoder/ + tokenizer/ (save_pretrained folders): the decoder's own
                               text encoder, which training needs for caption embeddings and
                               deployment never reads; a decoder whose section names a
                               `shared_vae` has no vae/ of its own (the tiny ZeroScope uses SD's)
```
Every part is checked against the config on load: a missing file, key or a wrong shape is a
`CheckpointError` naming the file and the tensor.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from train.presets import PROMPT, SIGNAL_TOKEN_COUNTS, added_tokens, signal_tokens

CONFIG = "config.json"
TOKENIZER = "tokenizer"
MODULE_PARTS = ("imagebind", "input_projection", "llm", "lora", "projector_image", "projector_video", "projector_audio")


class CheckpointError(ValueError):
    """A checkpoint folder that is missing a part or does not match its config."""


def part_path(folder: Path, part: str) -> Path:
    return folder / f"{part}.safetensors"


def decoder_path(folder: Path, config: dict[str, Any], modality: str) -> Path:
    return folder / "decoders" / config["decoders"][modality]["name"]


def make_config(preset: dict[str, Any], token_ids: dict[str, int], bos_id: int, vocab_size: int) -> dict[str, Any]:
    """The preset plus what the tokenizer decided: the config.json of a checkpoint."""
    config = dict(preset)
    config["llm"] = {**preset["llm"], "vocab_size": vocab_size}
    config["prompt"] = dict(PROMPT)
    config["tokens"] = {
        "bos_id": bos_id,
        "media_open_id": token_ids[added_tokens()[0]],
        "signal_ids": {m: [token_ids[t] for t in signal_tokens(m)] for m in SIGNAL_TOKEN_COUNTS},
    }
    return config


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a checkpoint ({CONFIG} is missing)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def write_config(folder: Path, config: dict[str, Any]) -> None:
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def check_state(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], where: Path) -> None:
    """Same keys, same shapes; the message names the first offending tensor."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: does not match the config: {len(missing)} missing tensors"
            f"{' (e.g. ' + missing[0] + ')' if missing else ''}, {len(unexpected)} unexpected"
            f"{' (e.g. ' + unexpected[0] + ')' if unexpected else ''}"
        )
    for key, ref in expected.items():
        if tuple(got[key].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{where}: {key} has shape {tuple(got[key].shape)}, the config expects {tuple(ref.shape)}"
            )


def read_part(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing checkpoint part")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from None


def read_checked(path: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A part's tensors, refused unless its keys and shapes are exactly `expected`'s."""
    state = read_part(path)
    check_state(expected, state, path)
    return state


def load_module_part(module: nn.Module, path: Path) -> None:
    """Assigned, not copied: the module may be on the meta device, and the tensors stay mmap'd."""
    module.load_state_dict(read_checked(path, module.state_dict()), assign=True)


def save_state(state: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path))
