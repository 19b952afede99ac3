"""PyTorch module -> the two ONNX files of a component, driven by its spec.

- the portable ONNX (`model.onnx`): standard `ai.onnx` ops only, constants folded with polygraphy as
  NVIDIA's demo/Diffusion folds them, an opset TensorRT 10's parser takes. TensorRT, ONNX Runtime's
  CUDA and TensorRT providers and polygraphy read it. For fp16/bf16 it computes in that type behind
  float32 inputs and outputs, so a strongly typed TensorRT network takes the precision from it; the
  softmaxes, the normalisations and the rotary tables stay fp32 inside it (`FP32_OPS`, `computing_in`).
- the CPU ONNX (`model.opt.onnx`): attention exported as ONNX Runtime's fused `MultiHeadAttention`,
  then ONNX Runtime's offline CPU fusions. Only the CPU provider runs it.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnxruntime as ort
import onnxscript
import torch
from onnx import TensorProto, helper
from onnx.defs import OpSchema
from onnxscript import opset20 as op
from onnxscript.function_libs.torch_lib.ops.nn import aten_scaled_dot_product_attention
from onnx_graphsurgeon.logger import G_LOGGER as GS_LOGGER
from polygraphy.backend.onnx.loader import fold_constants
from polygraphy.logger import G_LOGGER
from torch import nn

from export.specs import ComponentSpec

EXTERNAL_DATA_BYTES = 1 << 30  # protobuf stops at 2 GiB; keep big weights beside the graph
# TensorRT 10's ONNX parser: "supports operators in the inclusive range of opset 9 to opset 20"
# (onnx-tensorrt docs/operators.md, 10.0 and 10.1 GA; kept in tests/data/).
TENSORRT_OPSETS = (9, 20)
STANDARD_DOMAINS = ("", "ai.onnx")
COMPUTE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Reductions whose sums overflow fp16 or lose bf16's few bits (TensorRT warns of fp16 normalisations
# and recommends fp32): a reduced-precision graph computes them in fp32 between two Casts. The
# exporter lowers GroupNorm to InstanceNormalization; LLaMA's RMSNorm already computes in fp32.
FP32_OPS = ("Softmax", "LayerNormalization", "GroupNormalization", "InstanceNormalization")
REDUCED_TYPES = (TensorProto.FLOAT16, TensorProto.BFLOAT16)


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


def onnx_bytes(path: Path) -> int:
    """The graph and its external data file, if any."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def computing_in(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of `module` computing in `dtype` behind float32 inputs and outputs: the manifest's IO
    stays float32 while the ONNX carries the precision. Hooks cast, so the signature (which the
    exporter's dynamic shapes follow) stays the module's own. Non-persistent buffers are tables
    derived from the config, not weights (the rotary inverse frequencies): they stay float32, as
    rounding them would shift every rotary angle the more the further the position."""
    inner = copy.deepcopy(module).to(dtype)
    tables = dict(module.named_buffers(remove_duplicate=False))
    for prefix, sub in inner.named_modules(remove_duplicate=False):
        for name in sub._non_persistent_buffers_set:
            if sub._buffers.get(name) is not None and sub._buffers[name].is_floating_point():
                sub._buffers[name] = tables[f"{prefix}.{name}" if prefix else name].detach().clone()
    inner.register_forward_pre_hook(lambda _, args: tuple(a.to(dtype) if a.is_floating_point() else a for a in args))
    inner.register_forward_hook(lambda _, __, out: tuple(o.float() for o in out) if isinstance(out, tuple) else out.float())
    return inner


def keep_in_fp32(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every `FP32_OPS` node that reads fp16/bf16 computing in fp32: its reduced inputs
    cast up, its output cast back. Types come from the exporter's value_info."""
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types |= {t.name: t.data_type for t in graph.initializer}
    nodes = []
    for i, node in enumerate(graph.node):
        low = types.get(node.input[0]) if node.input else None
        if node.op_type not in FP32_OPS or low not in REDUCED_TYPES:
            nodes.append(node)
            continue
        for k, name in enumerate(node.input):
            if name and types.get(name) == low:
                node.input[k] = f"{name}/fp32_{i}"
                nodes.append(helper.make_node("Cast", [name], [node.input[k]], name=f"cast_up_{i}_{k}", to=TensorProto.FLOAT))
        out = node.output[0]
        node.output[0] = f"{out}/fp32"
        nodes += [node, helper.make_node("Cast", [node.output[0]], [out], name=f"cast_down_{i}", to=low)]
    del graph.node[:]
    graph.node.extend(nodes)
    return model


@torch.no_grad()
def export_onnx(spec: ComponentSpec, module: nn.Module, path: Path, fused_attention: bool = True) -> Path:
    """Export with the dynamo exporter, every dynamic axis ranged as the spec says; then check it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    feeds = spec.sample(export_point(spec))
    args = tuple(torch.from_numpy(feeds[n]) for n in spec.input_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("torch.onnx", "onnxscript"):
            logging.getLogger(name).setLevel(logging.ERROR)
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


@contextlib.contextmanager
def _quiet_graph_tools() -> Iterator[None]:
    """polygraphy and onnx-graphsurgeon report every folding pass; keep their errors only."""
    severity, GS_LOGGER.severity = GS_LOGGER.severity, GS_LOGGER.ERROR
    try:
        with G_LOGGER.verbosity(G_LOGGER.ERROR):
            yield
    finally:
        GS_LOGGER.severity = severity


def save_onnx(model: onnx.ModelProto, path: Path, external: bool) -> None:
    """Over `path`; weights in `path.data` when `external` (onnx appends to that file, so it goes first)."""
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True, location=data.name)


def non_standard_ops(model: onnx.ModelProto) -> list[str]:
    """`domain::op` of every node outside the standard domains (ONNX Runtime's contrib ops and such)."""
    return sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS})


