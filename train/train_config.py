"""Stage configs: YAML files over a shared base.

A stage file may say `extends: base.yaml` (a path relative to itself): the base is read first and the
stage's keys are merged over it, mappings key by key, anything else (numbers, lists) replaced whole.
Last, `presets.<name>` is merged the same way for the checkpoint's preset, so one stage file serves
the CPU-sized and the full-sized model. Unknown keys are refused, so a typo cannot pass silently.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from train.data.records import MODALITIES

TASKS = ("caption", "signal", "dialogue")
TRAINABLE = ("input_projection", "projectors", "signal_rows", "lora")
KEYS = {
    "seed", "epochs", "batch_size", "grad_accum", "max_length", "optimizer", "clip_grad_norm", "schedule",
    "mixed_precision", "save_every", "caption_prompt", "loss", "presets", "task", "train", "extends", "cache_media",
    "repeat", "skip_sources",
}


class ConfigError(ValueError):
    """A stage config that cannot be read or does not make sense; the message names the file."""


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: extends itself through {seen[-1].name}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a stage config is a mapping")
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}")
    if "extends" in data:
        data = merge(_read_yaml(path.parent / data.pop("extends"), (*seen, path)), data)
    return data


def _check(config: dict[str, Any], where: Path) -> None:
    if config.get("task") not in TASKS:
        raise ConfigError(f"{where}: task must be one of {', '.join(TASKS)}, got {config.get('task')!r}")
    bad = sorted(set(config.get("train") or ["(none)"]) - set(TRAINABLE))
    if bad:
        raise ConfigError(f"{where}: cannot train {bad[0]!r}; trainable: {', '.join(TRAINABLE)}")
    for key in ("batch_size", "grad_accum", "epochs", "save_every", "max_length"):
        if not isinstance(config.get(key), int) or config[key] < 1:
            raise ConfigError(f"{where}: {key} must be a positive integer, got {config.get(key)!r}")
    repeat = config.get("repeat") or {}
    if not isinstance(repeat, dict) or any(m not in MODALITIES or not isinstance(n, int) or n < 1 for m, n in repeat.items()):
        raise ConfigError(f"{where}: repeat maps image, video or audio to a positive integer, got {repeat!r}")
    skip = config.get("skip_sources") or []
    if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
        raise ConfigError(f"{where}: skip_sources is a list of record sources, got {skip!r}")
    loss = config["loss"]
    if loss["gen_loss"] and not set(loss["gen_modalities"]) <= set(MODALITIES):
        raise ConfigError(f"{where}: gen_modalities are image, video and audio, got {loss['gen_modalities']!r}")


def load_config(path: Path, preset: str) -> dict[str, Any]:
    """The stage config at `path`, base merged in, then the overrides of `preset`."""
    config = _read_yaml(Path(path))
    config = merge(config, config.pop("presets", {}).get(preset, {}))
    _check(config, Path(path))
    return config
