"""Every component of `nextgpt-7b` at its real width, from random weights, on every CPU backend.

    python benchmarks/full_width.py [--components sd_unet,llm_decode] [--backends torch-fp32,torch-bf16,onnxruntime-fp32] \\
        [--runs 3] [--json benchmarks/results/full_width.json] [--cache runs/full_width]

No download: each component is built from the preset's configs (diffusers' SD-1.5, AudioLDM and
ZeroScope UNets, VAEs and vocoder, ImageBind huge, the projectors, Vicuna-7B layers) with seeded
random weights, one component at a time, each in a child process of its own so that its memory
is freed before the next (its peak RSS is reported). Its ONNX is exported once into the cache folder
and reused while the preset, the seed and the library versions stay the same.

Per component the backends run interleaved on the same inputs, and every output is compared with
PyTorch fp32 (cosine, relative L2); where their weights would not all fit in memory at once, in
groups, each interleaved with PyTorch fp32 (`timed_in_groups`). A component that fails is reported
and the run goes on. The LLM runs as `--layers` full-width decoder layers (prefill of a prompt, one
decode step over its KV cache), reported per layer and extrapolated to all of its layers. In the same run the machine's limits are measured (a triad's memory bandwidth, peak GEMM
per precision), and each component's achieved fraction of them is plotted as a roofline beside the
JSON and a Markdown table.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import multiprocessing
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: the repository root first, so the packages import
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks.compare_latency import interleaved
from benchmarks.machine import describe_machine, thread_budget
from benchmarks.report import save_figure, save_report
from export.specs import ComponentSpec, component_specs
from runtime.backends import BACKENDS, Engine, OrtEngine, OvEngine, TorchEngine
from runtime.cli import comma_list, make_parser
from runtime.precision import COSINE_TARGET, cosine, rel_l2
from runtime.versions import installed_version
from train.presets import FULL_WIDTH_BENCHMARK, added_tokens, get_preset

SEED = 0
KEY = "key.json"
GB = 1e9
TRIAD_GIB = 1.5  # three arrays of 0.5 GiB: far past any cache, as STREAM asks (4x the last level)
GEMM_SIZE = 4096
# An engine is opened beside the others only where this many bytes per fp32 weight byte fit: its own
# copy, and the one its runtime reads the file into while it compiles. Of the memory available when a
# component starts, this share may be taken (the rest: activations, the allocator's slack).
ENGINE_HOLDS = 2.0
MEMORY_SHARE = 0.8


# ---------------------------------------------------------------------------------------------
# components: what each one is, how it is built, at which sizes it runs


@dataclass(frozen=True)
class Component:
    spec: str  # the export/specs.py component it is
    sizes: Callable[[ComponentSpec], dict[str, int]]  # the axis sizes it runs at


def _opt(spec: ComponentSpec) -> dict[str, int]:
    return spec.point("opt")


def _with(**sizes: str | int) -> Callable[[ComponentSpec], dict[str, int]]:
    """The opt point with some axes at FULL_WIDTH_BENCHMARK's or the profile's sizes (`max`)."""

    def at(spec: ComponentSpec) -> dict[str, int]:
        dims = spec.point("opt")
        for axis, source in sizes.items():
            if isinstance(source, str):
                source = spec.dims[axis][2] if source == "max" else FULL_WIDTH_BENCHMARK[source]
            dims[axis] = source
        if spec.sums:
            for total, terms in spec.sums.items():
                dims[total] = sum(dims[t] for t in terms)
        return dims

    return at


COMPONENTS: dict[str, Component] = {
    "imagebind_image": Component("imagebind_vision", _opt),  # one clip: an image repeated to its 2 frames
    "imagebind_video": Component("imagebind_vision", _with(clips="max")),  # every clip of a video
    "imagebind_audio": Component("imagebind_audio", _opt),
    "llm_prefill": Component("llm", _with(seq="prefill_tokens", past=0)),
    "llm_decode": Component("llm", _with(seq=1, past="decode_past")),
    "projector_image": Component("projector_image", _opt),
    "projector_video": Component("projector_video", _opt),
    "projector_audio": Component("projector_audio", _opt),
    "sd_unet": Component("sd_unet", _opt),  # batch 2: classifier-free guidance
    "sd_vae_decoder": Component("sd_vae_decoder", _opt),
    "zeroscope_unet": Component("zeroscope_unet", _opt),
    "zeroscope_vae_decoder": Component("zeroscope_vae_decoder", _opt),  # every frame of the clip
    "audioldm_unet": Component("audioldm_unet", _opt),
    "audioldm_vae_decoder": Component("audioldm_vae_decoder", _opt),
    "audioldm_vocoder": Component("audioldm_vocoder", _opt),
}
LLM_PARTS = ("llm_prefill", "llm_decode")


def benchmark_config(preset: str, layers: int) -> dict[str, Any]:
    """The preset as the benchmark runs it: its vocabulary with NExT-GPT's added tokens, the LLM at
    `layers` layers, ZeroScope at FULL_WIDTH_BENCHMARK's frame count (the preset's where fewer)."""
    config = get_preset(preset)
    llm = config["llm"]
    config["llm"] = {**llm, "vocab_size": llm["base_vocab_size"] + len(added_tokens()), "layers_in_full": llm["num_hidden_layers"]}
    config["llm"]["num_hidden_layers"] = min(layers, llm["num_hidden_layers"])
    video = config["decoders"]["video"]
    video["frames"] = min(video["frames"], FULL_WIDTH_BENCHMARK["video_frames"])
    return config


def build_module(config: dict[str, Any], spec_name: str) -> Any:
    """A spec's flat-IO module with random weights (caller-seeded), built from its config section alone
    (no checkpoint, none of the other parts), in eval mode."""
    from torch import nn

    from train.components import EncoderWithProjection, ProjectorWithSignalEmbeds, UNetStep, VaeDecode, Vocoder
    from train.decoders import build_network
    from train.imagebind import ImageBindEncoder
    from train.llm import build_llm
    from train.llm_step import LlmStep
    from train.presets import SIGNAL_TOKEN_COUNTS
    from train.projectors import build_input_projection, build_projector

    if spec_name.startswith("imagebind_"):
        encoder, modality = ImageBindEncoder(config["imagebind"]), spec_name.removeprefix("imagebind_")
        for parts in (encoder.modality_preprocessors, encoder.modality_trunks, encoder.modality_heads, encoder.modality_postprocessors):
            del parts[next(m for m in parts if m != modality)]  # the other trunk: not run, so not counted nor held
        encode = encoder.encode_vision if modality == "vision" else encoder.encode_audio
        module = EncoderWithProjection(encode, build_input_projection(config))
        module.encoder = encoder  # a submodule, so that .to() and the parameter count reach the trunk
    elif spec_name == "llm":
        llm = {k: v for k, v in config["llm"].items() if k != "layers_in_full"}
        module = LlmStep(build_llm(llm, llm["vocab_size"]))
    elif spec_name.startswith("projector_"):
        modality = spec_name.removeprefix("projector_")
        count = SIGNAL_TOKEN_COUNTS[modality]
        # the signal tokens' rows of the LLM's embedding: a stand-in model holding only those rows
        owner = SimpleNamespace(
            projectors={modality: build_projector(config, modality)},
            config={"tokens": {"signal_ids": {modality: list(range(count))}}},
            embed_tokens=nn.Embedding(count, config["llm"]["hidden_size"]),
        )
        module = ProjectorWithSignalEmbeds(owner, modality)
    else:
        section = next(d for d in config["decoders"].values() if spec_name.startswith(f"{d['name']}_"))
        part = spec_name.removeprefix(f"{section['name']}_")
        wrap = {"unet": UNetStep, "vae_decoder": VaeDecode, "vocoder": Vocoder}[part]
        module = wrap(build_network(section, part.removesuffix("_decoder")))
    return module.eval()


def weights_fingerprint(module: Any) -> list[float]:
    """Sum and sum of squares of every weight: ties a cached ONNX to the weights a seed draws here."""
    import torch

    with torch.no_grad():
        tensors = [t.double() for t in module.state_dict().values() if t.is_floating_point()]
        return [float(sum(t.sum() for t in tensors)), float(sum((t * t).sum() for t in tensors))]


def count_flops(config: dict[str, Any], spec: ComponentSpec, dims: dict[str, int]) -> dict[str, Any]:
    """FLOPs of one call, counted by torch's FlopCounterMode on the meta device (no weights, no
    compute), attention decomposed into the matmuls it is; the LLM's split into its decoder layers and
    the rest (embedding, final norm, head)."""
    import torch
    from accelerate import init_empty_weights
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with init_empty_weights(include_buffers=True):
        module = build_module(config, spec.name).requires_grad_(False)  # the counter's module tracker hooks leaves that need grad
    feeds = spec.sample(dims, seed=SEED)
    args = [torch.from_numpy(feeds[n]).to("meta") for n in spec.input_names]
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        module(*args)
    total = counter.get_total_flops()
    result: dict[str, Any] = {"flops": int(total)}
    if spec.name == "llm":
        per_module = counter.get_flop_counts()
        layer = next(sum(v.values()) for k, v in per_module.items() if k.endswith("layers.0"))
        result["layer_flops"] = int(layer)
    return result


def parameter_bytes(module: Any) -> dict[str, int]:
    """Bytes of the weights in fp32, and of one LLM decoder layer's where there are layers."""
    out = {"weights": sum(p.numel() * 4 for p in module.parameters())}
    llm = getattr(module, "llm", None)
    if llm is not None and hasattr(llm, "model"):
        out["layer_weights"] = sum(p.numel() * 4 for p in llm.model.layers[0].parameters())
    return out


