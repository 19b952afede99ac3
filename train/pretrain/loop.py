"""The one optimisation loop of stage 0: AdamW, warm-up then cosine decay, clipping, a progress bar.

Each part of stage 0 supplies its parameters and a `loss(step) -> {name: tensor}` closure that draws
its own batch; the loop does the rest and returns the mean of each term over the last steps.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

TAIL = 20  # steps averaged for the reported final loss
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}  # `precision`: the autocast dtype of the forward pass


def fit(
    params: Iterable[torch.nn.Parameter],
    loss: Callable[[int], dict[str, Tensor]],
    settings: dict[str, Any],
    desc: str,
    progress: bool = True,
) -> dict[str, float]:
    """`settings` holds steps, lr and optionally warmup (fraction), weight_decay, clip and precision
    (fp32, or bf16: the closure runs under CPU autocast, weights, gradients and AdamW stay fp32). The
    closure's "loss" term is minimised; every term is reported."""
    precision = settings.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"{desc}: precision {precision!r}; known: {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    params = [p for p in params if p.requires_grad]
    steps = settings["steps"]
    optimizer = torch.optim.AdamW(params, lr=settings["lr"], weight_decay=settings.get("weight_decay", 0.0))
    schedule = get_cosine_schedule_with_warmup(optimizer, int(settings.get("warmup", 0.05) * steps), steps)
    tail: dict[str, list[float]] = {}
    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress, leave=False)
    for step in bar:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            terms = loss(step)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, settings.get("clip", 1.0))
        optimizer.step()
        schedule.step()
        for name, value in terms.items():
            tail.setdefault(name, []).append(float(value.detach()))
            del tail[name][:-TAIL]
        bar.set_postfix(loss=f"{tail['loss'][-1]:.4f}")
    bar.close()
    return {name: sum(values) / len(values) for name, values in tail.items()}
