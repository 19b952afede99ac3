"""Compile every component of a checkpoint into engines described by a manifest.

    python export/build_engines.py --checkpoint train/checkpoints/tiny --out engines/tiny \\
        [--backend onnxruntime|tensorrt|openvino] [--precision fp32|fp16|bf16|int8] [--components a,b] [--force] \\
        [--from-fp32 engines/tiny] [--seed 0]

Each component is exported to a portable ONNX (standard ops: TensorRT, the GPU providers, OpenVINO)
and, for onnxruntime, to a CPU-fused one (the CPU provider); a tensorrt build turns the portable one
into a plan; an openvino build compiles the portable one (fp32, bf16). One fp32 onnxruntime build
serves the onnxruntime, onnxruntime-cuda and onnxruntime-trt backends.
Precisions: onnxruntime fp32 | int8 (CPU), openvino fp32 | bf16 | int8, tensorrt fp32 | fp16 | bf16.
int8 is post-training quantization calibrated on real inputs (export/quantize.py): requests drawn by
--seed from the synthetic world's training split run through the pipeline on an fp32 onnxruntime
build (--from-fp32, else one made in the staging folder), and each component's recorded feeds
calibrate that build's ONNX (NNCF for openvino, static QDQ for onnxruntime). A component whose int8 output misses
the int8 tolerance keeps its layers nearest the output in fp32, doubling their number until it
passes; the manifest names them. A reduced-precision CPU build records the library version and CPU
flags it relies on (`requires`); the runtime refuses it elsewhere.
Every file is run once on sample inputs against PyTorch and recorded in `OUT/manifest.json`.
An existing OUT is written into only with `--force`: then a component whose checkpoint parts,
spec, backend, precision and tools are unchanged is not rebuilt. Work happens in a staging folder:
a failed build leaves the previous engines and manifest exactly as they were.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save_file
from tqdm import tqdm

from export.onnx_export import COMPUTE_DTYPES, computing_in, export_cpu, export_portable
from export.quantize import QUANTIZERS, SAMPLES_FILE, Feeds, calibration_requests, pick_samples, quantizable_layers, record_calibration, save_samples
from export.specs import ComponentSpec, component_specs
from export.tensorrt_build import TIMING_CACHE, build_plan, tensorrt_info
from runtime.backends import Engine, OrtEngine, OvEngine, TrtEngine, labels_for, require_tensorrt, resolve_backend
from runtime.cli import add_backend, add_force, make_parser, refuse_non_empty
from runtime.limits import VERIFY_ATTENTION_BYTES
from runtime.manifest import Build, ManifestError, read_manifest, sha256_tree, write_manifest
from runtime.precision import PRECISIONS, TOLERANCE, compare, rule_for
from runtime.versions import cpu_flags, installed_version, isa_flags, version_number
from train.checkpoint import TOKENIZER, part_path
from train.components import build_component
from train.model import NextGPT, load_checkpoint

BACKENDS = ("onnxruntime", "tensorrt", "openvino")  # the engine kinds a build is made for
BUILD_PRECISIONS = {"onnxruntime": ("fp32", "int8"), "tensorrt": ("fp32", "fp16", "bf16"), "openvino": ("fp32", "bf16", "int8")}
BACKEND_TOOLS = {"openvino": ("openvino", "nncf")}  # beyond TOOLS
# the CPU flags a reduced-precision CPU build's numbers were checked with (one of each group): bf16
# kernels, and int8 dot products (without VNNI ONNX Runtime's u8s8 kernels may saturate)
CPU_FLAGS = {"bf16": [["avx512_bf16", "amx_bf16"]], "int8": [["avx512_vnni", "avx_vnni", "amx_int8"]]}
# recorded calls outside the calibration set an int8 engine is checked on, spread over the recording
# (a denoiser's noisiest steps come first, its last ones last: checking only the last calls passed an
# AudioLDM UNet that is 0.990 on an early one)
VERIFY_CALLS = 12
# int8 components left in fp32 where int8 does not pay, with the measurement that says so. ONNX
# Runtime's tiny LLM: a decode step took 1.25 ms fp32, 1.22 ms QDQ int8, 1.21 ms MatMulNBits 4-bit
# (1 thread, AMD EPYC, docs/engines.md), and QDQ cost image→text 3 and text→image 4 of 60 held-out
# answers (benchmarks/results/evaluation_ort_int8_all.json). OpenVINO int8: the components whose few
# output vectors steer a discrete choice (the vision token the LLM reads, the LLM's greedy tokens, the
# projectors' conditioning) passed cosine >= 0.99 and still cost answers; scored with one component
# fp32 at a time (docs/benchmarks.md), the vision encoder gave back image→text 8 of 60 and video→text
# 5, the image projector text→image 6, the LLM beside the encoder video→text 4 more; with all of them
# fp32 every task is within 1 of fp32. Both: the path that draws a sound (its projector and AudioLDM's
# UNet, VAE decoder and vocoder), whose pitch is one spectral line: on the checkpoint with pitch rows
# int8 cost text→audio 6 (ONNX Runtime) and 8 (OpenVINO) of 60 held-out sounds, and any part of the
# path left int8 moved 1 to 6 of them either way (docs/benchmarks.md).
_STEERS = "int8 passed its cosine check but changed held-out answers (docs/benchmarks.md, OpenVINO int8)"
_PITCH = "int8 passed its cosine check but moved the pitch of held-out sounds (docs/benchmarks.md)"
KEEP_FP32 = {
    ("onnxruntime", "llm"): "int8 does not speed up the tiny LLM's step and changes its greedy answers",
    **{("openvino", name): _STEERS for name in ("imagebind_vision", "llm", "projector_image", "projector_video", "projector_audio")},
    **{(backend, name): _PITCH for backend in ("onnxruntime", "openvino") for name in ("audioldm_unet", "audioldm_vae_decoder", "audioldm_vocoder")},
    ("onnxruntime", "projector_audio"): _PITCH,
}
QUANTIZE_CODE = "export/quantize.py"
BUILT_LABELS = tuple(label for kind in BACKENDS for label in labels_for(kind))
VERIFY_POINTS = ("opt", "min")  # profile points an engine may be checked at against PyTorch
TOOLS = ("torch", "onnx", "onnxruntime", "onnxscript", "transformers", "diffusers")
STAGING = ".staging"
CONSTANTS = "constants.safetensors"


class BuildError(RuntimeError):
    """A component that failed to export, build or verify."""


@dataclass
class Outcome:
    name: str
    status: str  # "built" or "up to date"
    seconds: float
    bytes: int
    max_abs_error: float | None


# The code that turns a checkpoint part into an engine: a change to it makes old engines stale.
EXPORT_CODE = ("export/specs.py", "export/onnx_export.py", "export/tensorrt_build.py", "train/components.py", "train/llm_step.py")
ROOT = Path(__file__).resolve().parents[1]


def tool_versions(backend: str = "onnxruntime") -> dict[str, str]:
    """Every tool an engine depends on; for a TensorRT plan also the GPU architecture it was built for."""
    code = hashlib.sha256(b"".join((ROOT / f).read_bytes() for f in EXPORT_CODE)).hexdigest()
    tools = (*TOOLS, *BACKEND_TOOLS.get(backend, ()))
    versions = {t: installed_version(t) for t in tools}
    missing = [t for t, v in versions.items() if v is None]
    if missing:
        raise BuildError(f"{missing[0]} is not installed; the build needs {', '.join(tools)}")
    if backend == "tensorrt":
        trt = tensorrt_info()
        versions |= {"tensorrt": trt["version"], "gpu_arch": trt["gpu_arch"]}
    return {**versions, "export_code": code}


def checkpoint_part(checkpoint: Path, part: str) -> Path:
    return checkpoint / part if part.startswith("decoders/") else part_path(checkpoint, part)


def requirements(backend: str, precision: str) -> dict[str, Any]:
    """What a CPU build's engines rely on at run time (`runtime.versions.check_requires`): OpenVINO's
    files and compiled-model cache are bound to its version, an int8 ONNX Runtime file's QDQ kernels
    to ONNX Runtime's; bf16 and int8 need the CPU flags they were checked with. fp32 ONNX Runtime and
    GPU builds require nothing (a GPU host runs onnxruntime-gpu at another release)."""
    if backend == "tensorrt" or (backend == "onnxruntime" and precision == "fp32"):
        return {}
    return {"libraries": {backend: version_number(installed_version(backend))}, "cpu_flags": CPU_FLAGS.get(precision, [])}


def build_key(spec: ComponentSpec, part_hashes: dict[str, str], backend: str, precision: str, seed: int = 0) -> str:
    """Everything an engine depends on; equal keys mean the existing engine is still right (an int8
    engine also depends on the calibration seed, on how many calls it is checked on and on whether
    it is kept fp32)."""
    quantize_code = hashlib.sha256((ROOT / QUANTIZE_CODE).read_bytes()).hexdigest()
    calibration = [seed, VERIFY_CALLS, quantize_code, KEEP_FP32.get((backend, spec.name))] if precision == "int8" else None
    blob = json.dumps([spec.to_json(), part_hashes, backend, precision, tool_versions(backend), calibration], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@torch.no_grad()
def verify(
    spec: ComponentSpec, module: torch.nn.Module, engine: Engine, precision: str, at: str = "opt", feeds: Feeds | None = None,
    against_fp32: bool = False,
) -> dict[str, float]:
    """Run the engine and PyTorch on the same sample, every dynamic axis at the profile point `at`
    (or on `feeds`, a recorded real input); raise naming the first output out of tolerance. PyTorch
    computes in the engine's precision where it can (fp16/bf16, as the ONNX does, `computing_in`;
    int8 against fp32), so the check is the precision's one tolerance, met against either that or fp32
    PyTorch; the error against fp32 PyTorch is reported beside it. `against_fp32`: the reference is fp32 PyTorch (OpenVINO bf16 decides
    itself which ops run in bf16, so no PyTorch module computes what it computes). Max abs errors: {"max_abs_error", "max_abs_error_vs_fp32"}."""
    feeds = spec.sample(spec.point(at), seed=1) if feeds is None else feeds
    args = [torch.from_numpy(np.asarray(feeds[n])) for n in spec.input_names]
    reduced = precision in ("fp16", "bf16") and not against_fp32
    reference = computing_in(module, COMPUTE_DTYPES[precision]) if reduced else module
    expected, fp32 = (_outputs(m(*args)) for m in (reference, module))
    got = {n: np.asarray(v) for n, v in engine.run(feeds).items()}
    tol, worst, worst_fp32, cos = TOLERANCE[precision], 0.0, 0.0, 1.0
    for name, ref, full in zip(spec.output_names, expected, fp32):
        ref, out = ref.numpy(), got[name]
        if ref.shape != out.shape:
            raise BuildError(f"{spec.name}: output {name!r} has shape {out.shape}, PyTorch gives {ref.shape}")
        check = compare(ref, out, tol, tol, rule_for(precision))
        # PyTorch's own fp16 on the CPU can be the farther of the two from fp32 (measured on the SD
        # UNet: max 0.044 where the ONNX Runtime engine is 0.0037): agreeing with fp32 as closely counts
        if not check["pass"] and not (reduced and compare(full.numpy(), out, tol, tol, rule_for(precision))["pass"]):
            raise BuildError(
                f"{spec.name}: output {name!r} differs from PyTorch ({precision}) by up to {check['max_abs']:.3g}: {check['reason']}"
            )
        worst, cos = max(worst, check["max_abs"]), min(cos, check["cosine"])
        worst_fp32 = max(worst_fp32, compare(full.numpy(), out, tol, tol)["max_abs"])
    return {"max_abs_error": worst, "max_abs_error_vs_fp32": worst_fp32, "min_cosine": cos}


@torch.no_grad()
def attention_score_bytes(spec: ComponentSpec, module: torch.nn.Module, at: str) -> int:
    """Bytes of the largest attention-score matrix (batch x heads x queries x keys, fp32) one call of
    `module` at the profile point `at` computes: every scaled_dot_product_attention traced on fake
    tensors (shapes only, nothing computed). nn.MultiheadAttention's own kernel (ImageBind's trunks,
    the projectors' transformers) is not seen: a few hundred tokens there, never near the limit."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.overrides import TorchFunctionMode

    largest = 0

    class Scores(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            nonlocal largest
            if func is torch.nn.functional.scaled_dot_product_attention:
                query, key = args[0], args[1]
                largest = max(largest, int(np.prod(query.shape[:-1])) * int(key.shape[-2]) * 4)
            return func(*args, **(kwargs or {}))

    feeds = spec.sample(spec.point(at), seed=1)
    with FakeTensorMode(allow_non_fake_inputs=True) as fake:
        args = [fake.from_tensor(torch.from_numpy(feeds[n])) for n in spec.input_names]
        with Scores():
            module(*args)
    return largest


def portable_point(spec: ComponentSpec, module: torch.nn.Module, at: str) -> str:
    """Where the portable ONNX is checked: at `at`, unless its decomposed attention would hold more
    than VERIFY_ATTENTION_BYTES of scores there; then at min. (The CPU file's fused attention does
    not hold them all, so it is checked at `at` whatever the size.)"""
    if at == "min" or attention_score_bytes(spec, module, at) <= VERIFY_ATTENTION_BYTES:
        return at
    return "min"


def spread(items: list[Feeds], count: int) -> list[Feeds]:
    """At most `count` of `items`, evenly spaced from the first to the last."""
    if len(items) <= count:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, count).round()]