# ---------------------------------------------------------------------------------------------
# backends: `<runtime label>-<precision>`, each a way to open an engine on a built component


@dataclass
class Built:
    """One component ready to run: its module, spec, manifest-style IO and cached files."""

    spec: ComponentSpec
    module: Any
    io: dict[str, Any]
    folder: Path
    threads: int


@dataclass(frozen=True)
class Backend:
    open: Callable[[Built], Engine]
    precision: str  # what it computes in: the GEMM peak its achieved fraction is taken of
    weight_bytes: int  # bytes per weight it reads per call (autocast reads fp32 weights and casts them)
    files: tuple[str, ...] = ()  # the cached files (FILES) it runs
    computes: str | None = None  # the GEMM peak it is measured against, where not its precision's

    @property
    def peak(self) -> str:
        return self.computes or self.precision


def _ort(name: str) -> Callable[[Built], Engine]:
    return lambda b: OrtEngine(b.folder / FILES[name], b.io, "cpu", b.threads)


def _ov(name: str, precision: str) -> Callable[[Built], Engine]:
    return lambda b: OvEngine(b.folder / FILES[name], b.io, precision, b.threads)


# the files a component is built into: ONNX Runtime's CPU-fused ONNX, the portable ONNX OpenVINO reads,
# the int8 models quantized from each (export/quantize.py, calibrated on seeded samples), and
# OpenVINO's weight-only int8, which needs no calibration (and so fits where calibrating does not)
FILES = {"cpu": "model.opt.onnx", "portable": "model.onnx", "ov_int8": "model.int8.xml", "ort_int8": "model.int8.onnx",
         "ov_int8w": "model.int8w.xml"}
