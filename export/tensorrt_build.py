"""ONNX -> TensorRT plan with the spec's optimisation profile, a precision and a timing cache.

Written against TensorRT's documented Python API (10.x). On a machine without TensorRT or a GPU
`require_tensorrt` stops the build before any work, naming what is missing.
"""
from __future__ import annotations

from pathlib import Path

from export.specs import ComponentSpec
from runtime.backends import require_tensorrt

PRECISIONS = ("fp32", "fp16", "bf16")


def gpu_arch() -> str:
    """`sm90` and friends: a plan only runs on the GPU architecture it was built for."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"sm{major}{minor}"


def build_plan(spec: ComponentSpec, onnx_path: Path, plan_path: Path, precision: str, timing_cache: Path) -> Path:
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{spec.name}: TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    profile = builder.create_optimization_profile()
    for name, shapes in spec.profile().items():
        profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"{spec.name}: TensorRT failed to build an engine from {onnx_path}")
    timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
    plan_path.write_bytes(memoryview(plan))
    return plan_path
