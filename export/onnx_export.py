"""PyTorch module -> checked, optimised ONNX, driven by a component spec."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from torch import nn

from export.specs import ComponentSpec

EXTERNAL_DATA_BYTES = 1 << 30  # protobuf stops at 2 GiB; keep big weights beside the graph


def export_point(spec: ComponentSpec) -> dict[str, int]:
    """Sizes to trace with: never 0 or 1 on a dynamic axis, or torch.export specialises it."""
    return {d: (lo if lo == hi else max(2, min(opt, hi) if opt > 1 else min(2, hi))) for d, (lo, opt, hi) in spec.dims.items()}


def _dynamic_shapes(spec: ComponentSpec) -> tuple[dict[int, torch.export.Dim], ...]:
    dims = {d: torch.export.Dim(d, min=lo, max=hi) for d, (lo, _, hi) in spec.dims.items() if lo != hi}
    return tuple({i: dims[a] for i, a in enumerate(t.shape) if a in dims} for t in spec.inputs)


def _param_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


@torch.no_grad()
def export_onnx(spec: ComponentSpec, module: nn.Module, path: Path) -> Path:
    """Export with the dynamo exporter, every dynamic axis ranged as the spec says; then check it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    feeds = spec.sample(export_point(spec))
    args = tuple(torch.from_numpy(feeds[n]) for n in spec.input_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            dynamo=True,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_shapes=_dynamic_shapes(spec),
            external_data=_param_bytes(module) > EXTERNAL_DATA_BYTES,
            verbose=False,
        )
    onnx.checker.check_model(str(path), full_check=True)
    return path


def optimise_onnx(spec: ComponentSpec, src: Path, dst: Path) -> Path:
    """ONNX Runtime's offline graph optimisations, saved as a portable (provider-neutral) model."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    return dst