BENCH_BACKENDS: dict[str, Backend] = {
    "torch-fp32": Backend(lambda b: TorchEngine(b.module, b.io), "fp32", 4),
    "torch-bf16": Backend(lambda b: TorchEngine(b.module, b.io, "cpu", "bf16"), "bf16", 4),
    "onnxruntime-fp32": Backend(_ort("cpu"), "fp32", 4, ("cpu",)),
    "onnxruntime-int8": Backend(_ort("ort_int8"), "int8", 1, ("cpu", "ort_int8")),
    "openvino-fp32": Backend(_ov("portable", "fp32"), "fp32", 4, ("portable",)),
    "openvino-bf16": Backend(_ov("portable", "bf16"), "bf16", 2, ("portable",)),
    "openvino-int8": Backend(_ov("ov_int8", "int8"), "int8", 1, ("portable", "ov_int8")),
    # int8 weights, bf16 arithmetic: judged by int8's fidelity target, against the bf16 GEMM peak
    "openvino-int8w": Backend(_ov("ov_int8w", "bf16"), "int8", 1, ("portable", "ov_int8w"), computes="bf16"),
}
REFERENCE = "torch-fp32"
ALL = "all"


def _reference_first(names: list[str]) -> list[str]:
    return [REFERENCE, *(b for b in names if b != REFERENCE)]


_CPU_RUNTIMES = ", ".join(label for label, (_, device) in BACKENDS.items() if device == "cpu")
_backend_labels = comma_list("backend", tuple(BENCH_BACKENDS), ALL, f" (a runtime label of {_CPU_RUNTIMES} and a precision)")