def _outputs(out: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def _open_cpu(backend: str, path: Path, io: dict[str, Any], precision: str) -> Engine:
    return OvEngine(path, io, precision) if backend == "openvino" else OrtEngine(path, io)


def _build_int8(
    spec: ComponentSpec, module: torch.nn.Module, source: Path, calls: list[Feeds], backend: str, seed: int
) -> tuple[Path, dict[str, dict[str, float]], dict[str, Any]]:
    """Quantize `source` on a seeded subset of the component's recorded calls, check it against fp32
    PyTorch on recorded calls outside that subset, and keep the quantizable layers nearest the
    output in fp32 (1, 2, 4, ... of them) until it passes. The engine, its errors, and what was done."""
    if not calls:
        raise BuildError(f"{spec.name}: the calibration requests never ran it; nothing to calibrate int8 on")
    samples = pick_samples(calls, seed)
    folder = source.parent
    save_samples(samples, folder / SAMPLES_FILE)
    chosen = {id(c) for c in samples}
    checks = spread([c for c in calls if id(c) not in chosen], VERIFY_CALLS) or samples[-1:]
    io = {"name": spec.name, **spec.to_json()}
    layers = quantizable_layers(source)
    kept = KEEP_FP32.get((backend, spec.name))
    excluded = list(layers) if kept else []
    out = folder / ("model.int8.xml" if backend == "openvino" else "model.int8.onnx")
    while True:
        QUANTIZERS[backend](source, samples, out, excluded)
        engine = _open_cpu(backend, out, io, "int8")
        try:
            errors = [verify(spec, module, engine, "int8", feeds=feeds) for feeds in checks]
            break
        except BuildError:
            if len(excluded) == len(layers):
                raise
            excluded = layers[len(layers) - min(len(layers), max(1, 2 * len(excluded))):]
    error = {k: (min if k == "min_cosine" else max)(e[k] for e in errors) for k in errors[0]}
    info = {"method": "nncf" if backend == "openvino" else "qdq-static", "seed": seed, "samples": len(samples),
            "calibration": f"{spec.name}/{SAMPLES_FILE}", "verified_on": len(checks), "layers": len(layers), "fp32_layers": excluded,
            **({"kept_fp32": kept} if kept else {})}
    return out, {f"{spec.name}/{out.name}": error}, info


def _fp32_files(spec: ComponentSpec, reference: Build, stage: Path) -> tuple[Path, Path]:
    """The portable and CPU-fused ONNX of the fp32 build an int8 build calibrates on, copied into
    the stage: `fp32_reference` checked they are what exporting this checkpoint here would give."""
    entry = reference.component(spec.name)
    shutil.copytree(reference.root / spec.name, stage / spec.name, dirs_exist_ok=True)
    return stage / entry["onnx"], stage / entry["provider_files"]["cpu"]


def _build_one(
    spec: ComponentSpec, model: NextGPT, stage: Path, backend: str, precision: str, verify_at: str,
    calls: list[Feeds] | None = None, seed: int = 0, reference: Build | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """The component's files (relative to the build) and each verified file's errors (`verify`);
    `calls`: the component's recorded feeds an int8 build calibrates on, `reference` the fp32 build
    they were recorded on, whose ONNX files an int8 or openvino build starts from."""
    module = build_component(model, spec.name)
    io = {"name": spec.name, **spec.to_json()}
    rel = lambda path: f"{spec.name}/{path.name}"  # noqa: E731
    if precision == "int8":
        if reference is None:
            raise BuildError(f"{spec.name}: an int8 build quantizes the fp32 build it calibrated on; none was given")
        portable, cpu = _fp32_files(spec, reference, stage)
        if backend == "openvino":
            cpu.unlink()  # OpenVINO quantizes the portable graph; the CPU-fused one is ONNX Runtime's
            engine, errors, info = _build_int8(spec, module, portable, calls or [], backend, seed)
            return {"onnx": rel(portable), "engine": rel(engine), "quantization": info}, errors
        engine, errors, info = _build_int8(spec, module, cpu, calls or [], backend, seed)
        # int8 QDQ is for the CPU provider only: the GPU providers run fp32 builds
        return {"onnx": rel(portable), "engine": rel(engine), "provider_files": {"cpu": rel(engine)}, "quantization": info}, errors
    if backend == "openvino" and reference is not None:
        portable, cpu = _fp32_files(spec, reference, stage)
        cpu.unlink()
    else:  # an OpenVINO build starts from the fp32 graph: OpenVINO lowers it to the asked precision
        portable = export_portable(spec, module, stage / spec.name / "model.onnx", precision if backend == "tensorrt" else "fp32")
    if backend == "openvino":
        errors = {rel(portable): verify(spec, module, OvEngine(portable, io, precision), precision, verify_at, against_fp32=True)}
        return {"onnx": rel(portable), "engine": rel(portable)}, errors
    if backend == "onnxruntime":
        cpu = export_cpu(spec, module, stage / spec.name / "model.opt.onnx")
        points = {cpu: verify_at, portable: portable_point(spec, module, verify_at)}
        errors = {rel(f): {**verify(spec, module, OrtEngine(f, io), precision, at), "point": at} for f, at in points.items()}
        # which file each ONNX Runtime execution provider runs: the CPU fusions are the CPU provider's only
        files = {"engine": rel(cpu), "provider_files": {"cpu": rel(cpu), "cuda": rel(portable), "tensorrt": rel(portable)}}
        return {"onnx": rel(portable), **files}, errors
    trt = tensorrt_info()
    plan = build_plan(spec, portable, stage / spec.name / f"model.{trt['gpu_arch']}.{precision}.plan", stage / TIMING_CACHE)
    errors = {rel(plan): verify(spec, module, TrtEngine(plan, io), precision, verify_at)}
    return {"onnx": rel(portable), "engine": rel(plan), "tensorrt": trt}, errors


def _component_entry(spec: ComponentSpec, base: dict[str, Any], out: Path, **extra: Any) -> dict[str, Any]:
    folder = out / spec.name
    files = {f.relative_to(out).as_posix(): sha256_tree(f) for f in sorted(folder.rglob("*")) if f.is_file()}
    return {**base, **spec.to_json(), "profile": spec.profile(), "files": files, **extra}


def _write_constants(model: NextGPT, checkpoint: Path, out: Path) -> dict[str, Any]:
    """Unconditional embeddings and the tokenizer: the non-engine things run time needs."""
    tensors = {f"uncond_{m}": c["uncond_embedding"].numpy() for m, c in model.decoders.items()}
    save_file(tensors, str(out / CONSTANTS))
    shutil.copytree(checkpoint / TOKENIZER, out / TOKENIZER, dirs_exist_ok=True)
    files = {CONSTANTS: sha256_tree(out / CONSTANTS), TOKENIZER: sha256_tree(out / TOKENIZER)}
    return {"file": CONSTANTS, "tokenizer": TOKENIZER, "files": files, "tensors": {k: list(v.shape) for k, v in tensors.items()}}


def _old_components(out: Path) -> dict[str, dict[str, Any]]:
    try:
        return read_manifest(out).components
    except ManifestError:
        return {}


def _up_to_date(out: Path, entry: dict[str, Any] | None, key: str, verify_at: str) -> bool:
    if not entry or entry.get("build_key") != key or entry["verify"].get("point", "opt") != verify_at:
        return False
    return all((out / rel).exists() and sha256_tree(out / rel) == digest for rel, digest in entry["files"].items())


def check_backend(backend: str, precision: str) -> None:
    """Refuse an impossible build before any work."""
    if backend not in BACKENDS:
        raise BuildError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise BuildError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if precision not in BUILD_PRECISIONS[backend]:
        makers = [b for b, p in BUILD_PRECISIONS.items() if precision in p]
        raise BuildError(
            f"the {backend} backend builds {' | '.join(BUILD_PRECISIONS[backend])} engines; {precision} is a --backend {' or '.join(makers)} build"
        )
    if backend == "tensorrt":
        require_tensorrt()


def build(
    checkpoint: Path,
    out: Path,
    backend: str = "onnxruntime",
    precision: str = "fp32",
    components: list[str] | None = None,
    progress: bool = True,
    verify_at: str = "opt",
    from_fp32: Path | None = None,
    seed: int = 0,
) -> list[Outcome]:
    """`verify_at`: the profile point (min or opt) at which each engine is compared with PyTorch; min
    where opt does not fit the machine (a full-width UNet's attention at opt needs more RAM than 24 GB).
    `from_fp32`: an fp32 onnxruntime build of the same checkpoint whose ONNX files an openvino or
    int8 build starts from (for int8 by default one is built in the staging folder; openvino
    fp32/bf16 export their own without it); int8 calibrates on it, requests and samples drawn by
    `seed` (`calibration_calls`)."""
    check_backend(backend, precision)
    if verify_at not in VERIFY_POINTS:
        raise BuildError(f"verify_at must be one of {', '.join(VERIFY_POINTS)}, got {verify_at!r}")
    model = load_checkpoint(checkpoint)
    specs = component_specs(model.config)
    unknown = sorted(set(components or []) - set(specs))
    if unknown:
        raise BuildError(f"unknown component {unknown[0]!r}; known: {', '.join(specs)}")
    chosen = [specs[n] for n in (components or specs)]
    out.mkdir(parents=True, exist_ok=True)
    part_hashes = {p: sha256_tree(checkpoint_part(checkpoint, p)) for s in chosen for p in s.parts}
    old = _old_components(out)
    entries = dict(old)
    stage_root = out / STAGING
    shutil.rmtree(stage_root, ignore_errors=True)
    stage_root.mkdir()
    if (out / TIMING_CACHE).exists():  # plans update a staged copy; it replaces the old one on success only
        shutil.copy2(out / TIMING_CACHE, stage_root / TIMING_CACHE)
    outcomes: list[Outcome] = []
    calls: dict[str, list[Feeds]] | None = None  # recorded once, when the first int8 component needs them
    reference: Build | None = None
    try:
        for spec in tqdm(chosen, desc="components", unit="component", disable=not progress):
            parts = {p: part_hashes[p] for p in spec.parts}
            key = build_key(spec, parts, backend, precision, seed)
            if _up_to_date(out, old.get(spec.name), key, verify_at):
                entry = old[spec.name]
                outcomes.append(Outcome(spec.name, "up to date", 0.0, _tree_bytes(out / spec.name), entry["verify"]["max_abs_error"]))
                continue
            start = time.perf_counter()
            if reference is None and (precision == "int8" or (backend == "openvino" and from_fp32 is not None)):
                reference = fp32_reference(checkpoint, specs, stage_root, from_fp32, progress)
            if precision == "int8" and calls is None:
                calls = calibration_calls(reference, seed, progress)
            try:
                files, errors = _build_one(spec, model, stage_root, backend, precision, verify_at, (calls or {}).get(spec.name), seed, reference)
            except BuildError:
                raise
            except Exception as e:  # an exporter or builder failure: name the component, keep the cause
                raise BuildError(f"{spec.name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
            seconds = time.perf_counter() - start
            error = max(e["max_abs_error"] for e in errors.values())
            entries[spec.name] = {
                "backend": backend, "precision": precision, "parts": parts, "build_key": key, **files,
                "requires": requirements(backend, precision),
                "verify": {
                    "max_abs_error": error,
                    "max_abs_error_vs_fp32": max(e["max_abs_error_vs_fp32"] for e in errors.values()),
                    "by_file": errors, "atol": TOLERANCE[precision], "rtol": TOLERANCE[precision], "rule": rule_for(precision),
                    "point": verify_at,
                },
                "build_seconds": round(seconds, 2),
            }
            outcomes.append(Outcome(spec.name, "built", seconds, _tree_bytes(stage_root / spec.name), error))
        _commit(model, checkpoint, out, entries, [o.name for o in outcomes if o.status == "built"], specs, backend)
    finally:
        shutil.rmtree(stage_root, ignore_errors=True)
    return outcomes


def fp32_reference(checkpoint: Path, specs: dict[str, ComponentSpec], stage_root: Path, given: Path | None, progress: bool) -> Build:
    """An fp32 onnxruntime build of this checkpoint: `given` (`--from-fp32`), which must be up to
    date (each engine's build key the one this checkpoint, code and tools give), or one built in the
    staging folder."""
    fp32 = given
    if fp32 is None:
        fp32 = stage_root / "calibration-fp32"
        build(checkpoint, fp32, "onnxruntime", "fp32", progress=progress)
    try:
        reference = read_manifest(fp32)
    except ManifestError as e:
        raise BuildError(f"--from-fp32: {e}") from None
    for name, spec in specs.items():
        entry = reference.components.get(name)
        if entry is None or entry["backend"] != "onnxruntime" or entry["precision"] != "fp32":
            raise BuildError(f"--from-fp32 {fp32}: {name} is not an fp32 onnxruntime engine there")
        parts = {p: sha256_tree(checkpoint_part(checkpoint, p)) for p in spec.parts}
        if entry["build_key"] != build_key(spec, parts, "onnxruntime", "fp32"):
            raise BuildError(f"--from-fp32 {fp32}: its {name} is stale for {checkpoint} (another checkpoint, code or tools); rebuild it")
    return reference


def calibration_calls(reference: Build, seed: int, progress: bool) -> dict[str, list[Feeds]]:
    """Every component's feeds while the fp32 build `reference` answers the calibration requests
    (`export.quantize.calibration_requests`, drawn by `seed`)."""
    from train import synthetic

    world = synthetic.ensure_world(seed, progress=progress)
    return record_calibration(reference.root, calibration_requests(world, seed), progress)


def _commit(
    model: NextGPT, checkpoint: Path, out: Path, entries: dict[str, Any], built: list[str], specs: dict[str, ComponentSpec], backend: str
) -> None:
    """Move staged engines (and the updated timing cache) into place, then write the manifest last."""
    for name in built:
        shutil.rmtree(out / name, ignore_errors=True)
        shutil.move(str(out / STAGING / name), out / name)
        entries[name] = _component_entry(specs[name], entries[name], out)
    if (out / STAGING / TIMING_CACHE).exists():
        (out / STAGING / TIMING_CACHE).replace(out / TIMING_CACHE)
    write_manifest(
        out,
        {
            "checkpoint": {"path": str(checkpoint.resolve()), "config_sha256": sha256_tree(checkpoint / "config.json")},
            "versions": tool_versions(backend),
            "built_on": {"cpu_flags": isa_flags(cpu_flags())},
            "config": model.config,
            "constants": _write_constants(model, checkpoint, out),
            "components": {n: entries[n] for n in specs if n in entries},
        },
    )


def print_table(outcomes: list[Outcome]) -> None:
    print(f"{'component':24s} {'status':10s} {'seconds':>8s} {'MiB':>8s} {'max|err|':>10s}")
    for o in outcomes:
        err = "-" if o.max_abs_error is None else f"{o.max_abs_error:.2e}"
        print(f"{o.name:24s} {o.status:10s} {o.seconds:8.1f} {o.bytes / 2**20:8.2f} {err:>10s}")


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    add_force(p, "write into --out even if it already holds files (a build there is updated: stale components rebuilt)")
    add_backend(p, labels=BUILT_LABELS, help="what the engines are built for (the onnxruntime labels share one build)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--components", help="comma-separated subset (default: all)")
    p.add_argument("--verify-at", choices=VERIFY_POINTS, default="opt", help="profile point of the check against PyTorch")
    p.add_argument(
        "--from-fp32", type=Path,
        help="an up-to-date fp32 onnxruntime build of the same checkpoint: openvino and int8 builds start from its ONNX files, "
        "int8 records its calibration inputs on it (int8 default: build one; openvino fp32/bf16: export anew)",
    )
    p.add_argument("--seed", type=int, default=0, help="int8: draws the calibration requests and samples")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    refuse_non_empty(args.out, args.force)
    chosen = [c.strip() for c in args.components.split(",")] if args.components else None
    try:
        outcomes = build(
            args.checkpoint, args.out, resolve_backend(args.backend)[0], args.precision, chosen, not args.quiet, args.verify_at,
            args.from_fp32, args.seed,
        )
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_table(outcomes)
    fresh = [o.name for o in outcomes if o.status == "built"]
    print(f"{args.out}: {len(fresh)} built, {len(outcomes) - len(fresh)} up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
