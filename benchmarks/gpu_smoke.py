"""The GPU path's smoke test, one step per call; scripts/gpu_smoke.sh runs them all in order.

    python -m benchmarks.gpu_smoke STEP [--out benchmarks/results/gpu_smoke] [--checkpoint train/checkpoints/tiny]

Steps: environment (TensorRT, the CUDA device, ONNX Runtime's providers, versions); build (a TensorRT
fp32 build of SMOKE_COMPONENTS beside an ONNX Runtime CPU build of the same, under OUT/engines);
trt_llm (TrtEngine on the LLM against the CPU build, each call on its optimisation profile: the min
point with an empty past and a long prefill on `prefill`, decode steps on the device cache on
`decode`, a refusal of a call no profile holds, a chunk of forced signal runs up to the whole context
on `chunk`, each cache read back);
cuda_graph (sd_unet replayed from CUDA graphs against eager, bit for bit); ort_providers (one session
per ONNX Runtime GPU provider, the providers it really got printed, against the CPU); fp16 (a
strongly typed fp16 TensorRT build of projector_image, its errors against PyTorch in fp16 and fp32).

A step whose library or device is missing prints one line, `SKIP STEP: why`, and exits 0; a failed
check exits 1 naming it. fp32 results are judged at runtime/precision.py's fp32 tolerance.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import describe_machine
from export.build_engines import build
from export.specs import component_specs
from runtime.cli import make_parser
from runtime.backends import ORT_PROVIDERS, BackendUnavailable, Engines, OrtEngine, TrtEngine, require_tensorrt, resolve_backend
from runtime.manifest import Build, read_manifest
from runtime.precision import TOLERANCE, compare
from runtime.versions import installed_version

SMOKE_COMPONENTS = ("projector_image", "sd_unet", "llm")
ROOT = Path(__file__).resolve().parents[1]


class SmokeFailure(RuntimeError):
    """A check of the smoke test that did not hold."""


def agree(where: str, expected: dict[str, Any], got: dict[str, Any], precision: str = "fp32") -> None:
    """Every output of `got` within `precision`'s tolerance of `expected`, or a SmokeFailure naming it."""
    tol = TOLERANCE[precision]
    for name, want in expected.items():
        check = compare(want, got[name], tol, tol)
        if not check["pass"]:
            raise SmokeFailure(f"{where}: {name} {check['reason']} (max abs {check.get('max_abs', float('nan')):.3g})")
    print(f"ok {where}")


def _engines(out: Path, backend: str) -> Build:
    return read_manifest(out / "engines" / backend)


def _io(build_: Build, name: str) -> dict[str, Any]:
    return {"name": name, **build_.component(name)}


def environment(args: argparse.Namespace) -> None:
    import onnxruntime as ort

    machine = describe_machine(0)
    print(f"GPU {machine['gpu'] or 'none'}, CUDA {machine['cuda']}, CPU {machine['cpu']}, Python {machine['python']}")
    for module in (*machine["libraries"], "tensorrt", "polygraphy"):
        print(f"{module}: {installed_version(module) or 'not installed'}")
    print(f"onnxruntime providers available: {', '.join(ort.get_available_providers())}")
    try:
        print(f"TensorRT {require_tensorrt().__version__} usable")
    except BackendUnavailable as e:
        print(f"TensorRT not usable: {e}")


def build_step(args: argparse.Namespace) -> None:
    build(args.checkpoint, args.out / "engines" / "onnxruntime", components=list(SMOKE_COMPONENTS), progress=False)
    print(f"ok onnxruntime CPU build of {', '.join(SMOKE_COMPONENTS)}")
    require_tensorrt()
    for outcome in build(args.checkpoint, args.out / "engines" / "tensorrt", "tensorrt", components=list(SMOKE_COMPONENTS), progress=False):
        print(f"ok tensorrt fp32 {outcome.name}: {outcome.status} in {outcome.seconds:.1f} s, max abs error {outcome.max_abs_error:.3g}")


