"""PyTorch module -> checked, optimised ONNX, driven by a component spec."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import onnxruntime as ort
import onnxscript
import torch
from onnx.defs import OpSchema
from onnxscript import opset20 as op
from onnxscript.function_libs.torch_lib.ops.nn import aten_scaled_dot_product_attention
from torch import nn

from export.specs import ComponentSpec

EXTERNAL_DATA_BYTES = 1 << 30  # protobuf stops at 2 GiB; keep big weights beside the graph


_P = OpSchema.FormalParameter
# ONNX Runtime's fused attention (com.microsoft MultiHeadAttention) takes (batch, seq, heads * dim);
# onnxscript needs its schema to emit it.
_MHA = onnxscript.values.Op(
    onnxscript.values.Opset("com.microsoft", 1),
    "MultiHeadAttention",
    OpSchema(
        "MultiHeadAttention",
        "com.microsoft",
        1,
        inputs=[_P("query", "T"), _P("key", "T"), _P("value", "T")],
        outputs=[_P("output", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "")],
        attributes=[
            OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "heads"),
            OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "softmax scale", required=False),
        ],
    ),
)


def _sdpa_as_fused_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):  # noqa: ANN001, ANN201
    """Unmasked SDPA with a static head count becomes one fused MultiHeadAttention node: the default
    decomposition (MatMul, Softmax, MatMul) spends most of a tiny UNet's time in its Softmax.
    Masked, causal or grouped attention keeps the default translation."""
    heads = query.shape[1]
    if attn_mask is not None or is_causal or enable_gqa or not isinstance(heads, int) or len(query.shape) != 4:
        return aten_scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)

    def merge_heads(x):  # noqa: ANN001, ANN202  (batch, heads, seq, dim) -> (batch, seq, heads * dim)
        return op.Reshape(op.Transpose(x, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))

    attrs = {"num_heads": heads, **({"scale": float(scale)} if scale is not None else {})}
    out = _MHA(merge_heads(query), merge_heads(key), merge_heads(value), **attrs)
    return op.Transpose(op.Reshape(out, op.Constant(value_ints=[0, 0, heads, -1])), perm=[0, 2, 1, 3])


FUSED_ATTENTION = {torch.ops.aten.scaled_dot_product_attention.default: _sdpa_as_fused_attention}


def export_point(spec: ComponentSpec) -> dict[str, int]:
    """Sizes to trace with: never 0 or 1 on a dynamic axis, or torch.export specialises it."""
    return {d: (lo if lo == hi else max(2, min(opt, hi) if opt > 1 else min(2, hi))) for d, (lo, opt, hi) in spec.dims.items()}


def _dynamic_shapes(spec: ComponentSpec) -> tuple[dict[int, torch.export.Dim], ...]:
    dims = {d: torch.export.Dim(d, min=lo, max=hi) for d, (lo, _, hi) in spec.dims.items() if lo != hi}
    return tuple({i: dims[a] for i, a in enumerate(t.shape) if a in dims} for t in spec.inputs)


def _param_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


@torch.no_grad()
def export_onnx(spec: ComponentSpec, module: nn.Module, path: Path, fused_attention: bool = True) -> Path:
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
            custom_translation_table=FUSED_ATTENTION if fused_attention else None,
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