def check_portable(model: onnx.ModelProto, where: str) -> None:
    """What TensorRT's parser needs: standard ops only, at an opset it takes."""
    foreign = non_standard_ops(model)
    if foreign:
        raise ValueError(f"{where}: the portable ONNX has non-standard ops: {', '.join(foreign)}")
    opset = max(o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS)
    if not TENSORRT_OPSETS[0] <= opset <= TENSORRT_OPSETS[1]:
        raise ValueError(f"{where}: opset {opset} is outside TensorRT 10's {TENSORRT_OPSETS[0]}..{TENSORRT_OPSETS[1]}")


def export_portable(spec: ComponentSpec, module: nn.Module, path: Path, precision: str = "fp32") -> Path:
    """Standard ops only, constants folded: what TensorRT, the GPU providers and polygraphy read."""
    if precision != "fp32":
        module = computing_in(module, COMPUTE_DTYPES[precision])
    export_onnx(spec, module, path, fused_attention=False)
    external = onnx_bytes(path) > EXTERNAL_DATA_BYTES
    model = keep_in_fp32(onnx.load(str(path))) if precision != "fp32" else onnx.load(str(path))
    # Folding also turns the casts of constant weights into fp32 constants. Without shape inference:
    # it folds the same nodes in every component here (compared node by node on the tiny preset),
    # and it held ImageBind huge's graph in memory several times over (21 GB, against 10 GB).
    with _quiet_graph_tools():
        folded = fold_constants(model, do_shape_inference=False)
    check_portable(folded, spec.name)
    save_onnx(folded, path, external)
    return path


def export_cpu(spec: ComponentSpec, module: nn.Module, path: Path) -> Path:
    """Fused attention, then ONNX Runtime's CPU fusions: the CPU provider's model."""
    fused = export_onnx(spec, module, path.with_name("fused.onnx"))
    optimise_onnx(spec, fused, path)
    fused.unlink()
    fused.with_name(fused.name + ".data").unlink(missing_ok=True)
    return path


def optimise_onnx(spec: ComponentSpec, src: Path, dst: Path) -> Path:
    """ONNX Runtime's offline graph optimisations for its CPU provider; big weights as external data."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    # a source with its weights beside it (exported from a module with more parameters than this graph
    # uses, such as one ImageBind trunk of two) is written the same way: otherwise ONNX Runtime points
    # dst's weights at src's data file, which export_cpu removes
    if onnx_bytes(src) > EXTERNAL_DATA_BYTES or src.with_name(src.name + ".data").exists():
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", dst.name + ".data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    return dst
