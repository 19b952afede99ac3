"""Stage 0 (tiny only): pre-training, on the synthetic world, of the parts NExT-GPT takes frozen.

At full size these parts come pre-trained (ImageBind, Vicuna, SD, ZeroScope, AudioLDM); the tiny
model has to learn them before NExT-GPT's own stages 1 to 3 mean anything. In order, each part
frozen once trained:

| part | trains | on |
|---|---|---|
| imagebind | vision and audio trunks | InfoNCE against a caption transformer |
| language | the LLM (adapter off) | the world's dialogues as text, and X→text exchanges reading that transformer's caption embedding in the media slot |
| text_encoders | each decoder's CLIP / CLAP (ZeroScope's from SD's) | InfoNCE against the frozen ImageBind embedding of the medium |
| vaes | SD's VAE (shared by ZeroScope), AudioLDM's | reconstruction, light KL |
| vocoder | HiFi-GAN | multi-resolution spectral convergence |
| unets | SD, ZeroScope, AudioLDM UNets | v-prediction on the VAE latents (zero terminal SNR), caption dropped for CFG |

Settings (steps, batch, rate per part; `limit`, combinations per modality, only for quick checks)
are train/configs/stage_0.yaml.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from train.model import NextGPT
from train.pretrain.autoencoders import pretrain_vaes, pretrain_vocoder
from train.pretrain.diffusion import pretrain_unets
from train.pretrain.encoders import pretrain_imagebind, pretrain_text_encoders
from train.pretrain.language import pretrain_language
from train.pretrain.world_data import WorldData

PARTS: dict[str, Callable[..., dict[str, float]]] = {
    "imagebind": pretrain_imagebind,
    "language": pretrain_language,
    "text_encoders": pretrain_text_encoders,
    "vaes": pretrain_vaes,
    "vocoder": pretrain_vocoder,
    "unets": pretrain_unets,
}


def load_stage0_config(path: Path) -> dict[str, Any]:
    config = yaml.safe_load(Path(path).read_text())
    unknown = sorted(set(config) - {"seed", "limit", *PARTS})
    missing = sorted(set(PARTS) - set(config))
    if unknown or missing:
        raise ValueError(f"{path}: unknown parts {unknown}, missing parts {missing}; parts: {', '.join(PARTS)}")
    return config


def pretrain(model: NextGPT, config: dict[str, Any], progress: bool = True) -> list[dict[str, Any]]:
    """Every part in order on `model` in place; one row per part: its name, seconds, final losses."""
    seed = config["seed"]
    data = WorldData(model.config, seed, progress, config.get("limit"))
    model.requires_grad_(False)
    rows = []
    for name, part in PARTS.items():
        started = time.perf_counter()
        losses = part(model, data, config[name], seed, progress)
        rows.append({"stage": f"0 {name}", "seconds": time.perf_counter() - started, "losses": losses})
        if progress:
            print(f"stage 0 {name}: {rows[-1]['seconds']:.0f} s, " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()), flush=True)
    return rows
