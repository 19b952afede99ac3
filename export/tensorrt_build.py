"""Portable ONNX -> TensorRT plan through polygraphy's TensorRT backend, as NVIDIA's demo/Diffusion builds.

- The network is strongly typed: the ONNX carries the precision (`export.onnx_export.export_portable`
  computes in fp16/bf16 behind float32 IO), and TensorRT keeps every tensor in the type the graph
  gives it. This is the form TensorRT 10 documents for reduced precision (`NetworkDefinitionCreationFlag.
  STRONGLY_TYPED`) and the only one TensorRT 11 keeps: its 10.x -> 11.x migration guide lists
  `BuilderFlag.FP16` and `BuilderFlag.BF16` as removed, replaced by strong typing
  (docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html).
  demo/Diffusion builds with `--strongly-typed` for the same reason.
- TF32 stays off, so an fp32 plan is verified against PyTorch at the fp32 tolerance.
- One optimisation profile per profile the spec declares, in its order (the LLM's prefill, decode and
  chunk; one for every other component), each the (min, opt, max) shape of every input. The runtime
  (`runtime.backends.TrtEngine`) runs a call on the first profile that holds it.
- The timing cache is read from and written back to the build's staging folder; polygraphy checks
  every builder result and raises on a parse or build failure.

On a machine without TensorRT or a GPU `require_tensorrt` stops the build before any work.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from export.specs import ComponentSpec
from runtime.backends import require_tensorrt

TIMING_CACHE = "timing.cache"


def tensorrt_info() -> dict[str, Any]:
    """TensorRT's version and the GPU a plan is built for: a plan only runs on that architecture."""
    trt = require_tensorrt()
    import torch

    major, minor = torch.cuda.get_device_capability()
    return {"version": trt.__version__, "gpu_arch": f"sm{major}{minor}", "gpu": torch.cuda.get_device_name()}


def build_plan(spec: ComponentSpec, onnx_path: Path, plan_path: Path, timing_cache: Path) -> Path:
    """A serialized plan for `spec`'s optimisation profiles; the precision is the ONNX's own (strongly typed)."""
    require_tensorrt()
    from polygraphy.backend.trt import CreateConfig, Profile, engine_bytes_from_network, network_from_onnx_path

    profiles = []
    for inputs in spec.optimization_profiles().values():
        profile = Profile()
        for name, shapes in inputs.items():
            profile.add(name, min=shapes["min"], opt=shapes["opt"], max=shapes["max"])
        profiles.append(profile)
    network = network_from_onnx_path(str(onnx_path), strongly_typed=True)
    config = CreateConfig(
        profiles=profiles,
        tf32=False,
        load_timing_cache=str(timing_cache) if timing_cache.exists() else None,
    )
    plan = engine_bytes_from_network(network, config=config, save_timing_cache=str(timing_cache))
    if not plan:
        raise RuntimeError(f"{spec.name}: TensorRT built no engine from {onnx_path}")
    plan_path.write_bytes(plan)
    return plan_path