def backend_names(text: str) -> list[str]:
    """`--backends`: labels of BENCH_BACKENDS (or `all`); torch-fp32, the reference of every fidelity, first."""
    return _reference_first(_backend_labels(text))


component_names = comma_list("component", tuple(COMPONENTS), ALL)  # `--components`: names of COMPONENTS, or `all`


# ---------------------------------------------------------------------------------------------
# one component, in a child process of its own


def _cache_key(config: dict[str, Any], spec: ComponentSpec) -> dict[str, Any]:
    libraries = {n: installed_version(n) for n in ("torch", "onnx", "onnxruntime", "onnxscript", "transformers", "diffusers")}
    return {"spec": spec.to_json(), "config": config, "seed": SEED, "libraries": libraries}


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # Linux reports KiB


def _split(row: dict[str, Any]) -> str:
    """The largest group's resident memory, anonymous + file-backed, and the number of groups."""
    most = max(row["groups"], key=lambda g: g["rssanon_gb"])
    return f"; {most['rssanon_gb']:.1f} + {most['rssfile_gb']:.1f} in {len(row['groups'])} group(s)"


def _resident_gb() -> dict[str, float]:
    """The process's resident memory now, split as Linux does: anonymous (what must fit in RAM) and
    file-backed (weight files OpenVINO and ONNX Runtime map, which the kernel can drop and read
    again). Peak RSS counts both, so with every backend open it may pass the RAM without any risk."""
    return {"rssanon_gb": _proc_gb("/proc/self/status", "RssAnon"), "rssfile_gb": _proc_gb("/proc/self/status", "RssFile")}


def _proc_gb(path: str, field: str) -> float:
    """A `field: N kB` line of a /proc file, in GB."""
    line = next(line for line in Path(path).read_text().splitlines() if line.startswith(f"{field}:"))
    return int(line.split()[1]) * 1024 / GB


def _seeded_module(config: dict[str, Any], spec_name: str) -> Any:
    import torch

    torch.manual_seed(SEED)
    return build_module(config, spec_name)


def calibration_samples(config: dict[str, Any], spec: ComponentSpec) -> list[dict[str, np.ndarray]]:
    """Seeded inputs at the sizes every benchmark component of `spec` runs at (the LLM: prefill and
    decode alike); none is the seed-0 input the fidelity is measured on."""
    sizes = [c.sizes(spec) for c in COMPONENTS.values() if c.spec == spec.name]
    count = FULL_WIDTH_BENCHMARK["calibration_samples"]
    return [spec.sample(sizes[i % len(sizes)], seed=SEED + 1 + i) for i in range(count)]


def _make_file(kind: str, spec: ComponentSpec, folder: Path, module: Callable[[], Any], config: dict[str, Any]) -> None:
    """One of FILES; `module()` gives the seeded module."""
    import onnx

    from export.onnx_export import check_portable, export_cpu, export_onnx
    from export.quantize import QUANTIZERS, compress_openvino

    path = folder / FILES[kind]
    if kind == "cpu":
        export_cpu(spec, module(), path)
    elif kind == "portable":  # as exported: OpenVINO folds constants itself, where polygraphy's folding
        # (export_portable, for TensorRT) holds the weights four times over: 22 GB for ZeroScope's UNet
        export_onnx(spec, module(), path, fused_attention=False)
        check_portable(onnx.load(str(path), load_external_data=False), spec.name)
    elif kind == "ov_int8w":
        compress_openvino(folder / FILES["portable"], path)
    else:
        backend, source = ("openvino", "portable") if kind == "ov_int8" else ("onnxruntime", "cpu")
        QUANTIZERS[backend](folder / FILES[source], calibration_samples(config, spec), path, [])