def trt_llm(args: argparse.Namespace) -> None:
    require_tensorrt()
    gpu, cpu = _engines(args.out, "tensorrt"), _engines(args.out, "onnxruntime")
    plan = TrtEngine(gpu.path(gpu.component("llm")["engine"]), _io(gpu, "llm"))
    ort = OrtEngine(cpu.path(cpu.component("llm")["engine"]), _io(cpu, "llm"))
    spec = component_specs(cpu.config)["llm"]
    context = cpu.config["llm"]["max_position_embeddings"]
    chunk = spec.optimization_profiles()["chunk"]["input_ids"]["max"][1]
    caches: dict[str, dict[str, Any]] = {"plan": {}, "cpu": {}}  # the past each engine is fed next

    def feeds(seq: int) -> dict[str, Any]:
        past = caches["cpu"]["past_keys"].shape[3] if caches["cpu"] else 0
        return spec.sample({**spec.point("min"), "seq": seq, "past": past}, seed=seq + past)

    def call(what: str, seq: int, profile: str, fresh: bool = False) -> None:
        """One call on both engines, the plan on its device cache: its profile checked, every output
        (the cache read back) against the CPU."""
        if fresh:
            caches["plan"], caches["cpu"] = {}, {}
        sample = feeds(seq)
        got, want = plan.run({**sample, **caches["plan"]}), ort.run({**sample, **caches["cpu"]})
        if plan.active_profile != profile:
            raise SmokeFailure(f"llm {what}: ran on profile {plan.active_profile!r}, not {profile!r}")
        past = sample["past_keys"].shape[3]
        agree(f"llm {what} (seq {seq}, past {past}) on profile {profile}", want, {n: np.asarray(v) for n, v in got.items()})
        for engine, out in (("plan", got), ("cpu", want)):
            caches[engine] = {"past_keys": out["present_keys"], "past_values": out["present_values"]}

    call("min point, empty past", 1, "prefill", fresh=True)
    long = context - chunk - 2  # two decode steps and a whole chunk after it fill the context
    call(f"prefill of {long} tokens", long, "prefill", fresh=True)
    call("decode step on the device cache", 1, "decode")
    call("second decode step", 1, "decode")
    try:
        plan.run({**feeds(chunk + 1), **caches["plan"]})
        raise SmokeFailure(f"llm: a call beyond the context (past {context - chunk} + seq {chunk + 1}) was not refused")
    except ValueError as e:
        print(f"ok refused outside every profile: {e}")
    call(f"chunk of {chunk} forced tokens up to the context", chunk, "chunk")


def cuda_graph(args: argparse.Namespace) -> None:
    require_tensorrt()
    gpu = _engines(args.out, "tensorrt")
    path, io = gpu.path(gpu.component("sd_unet")["engine"]), _io(gpu, "sd_unet")
    graphed, eager = TrtEngine(path, io, cuda_graph=True), TrtEngine(path, io, cuda_graph=False)
    spec = component_specs(gpu.config)["sd_unet"]
    for seed in range(3):  # the first call captures, the next ones replay on new inputs
        feeds = spec.sample(spec.point("opt"), seed=seed)
        if not np.array_equal(graphed.run(feeds)["noise_pred"], eager.run(feeds)["noise_pred"]):
            raise SmokeFailure(f"sd_unet: CUDA graph replay differs from eager (seed {seed})")
    print(f"ok sd_unet CUDA graph replay equals eager, {len(graphed.graphs)} graph(s)")


def ort_providers(args: argparse.Namespace) -> None:
    import onnxruntime as ort

    cpu = _engines(args.out, "onnxruntime")
    reference = Engines(cpu, "onnxruntime")
    for label in ("onnxruntime-cuda", "onnxruntime-trt"):
        device = resolve_backend(label)[1]
        provider = ORT_PROVIDERS[device][0]
        if provider not in ort.get_available_providers():
            print(f"SKIP ort_providers {device}: onnxruntime {installed_version('onnxruntime')} has no {provider}")
            continue
        engines = Engines(cpu, label)
        for name in SMOKE_COMPONENTS:
            spec = component_specs(cpu.config)[name]
            feeds = spec.sample(spec.point("opt"), seed=3)
            got = engines[name].run(feeds)
            print(f"{device} {name}: session providers {engines[name].providers}")
            agree(f"onnxruntime {device} {name}", reference[name].run(feeds), got)


def fp16(args: argparse.Namespace) -> None:
    require_tensorrt()
    out = args.out / "engines" / "tensorrt-fp16"
    build(args.checkpoint, out, "tensorrt", "fp16", components=["projector_image"], progress=False)
    check = read_manifest(out).component("projector_image")["verify"]
    print(
        f"ok strongly typed fp16 projector_image: max abs error {check['max_abs_error']:.3g} against PyTorch in fp16 "
        f"({check['rule']}, atol = rtol = {check['atol']:g}), {check['max_abs_error_vs_fp32']:.3g} against fp32"
    )


STEPS: dict[str, Callable[[argparse.Namespace], None]] = {
    "environment": environment,
    "build": build_step,
    "trt_llm": trt_llm,
    "cuda_graph": cuda_graph,
    "ort_providers": ort_providers,
    "fp16": fp16,
}


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    p.add_argument("step", choices=STEPS)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_smoke")
    p.add_argument("--checkpoint", type=Path, default=ROOT / "train" / "checkpoints" / "tiny")
    args = p.parse_args(argv)
    try:
        STEPS[args.step](args)
    except BackendUnavailable as e:
        print(f"SKIP {args.step}: {e}")
    except SmokeFailure as e:
        print(f"FAIL {args.step}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