def build_cached(config: dict[str, Any], spec_name: str, folder: Path, kinds: list[str]) -> dict[str, Any]:
    """The component's `kinds` of FILES in `folder` (child process): those the cache key there lists
    are taken as they are; a changed key empties the folder first."""
    import shutil

    from tqdm import tqdm

    spec = component_specs(config)[spec_name]
    key = json.loads(json.dumps(_cache_key(config, spec)))
    cached = json.loads((folder / KEY).read_text()) if (folder / KEY).exists() else {}
    if {k: v for k, v in cached.items() if k not in ("fingerprint", "files")} != key:
        shutil.rmtree(folder, ignore_errors=True)
        cached = {}
    missing = [k for k in FILES if k in kinds and k not in cached.get("files", [])]
    start, made = time.perf_counter(), {}

    def module() -> Any:
        if "module" not in made:
            made["module"] = _seeded_module(config, spec_name)
        return made["module"]

    if missing and not cached:
        folder.mkdir(parents=True, exist_ok=True)
        cached = {**key, "fingerprint": weights_fingerprint(module()), "files": []}
    for kind in tqdm(missing, desc=f"{spec_name}: build", unit="file", leave=False):
        _make_file(kind, spec, folder, module, config)
        cached["files"].append(kind)  # listed once whole: a file cut short by a crash is made again
        (folder / KEY).write_text(json.dumps(cached, indent=1))
    return {"built": missing, "seconds": time.perf_counter() - start, "peak_rss_gb": _peak_rss_gb()}


def fidelity(reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray], precision: str) -> dict[str, Any]:
    """Every output against the reference's: cosine and relative L2; the worst of each, and whether
    the worst cosine meets the precision's target."""
    per = {n: {"cosine": cosine(reference[n], np.asarray(o)), "rel_l2": rel_l2(reference[n], np.asarray(o))} for n, o in outputs.items()}
    worst = min(v["cosine"] for v in per.values())
    target = COSINE_TARGET[precision]
    return {"cosine": worst, "rel_l2": max(v["rel_l2"] for v in per.values()), "target": target, "meets": worst >= target, "outputs": per}


def timed_in_groups(
    built: Built, backends: list[str], feeds: dict[str, np.ndarray], runs: int, budget_gb: float
) -> tuple[dict[str, Any], dict[str, list[float]], list[dict[str, Any]]]:
    """Open the engines one by one and time them interleaved with the reference, in as few groups as
    the memory allows: an engine that may not fit beside those open (ENGINE_HOLDS of the weights, its
    load's copy included, or what the largest engine so far took once run, over `budget_gb` of
    anonymous memory) starts a new group once the open ones are timed and closed. Every engine's
    first call is its warm-up, and its outputs are the ones compared. Returns the outputs, the times
    (the reference's from every group) and the groups."""
    weights_gb = parameter_bytes(built.module)["weights"] / GB
    reference = {REFERENCE: BENCH_BACKENDS[REFERENCE].open(built)}
    outputs = {REFERENCE: reference[REFERENCE].run(feeds)}
    times: dict[str, list[float]] = {b: [] for b in backends}
    groups: list[dict[str, Any]] = []
    group: dict[str, Engine] = {}

    def time_group() -> None:
        calls = {b: (lambda e=e: e.run(feeds)) for b, e in {**reference, **group}.items()}
        for b, t in interleaved(calls, runs, warmup=0).items():
            times[b] += t
        groups.append({"backends": list(calls), **_resident_gb()})
        group.clear()
        gc.collect()  # the closed engines' memory back before the next group opens, and from
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc's heap too, which keeps freed pages by default

    from tqdm import tqdm

    largest = 0.0  # the most an engine opened so far took, with its first call's working memory
    for b in tqdm(backends[1:], desc=f"{built.spec.name}: open and time", unit="backend", leave=False):
        engine = bool(BENCH_BACKENDS[b].files)  # the torch backends share the reference's module
        need = max(ENGINE_HOLDS * weights_gb, largest) if engine else 0.0
        if group and _resident_gb()["rssanon_gb"] + need > budget_gb:
            time_group()
        before = _resident_gb()["rssanon_gb"]
        group[b] = BENCH_BACKENDS[b].open(built)
        # copied: an array a runtime returns may keep its allocator, and so the engine, alive
        outputs[b] = {n: np.array(v, copy=True) for n, v in group[b].run(feeds).items()}
        if engine:  # ONNX Runtime's arena and OpenVINO's requests keep their activations' memory
            largest = max(largest, _resident_gb()["rssanon_gb"] - before)
    time_group()
    return outputs, times, groups


def run_component(config: dict[str, Any], name: str, backends: list[str], runs: int, folder: Path, threads: int) -> dict[str, Any]:
    """Time and compare one component on every backend (child process): interleaved runs after one
    warm-up round, same inputs, in memory-bounded groups (`timed_in_groups`); FLOPs, weight bytes and
    the process's peak RSS beside."""
    thread_budget(threads)
    component = COMPONENTS[name]
    spec = component_specs(config)[component.spec]
    dims = component.sizes(spec)
    module = _seeded_module(config, component.spec)
    key = json.loads((folder / KEY).read_text()) if (folder / KEY).exists() else {}
    if key.get("files") and key.get("fingerprint") != weights_fingerprint(module):
        raise RuntimeError(f"{name}: the weights drawn here differ from those {folder} was built from; remove it to rebuild")
    built = Built(spec, module, {"name": spec.name, **spec.to_json()}, folder, threads)
    feeds = spec.sample(dims, seed=SEED)
    budget = _resident_gb()["rssanon_gb"] + MEMORY_SHARE * _proc_gb("/proc/meminfo", "MemAvailable")
    outputs, times, groups = timed_in_groups(built, backends, feeds, runs, budget)
    result: dict[str, Any] = {
        "spec": spec.name,
        "shape": ", ".join(f"{n} {'x'.join(map(str, feeds[n].shape))}" for n in spec.input_names),
        "dims": dims,
        "seconds": {b: statistics.median(t) for b, t in times.items()},
        "best_seconds": {b: min(t) for b, t in times.items()},
        "fidelity": {b: fidelity(outputs[REFERENCE], outputs[b], BENCH_BACKENDS[b].precision) for b in backends if b != REFERENCE},
        **count_flops(config, spec, dims),
        **parameter_bytes(module),
        "groups": groups,
        "peak_rss_gb": _peak_rss_gb(),
    }
    if spec.name == "llm":
        result.update(llm_layers(result, config["llm"]))
    return result


def llm_layers(result: dict[str, Any], llm: dict[str, Any]) -> dict[str, Any]:
    """Seconds per decoder layer and for the whole depth. The step's time is shared between its
    layers and the rest (embedding, final norm, head) in proportion to their FLOPs, which for a decode
    step are also their weight reads: per layer = t * layer / total, all = t * (L * layer + rest) / total."""
    layers, full = llm["num_hidden_layers"], llm["layers_in_full"]
    total, layer = result["flops"], result["layer_flops"]
    rest = total - layers * layer
    return {
        "layers": layers,
        "layers_in_full": full,
        "per_layer_seconds": {b: t * layer / total for b, t in result["seconds"].items()},
        f"extrapolated_{full}_layers_seconds": {b: t * (full * layer + rest) / total for b, t in result["seconds"].items()},
    }


def in_child(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """`function(*args)` in a fresh process, so every byte it held is returned to the system after."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


# ---------------------------------------------------------------------------------------------
# the machine's limits


def memory_bandwidth(gib: float = TRIAD_GIB, repeats: int = 5) -> float:
    """GB/s of a STREAM triad (a = b + s * c) over three float32 arrays of `gib` / 3 GiB in all, on
    every torch thread; STREAM's count: two arrays read and one written, best of `repeats`."""
    import torch

    n = int(gib * 2**30 / 3 / 4)
    b, c, a = torch.rand(n), torch.rand(n), torch.empty(n)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.add(b, c, alpha=3.0, out=a)
        best = min(best, time.perf_counter() - start)
    return 3 * n * 4 / best / GB


def _best_seconds(call: Callable[[], Any], repeats: int) -> float:
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def gemm_tflops(size: int = GEMM_SIZE, repeats: int = 3, threads: int = 0) -> dict[str, float]:
    """Peak of a square matmul per precision in the fastest library here for it: torch (oneDNN)
    for fp32 and bf16, ONNX Runtime's MatMulInteger (MLAS: VNNI/AMX where present) for int8."""
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    flops = 2 * size**3
    out = {}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        x, w = torch.rand(size, size).to(dtype), torch.rand(size, size).to(dtype)
        out[precision] = flops / _best_seconds(lambda: torch.mm(x, w), repeats) / 1e12
    rng = np.random.default_rng(SEED)
    weight = numpy_helper.from_array(rng.integers(-127, 128, (size, size), dtype=np.int8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["x", "w"], ["y"])],
        "int8_gemm",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [size, size])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [size, size])],
        [weight],
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString(), options)
    x8 = rng.integers(0, 256, (size, size), dtype=np.uint8)
    out["int8"] = flops / _best_seconds(lambda: session.run(None, {"x": x8}), repeats) / 1e12
    return out


def machine_limits(threads: int, triad_gib: float = TRIAD_GIB, gemm_size: int = GEMM_SIZE) -> dict[str, Any]:
    thread_budget(threads)
    return {"memory_gb_s": memory_bandwidth(triad_gib), "gemm_tflops": gemm_tflops(gemm_size, threads=threads), "triad_gib": triad_gib, "gemm_size": gemm_size}


def achieved(name: str, row: dict[str, Any], limits: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per backend: what it reached and its fraction of the bound that binds it. A decode step reads
    every weight once per token: weight bytes / time / bandwidth. The rest: FLOPs / time / the GEMM
    peak of the precision the backend computes in."""
    out = {}
    for b, seconds in row["seconds"].items():
        backend = BENCH_BACKENDS[b]
        tflops = row["flops"] / seconds / 1e12
        entry = {"tflops": tflops, "intensity": row["flops"] / (row["weights"] / 4 * backend.weight_bytes)}
        if name == "llm_decode":
            gb_s = row["weights"] / 4 * backend.weight_bytes / seconds / GB
            entry.update(gb_s=gb_s, fraction=gb_s / limits["memory_gb_s"], bound="memory")
        else:
            entry.update(fraction=tflops / limits["gemm_tflops"][backend.peak], bound=f"{backend.peak} GEMM")
        out[b] = entry
    return out


# ---------------------------------------------------------------------------------------------
# report


def markdown(result: dict[str, Any]) -> str:
    limits, backends = result["limits"], result["backends"]
    peaks = ", ".join(f"{p} {v:.2f} TFLOP/s" for p, v in limits["gemm_tflops"].items())
    lines = [
        f"# Full width ({result['cpu']}, {result['threads']} threads)",
        "",
        f"Limits measured in the same run: memory {limits['memory_gb_s']:.1f} GB/s (triad over {limits['triad_gib']} GiB); GEMM peak {peaks}.",
        "",
        "Seconds per call (median), ratio to PyTorch fp32, worst cosine to PyTorch fp32, achieved fraction of the bound.",
        "",
        "| component | shape | " + " | ".join(backends) + " | peak RSS GB (build / run; anonymous + file-backed, largest group) |",
        "|---|---|" + "---|" * len(backends) + "---|",
    ]
    for name, row in result["components"].items():
        base = row["seconds"][REFERENCE]
        cells = []
        for b in backends:
            fid = row["fidelity"].get(b)
            close = f", cos {fid['cosine']:.5f}{'' if fid['meets'] else ' (misses)'}" if fid else ""
            cells.append(f"{row['seconds'][b]:.3f} s ({base / row['seconds'][b]:.2f}x{close}; {row['achieved'][b]['fraction']:.0%})")
        lines.append(f"| {name} | {row['shape']} | " + " | ".join(cells) + f" | {row['build']['peak_rss_gb']:.1f} / {row['peak_rss_gb']:.1f}{_split(row)} |")
    lines += [f"| {name} | failed: {error} |" for name, error in result["failed"].items()]
    llm = {n: r for n, r in result["components"].items() if n in LLM_PARTS}
    if llm:
        lines += ["", "## LLM per layer and at full depth (seconds)", "", "| step | backend | per layer | all layers |", "|---|---|---|---|"]
        for name, row in llm.items():
            full = row[f"extrapolated_{row['layers_in_full']}_layers_seconds"]
            lines += [f"| {name} ({row['layers']} layers measured) | {b} | {row['per_layer_seconds'][b]:.4f} | {full[b]:.3f} |" for b in backends]
    return "\n".join(lines) + "\n"


def roofline(result: dict[str, Any], path: Path, origin: dict[str, Any]) -> Path:
    """Achieved TFLOP/s against arithmetic intensity (FLOPs per weight byte), under the measured
    bandwidth slope and each precision's GEMM peak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    limits = result["limits"]
    fig, ax = plt.subplots(figsize=(9, 6))
    points = [(n, b, a) for n, row in result["components"].items() for b, a in row["achieved"].items()]
    xs = np.array([a["intensity"] for _, _, a in points] or [1.0])
    bandwidth = limits["memory_gb_s"] / 1e3  # TB/s: TFLOP/s per FLOP/byte
    ridges = [peak / bandwidth for peak in limits["gemm_tflops"].values()]  # where each roof bends
    grid = np.logspace(np.log10(max(min(xs.min(), *ridges) / 4, 1e-2)), np.log10(max(xs.max(), *ridges) * 4), 100)
    for precision, peak in limits["gemm_tflops"].items():
        ax.plot(grid, np.minimum(grid * bandwidth, peak), lw=1, label=f"{precision} peak {peak:.2f} TFLOP/s, {limits['memory_gb_s']:.0f} GB/s")
    markers = dict(zip(result["backends"], "osD^vP*X"))
    for name, backend, a in points:
        ax.scatter(a["intensity"], a["tflops"], marker=markers.get(backend, "o"), s=30)
        ax.annotate(f"{name} {backend}", (a["intensity"], a["tflops"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FLOPs per weight byte")
    ax.set_ylabel("TFLOP/s")
    ax.set_title(f"Roofline, {result['cpu']}, {result['threads']} threads")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, origin)
    plt.close(fig)
    return path


def run(
    components: list[str],
    backends: list[str],
    runs: int,
    cache: Path,
    threads: int,
    preset: str = "nextgpt-7b",
    layers: int = FULL_WIDTH_BENCHMARK["llm_layers"],
    triad_gib: float | None = None,
    gemm_size: int | None = None,
) -> dict[str, Any]:
    """The whole benchmark: the limits (TRIAD_GIB, GEMM_SIZE unless given), then every component built
    (or taken from `cache`) and timed, each in processes of its own."""
    from tqdm import tqdm

    threads = thread_budget(threads)
    config = benchmark_config(preset, layers)
    machine = describe_machine(threads)
    limits = machine_limits(threads, triad_gib or TRIAD_GIB, gemm_size or GEMM_SIZE)
    result: dict[str, Any] = {
        "cpu": machine["cpu"], "cpu_flags": machine["cpu_flags"], "threads": threads, "preset": preset,
        "limits": limits, "backends": backends, "machine": machine, "components": {}, "failed": {},
    }
    for name in tqdm(components, desc="components", unit="component"):
        spec_name = COMPONENTS[name].spec
        folder = cache / preset / spec_name
        kinds = [k for k in FILES if any(k in BENCH_BACKENDS[b].files for b in backends)]
        try:  # a process per file: an export holds several copies of the weights (the LLM's, 19 GB at its width)
            build = [in_child(build_cached, config, spec_name, folder, [k]) for k in kinds]
            row = in_child(run_component, config, name, backends, runs, folder, threads)
        except Exception as e:  # one component's failure (a child killed for memory too) is reported, not the run's end
            result["failed"][name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no message'}"
            continue
        row["build"] = {"built": [k for b in build for k in b["built"]], "seconds": sum(b["seconds"] for b in build),
                        "peak_rss_gb": max((b["peak_rss_gb"] for b in build), default=0.0)}
        row["achieved"] = achieved(name, row, limits)
        result["components"][name] = row
    return result


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    p.add_argument("--components", type=component_names, default=ALL, help=f"comma-separated, of {', '.join(COMPONENTS)}")
    p.add_argument("--backends", type=backend_names, default=ALL, help=f"comma-separated, of {', '.join(BENCH_BACKENDS)}")
    p.add_argument("--runs", type=int, default=3, help="timed runs per backend, after one warm-up round")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/full_width.json"))
    p.add_argument("--cache", type=Path, default=Path("runs/full_width"), help="where the exported ONNX files are kept between runs")
    p.add_argument("--threads", type=int, default=0, help="threads for every backend (0: all cores)")
    p.add_argument("--layers", type=int, default=FULL_WIDTH_BENCHMARK["llm_layers"], help="LLM decoder layers built and timed")
    p.add_argument("--preset", default="nextgpt-7b", help="the sizes (tiny: the same machinery in seconds)")
    p.add_argument("--roofline", type=Path, default=Path("benchmarks/results/full_width_roofline.png"))
    args = p.parse_args(argv)
    if args.runs < 1 or args.layers < 1:
        p.error("--runs and --layers must be at least 1")
    result = run(args.components, args.backends, args.runs, args.cache, args.threads, args.preset, args.layers)
    md = markdown(result)
    origin = save_report(args.json, result, md, None, random_weights=f"{args.preset}, seed {SEED}")
    roofline(result, args.roofline, origin)
    print(md)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
