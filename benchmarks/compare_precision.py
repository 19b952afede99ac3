"""Numerical parity of a build's backends: components, the LLM's top-1 choice, every route end to end.

    python benchmarks/compare_precision.py --engines engines/tiny [--backends torch,onnxruntime] \
        [--json benchmarks/results/precision.json] [--seed 0] [--quick] [--tolerance C.O=ATOL[,RTOL]] \
        [--precision fp32|fp16|bf16] [--inputs DIR]
    python benchmarks/compare_precision.py --engines engines/tiny --bisect sd_vae_decoder

The first backend in --backends is the baseline; every other one is compared with it. Backends
(named as in benchmarks/machine.py): torch (the checkpoint's PyTorch modules; end to end,
train/reference.py's pipeline), torch-cuda, onnxruntime, onnxruntime-cuda, onnxruntime-trt,
tensorrt. A backend this machine cannot run is reported as unavailable, with the reason, and does
not fail the run; an unavailable baseline does, and so does having no backend to compare with it.

- Components: every output of every component, on random inputs (ComponentSpec.sample, --seed,
  default 0 so that runs repeat) at the min, opt and max profile points: max abs, max rel and mean
  abs error, cosine similarity, pass/fail by benchmarks/metrics.py's `compare` (atol = rtol = 1e-4
  for fp32 engines element by element; 1e-3 on the median for fp16/bf16; --tolerance overrides).
  --precision: what torch-cuda and onnxruntime-trt compute in (default fp32), and so the
  tolerance they are judged by.
- LLM top-1: for each route's prompt, the llm component's last-position argmax after the prefill
  and after each of 8 greedy decode steps, every backend fed the baseline's tokens (teacher
  forcing, so that one early flip does not cascade). A flip between two tokens whose baseline
  logits are within the llm's logits tolerance is counted as a tie, not a failure.
- End to end: each route of train/demo.py on the demo's sample inputs, same seed: token agreement
  (equal ids position by position over the longer answer), same text, and PSNR of each medium
  (images, audio; video: its worst frame) against a 40 dB pass mark.
- --bisect COMPONENT (instead of the above): the portable export (`model.onnx`) in ONNX Runtime on the
  CPU with graph optimisations off, against the engine file the second backend serves
  (`model.opt.onnx` on its execution provider, optimisations on), at the opt point, every float
  tensor exposed as an output and matched by name; names the first node, in topological order,
  whose output leaves tolerance (exit 1), or none (exit 0). onnxruntime backends only; for
  TensorRT use polygraphy's `--trt-outputs mark all`.

--quick: the opt point only, 2 routes, 2 prompts, 2 denoising steps. --json F also writes F's .md.
Exit status: 0 all pass, 1 any failure, 2 bad arguments, a stale build or an unavailable baseline.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks.machine import BACKENDS, add_precision_and_inputs, backend_engines, computes_in, describe_machine, open_pipeline
from benchmarks.metrics import PSNR_PASS_DB, TOLERANCE, compare, psnr, rule_for
from benchmarks.report import save_report
from export.specs import PROFILE_POINTS, component_specs
from runtime.backends import ORT_PROVIDERS, BackendUnavailable, Engines
from runtime.generation import LlmGenerator
from runtime.manifest import Build, ManifestError, read_manifest
from runtime.request import Request, Response
from train.demo import ROUTES, sample_inputs

Overrides = dict[str, tuple[float, float]]
# Per-output (COMPONENT.OUTPUT) or per-component (COMPONENT) (atol, rtol) in place of the precision
# default; --tolerance adds to it. Empty: every output of the tiny build meets the defaults.
OVERRIDES: Overrides = {}
QUICK_ROUTES = ("text_to_image", "image_to_audio")  # between them: every stage of the pipeline
QUICK_STEPS = 2
TOP1_STEPS = 8
COMPONENT_HEADERS = ["backend", "component", "output", "point", "max_abs", "max_rel", "mean_abs", "cosine", "result"]
TOP1_HEADERS = ["backend", "prompt", "agree", "ties", "max_abs_logit", "result"]
ROUTE_HEADERS = ["backend", "route", "tokens", "text", "psnr", "result"]
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}


def parse_tolerance(text: str) -> tuple[str, tuple[float, float]]:
    """COMPONENT.OUTPUT=ATOL[,RTOL] or COMPONENT=ATOL[,RTOL]; RTOL defaults to ATOL."""
    key, sep, values = text.partition("=")
    try:
        numbers = [float(v) for v in values.split(",")]
    except ValueError:
        numbers = []
    if not sep or not key or len(numbers) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected COMPONENT[.OUTPUT]=ATOL[,RTOL], got {text!r}")
    return key, (numbers[0], numbers[-1])


def tolerance(
    build: Build, component: str, output: str, overrides: Overrides, asked: str = "fp32"
) -> tuple[float, float, str]:
    """(atol, rtol, rule) for one output: an override, else the default for the precision the
    candidate computes in (the engine's, or `asked` where that is lower)."""
    built = build.component(component)["precision"]
    precision = asked if built == "fp32" else built
    default = (TOLERANCE[precision], TOLERANCE[precision])
    atol, rtol = overrides.get(f"{component}.{output}", overrides.get(component, default))
    return atol, rtol, rule_for(precision)


def parse_backends(text: str) -> list[str]:
    labels = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in labels if b not in BACKENDS]
    if unknown or len(labels) < 2 or len(set(labels)) != len(labels):
        known = ", ".join(BACKENDS)
        raise argparse.ArgumentTypeError(f"expected two or more distinct backends out of {known}, got {text!r}")
    return labels


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", type=Path, required=True, help="a build folder with manifest.json")
    p.add_argument(
        "--backends",
        type=parse_backends,
        default=parse_backends("torch,onnxruntime"),
        help="comma-separated, baseline first (default: torch,onnxruntime). A backend this machine "
        "cannot run is reported as unavailable and does not fail the run, unless it is the baseline",
    )
    p.add_argument("--json", type=Path, help="write the results here, and the tables to the same name with .md")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs and of every request (default 0)")
    p.add_argument("--quick", action="store_true", help="opt point only, 2 routes, 2 prompts, 2 denoising steps")
    p.add_argument(
        "--tolerance",
        type=parse_tolerance,
        action="append",
        default=[],
        metavar="C[.O]=ATOL[,RTOL]",
        help="tolerance for one output of a component, or all of them (and, with --bisect, its intermediates)",
    )
    add_precision_and_inputs(p)
    p.add_argument(
        "--bisect",
        metavar="COMPONENT",
        help="name the first node of COMPONENT whose output leaves tolerance on the second backend (onnxruntime*)",
    )
    return p.parse_args(argv)


# --- backends -----------------------------------------------------------------------------------


def available_engines(build: Build, labels: list[str], precision: str) -> tuple[dict[str, Engines], dict[str, str]]:
    """benchmarks/machine.py's engines for each backend that runs here, with one engine opened (engines
    open on first use, so a missing execution provider would otherwise show only mid-run), and the
    reason for each that does not; BackendUnavailable when the baseline or every candidate is missing."""
    engines, unavailable = backend_engines(build, labels, precision=precision)
    for label in list(engines):
        try:
            engines[label][next(iter(build.components))]
        except BackendUnavailable as e:
            del engines[label]
            unavailable[label] = str(e)
    if labels[0] in unavailable:
        raise BackendUnavailable(f"the baseline {labels[0]} is unavailable here: {unavailable[labels[0]]}")
    if len(engines) < 2:
        reasons = "; ".join(f"{label}: {why}" for label, why in unavailable.items())
        raise BackendUnavailable(f"no backend to compare with {labels[0]} is available here ({reasons})")
    return engines, unavailable


def pipeline_for(build: Build, label: str, baseline: bool, precision: str) -> Any:
    """The end-to-end pipeline of a backend; for a torch baseline, the reference pipeline itself."""
    if baseline and label == "torch":
        from train.model import load_checkpoint
        from train.reference import ReferencePipeline

        return ReferencePipeline(load_checkpoint(Path(build.data["checkpoint"]["path"])), progress=False)
    return open_pipeline(build.root, label, threads=0, precision=precision)


# --- components ---------------------------------------------------------------------------------


def compare_components(
    build: Build,
    engines: dict[str, Engines],
    baseline: str,
    points: tuple[str, ...],
    seed: int,
    overrides: Overrides,
    precision: str,
) -> list[dict[str, Any]]:
    """One row per candidate, component, profile point and output."""
    specs = component_specs(build.config)
    rows = []
    for name in build.components:
        spec = specs[name]
        for point in points:
            feeds = spec.sample(spec.point(point), seed)
            expected = engines[baseline][name].run(feeds)
            for label, candidate in engines.items():
                if label == baseline:
                    continue
                try:
                    got, error = candidate[name].run(feeds), ""
                except Exception as e:  # noqa: BLE001  an engine that cannot run this point fails it; the run goes on
                    got, error = {}, f"{type(e).__name__}: {e}"
                for output in spec.output_names:
                    atol, rtol, rule = tolerance(build, name, output, overrides, computes_in(label, precision))
                    where = {"backend": label, "component": name, "output": output, "point": point}
                    if output not in got:
                        rows.append({**where, "pass": False, "reason": error})
                        continue
                    result = compare(expected[output], got[output], atol, rtol, rule)
                    rows.append({**where, "shape": list(expected[output].shape), **result})
    return rows


# --- LLM top-1 ----------------------------------------------------------------------------------


def step_logits(
    gen: LlmGenerator, prompt_ids: list[int], steps: int, forced: list[int] | None = None
) -> tuple[np.ndarray, list[int]]:
    """Last-position logits after the prefill and after each of `steps` fed tokens, (steps + 1, V),
    and the tokens fed: the model's own argmax (greedy), or `forced` ones (teacher forcing)."""
    logits, _, cache = gen.prefill(prompt_ids, None, None)
    rows, fed = [logits], []
    for i in range(steps):
        fed.append(int(np.argmax(logits)) if forced is None else forced[i])
        logits, _, cache = gen.decode_one_token(fed[-1], cache)
        rows.append(logits)
    return np.stack(rows), fed


def top1_agreement(expected: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> dict[str, Any]:
    """Argmax agreement of (positions, V) logits; a flip to a token the baseline scores within
    tolerance of its best is a tie (the two are indistinguishable at this precision)."""
    best, picked = expected.argmax(-1), got.argmax(-1)
    top = expected.max(-1)
    gap = top - expected[np.arange(len(expected)), picked]
    agree = best == picked
    tie = ~agree & ((gap <= atol) | (gap <= rtol * np.abs(top)))
    return {
        "positions": len(expected),
        "agree": int(agree.sum()),
        "ties": int(tie.sum()),
        "top1_agreement": float(agree.mean()),
        "max_abs_logit_error": float(np.abs(got - expected).max()),
        "pass": bool((agree | tie).all()),
    }


def compare_top1(
    build: Build, engines: dict[str, Engines], baseline: str, prompts: list[str], overrides: Overrides, precision: str
) -> list[dict[str, Any]]:
    gens = {label: LlmGenerator.from_engines(e) for label, e in engines.items()}
    rows = []
    for prompt in prompts:
        ids = gens[baseline].build_prompt(prompt, False).ids
        expected, tokens = step_logits(gens[baseline], ids, TOP1_STEPS)
        for label, gen in gens.items():
            if label != baseline:
                got, _ = step_logits(gen, ids, TOP1_STEPS, tokens)
                atol, rtol, _ = tolerance(build, "llm", "logits", overrides, computes_in(label, precision))
                rows.append({"backend": label, "prompt": prompt, **top1_agreement(expected, got, atol, rtol)})
    return rows


# --- end to end ---------------------------------------------------------------------------------


def media_psnr(modality: str, expected: np.ndarray, got: np.ndarray) -> float:
    """PSNR in dB (uint8 media: peak 255; audio: peak max |reference|); a video by its worst frame."""
    if modality == "video":
        return min(psnr(e, g) for e, g in zip(expected, got))
    return psnr(expected, got)


def compare_response(expected: Response, got: Response) -> dict[str, Any]:
    longer = max(len(expected.token_ids), len(got.token_ids))
    same = sum(a == b for a, b in zip(expected.token_ids, got.token_ids))
    reasons = []
    if expected.media.keys() != got.media.keys():
        reasons.append(f"media {sorted(expected.media)} vs {sorted(got.media)}")
    scores: dict[str, float | None] = {}
    for modality in sorted(expected.media.keys() & got.media.keys()):
        e, g = expected.media[modality], got.media[modality]
        scores[modality] = media_psnr(modality, e, g) if e.shape == g.shape else None
        if scores[modality] is None:
            reasons.append(f"{modality} shape {e.shape} vs {g.shape}")
        elif scores[modality] < PSNR_PASS_DB:
            reasons.append(f"{modality} {scores[modality]:.1f} dB < {PSNR_PASS_DB:g} dB")
    agreement = same / longer if longer else 1.0
    if agreement < 1.0:
        reasons.append(f"tokens differ from position {same_prefix(expected.token_ids, got.token_ids)}")
    if expected.text != got.text:
        reasons.append("text differs")
    return {
        "tokens": [len(expected.token_ids), len(got.token_ids)],
        "token_agreement": agreement,
        "same_text": expected.text == got.text,
        "psnr_db": scores,
        "pass": not reasons,
        "reason": "; ".join(reasons),
    }


def same_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def route_request(route: str, files: dict[str, Path], seed: int, steps: int | None) -> Request:
    prompt, inputs, output = ROUTES[route]
    return Request(prompt, {m: files[m] for m in inputs}, output=output, seed=seed, steps=steps)


def compare_routes(
    build: Build,
    labels: list[str],
    routes: list[str],
    seed: int,
    steps: int | None,
    precision: str,
    inputs: Path | None = None,
) -> list[dict[str, Any]]:
    """The baseline answers every route first and is released, then each candidate answers them."""
    with tempfile.TemporaryDirectory(prefix="precision-inputs-") as tmp:
        files = sample_inputs(inputs, Path(tmp), build.config["imagebind"]["audio"]["sample_rate"])
        requests = {r: route_request(r, files, seed, steps) for r in routes}
        reference = pipeline_for(build, labels[0], baseline=True, precision=precision)
        expected = {r: reference(req) for r, req in requests.items()}
        del reference
        rows = []
        for label in labels[1:]:
            pipeline = pipeline_for(build, label, baseline=False, precision=precision)
            for route, req in requests.items():
                rows.append({"backend": label, "route": route, **compare_response(expected[route], pipeline(req))})
    return rows


# --- bisect -------------------------------------------------------------------------------------


def expose_intermediates(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every float node output whose type is known made a graph output."""
    model = onnx.shape_inference.infer_shapes(model)
    typed = {v.name: v for v in model.graph.value_info if v.type.tensor_type.elem_type in FLOAT_TYPES}
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        model.graph.output.extend(typed[n] for n in node.output if n in typed and n not in outputs)
    return model


def run_exposed(
    path: Path, feeds: dict[str, np.ndarray], providers: list[str], level: ort.GraphOptimizationLevel
) -> tuple[dict[str, np.ndarray], dict[str, onnx.NodeProto]]:
    """Every exposed tensor of the ONNX file at `path` on the given providers and optimisation
    level, and the node that produces each tensor name."""
    model = expose_intermediates(onnx.load(str(path)))
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
    names = [o.name for o in session.get_outputs()]
    producers = {name: node for node in model.graph.node for name in node.output}
    return dict(zip(names, session.run(names, feeds))), producers


def bisect(build: Build, component: str, candidate: str, seed: int, overrides: Overrides) -> dict[str, Any]:
    """The first node, in the portable export's topological order, whose output leaves tolerance.

    What is compared, at the opt point: the portable export (`model.onnx`) in ONNX Runtime on the CPU
    with every graph optimisation off, as the reference; against the file the candidate's provider
    serves (on the CPU `model.opt.onnx`, already fused offline) on the candidate's execution provider at
    ONNX Runtime's default level, as OrtEngine runs it. Every float tensor with a known type is
    made a graph output in both, and tensors are matched by name: most names survive the offline
    fusions (a fused node keeps its last output's name); the others are skipped. Exposing a tensor
    keeps load-time optimisations from fusing across it, so this finds where rounding or a fused
    kernel first differs, not the effect of load-time fusions. The PyTorch module is not part of
    it: the component table compares it with the engine's outputs. Each file is loaded whole and
    handed to ONNX Runtime as bytes, so this is for models below protobuf's 2 GiB.
    """
    backend, device = BACKENDS[candidate]
    if backend != "onnxruntime":
        raise BackendUnavailable(
            f"--bisect compares onnxruntime engines; for {candidate} run polygraphy with every tensor marked: "
            "polygraphy run model.onnx --trt --onnxrt --trt-outputs mark all --onnx-outputs mark all"
        )
    if ORT_PROVIDERS[device][0] not in ort.get_available_providers():  # ORT would fall back to the CPU silently
        raise BackendUnavailable(f"{candidate}: onnxruntime has no {ORT_PROVIDERS[device][0]} here")
    entry = build.component(component)
    spec = component_specs(build.config)[component]
    feeds = spec.sample(spec.point("opt"), seed)
    levels = ort.GraphOptimizationLevel
    expected, producers = run_exposed(build.path(entry["onnx"]), feeds, ORT_PROVIDERS["cpu"], levels.ORT_DISABLE_ALL)
    served = entry["provider_files"][device]
    got, served_by = run_exposed(build.path(served), feeds, ORT_PROVIDERS[device], levels.ORT_ENABLE_ALL)
    shared = [n for n in producers if n in expected and n in got]  # producers: in the portable graph's node order
    result: dict[str, Any] = {
        "component": component,
        "backend": candidate,
        "reference": f"{entry['onnx']} on CPUExecutionProvider, ORT_DISABLE_ALL",
        "candidate": f"{served} on {ORT_PROVIDERS[device][0]}, ORT_ENABLE_ALL",
        "point": "opt",
        "tensors": len(expected),
        "compared": len(shared),
        "first_failure": None,
    }
    for name in shared:
        atol, rtol, rule = tolerance(build, component, name, overrides)
        check = compare(expected[name], got[name], atol, rtol, rule)
        if not check["pass"]:
            node = producers[name]
            served = served_by[name]
            result["first_failure"] = {
                "node": node.name,
                "op_type": node.op_type,
                "tensor": name,
                "candidate_node": served.name,
                "candidate_op_type": served.op_type,
                **check,
            }
            break
    return result


def bisect_text(result: dict[str, Any]) -> str:
    lines = [
        f"bisect {result['component']} ({result['backend']}): {result['candidate']}",
        f"  vs {result['reference']}, {result['point']} point",
        f"  {result['compared']} of the reference's {result['tensors']} exposed tensors matched by name",
    ]
    hit = result["first_failure"]
    if hit is None:
        lines.append("  every compared tensor is within tolerance")
    else:
        lines.append(
            f"  first out of tolerance: node {hit['node']!r} ({hit['op_type']}) -> {hit['tensor']!r}, computed by "
            f"{hit['candidate_node']!r} ({hit['candidate_op_type']}) in the engine: max_abs {hit['max_abs']:.3e}, "
            f"max_rel {hit['max_rel']:.3e}, cosine {hit['cosine']:.9f} ({hit['reason']})"
        )
    return "\n".join(lines)


# --- report -------------------------------------------------------------------------------------


def metadata(
    args: argparse.Namespace, build: Build, backends: list[str], unavailable: dict[str, str], overrides: Overrides
) -> dict[str, Any]:
    """What a reader needs to trust or repeat the numbers."""
    return {
        "command": " ".join(["python", "benchmarks/compare_precision.py", *args.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "engines": str(args.engines),
        "baseline": args.backends[0],
        "backends": backends,
        "unavailable": unavailable,
        "seed": args.seed,
        "precision": args.precision,
        "quick": args.quick,
        "tolerances": {"defaults": TOLERANCE, "overrides": {k: list(v) for k, v in overrides.items()}},
        "machine": describe_machine(0),  # CPU model, cores, threads, GPU, library versions
        "build_versions": build.data["versions"],
    }


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3e}"
    return "" if value is None else str(value)


def table(headers: list[str], rows: list[list[Any]], markdown: bool) -> str:
    cells = [[fmt(v) for v in row] for row in rows]
    if markdown:
        lines = [headers, ["---"] * len(headers), *cells]
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)
    widths = [max(len(r[i]) for r in [headers, *cells]) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [headers, *cells])


def verdict(row: dict[str, Any]) -> str:
    return "PASS" if row["pass"] else f"FAIL {row.get('reason', '')}".rstrip()


def component_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    keys = ("backend", "component", "output", "point", "max_abs", "max_rel", "mean_abs")
    # Errors are absent from a row whose engine raised; cosine gets more digits than .3e shows.
    return [[*(r.get(k) for k in keys), f"{r['cosine']:.9f}" if "cosine" in r else None, verdict(r)] for r in rows]


def top1_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [r["backend"], r["prompt"], f"{r['agree']}/{r['positions']}", r["ties"], r["max_abs_logit_error"], verdict(r)]
        for r in rows
    ]


def route_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    def scores(r: dict[str, Any]) -> str:
        return ", ".join(f"{m} {'n/a' if v is None else f'{v:.1f} dB'}" for m, v in r["psnr_db"].items())

    return [
        [r["backend"], r["route"], f"{r['token_agreement']:.0%} of {max(r['tokens'])}",
         "same" if r["same_text"] else "differs", scores(r), verdict(r)]
        for r in rows
    ]


def preamble(results: dict[str, Any]) -> str:
    """The .md file's title: how the numbers were made, and where."""
    m = results["machine"]
    libraries = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v != "not installed")
    return (
        f"# Precision: {', '.join(results['backends'][1:])} vs {results['baseline']}\n\n"
        f"`{results['command']}` on {results['date']}: {m['cpu']}, {m['threads']} threads, GPU {m['gpu'] or 'none'}; "
        f"{libraries}. Seed {results['seed']}, points {'/'.join(results['points'])}.\n\n"
    )


def report(results: dict[str, Any], markdown: bool) -> str:
    """The tables: unavailable backends, components, LLM top-1, end to end, then the verdict."""
    down = [[label, reason] for label, reason in results["unavailable"].items()]
    s = results["summary"]
    parts = [
        ("Unavailable backends", ["backend", "reason"], down),
        (f"Components vs {results['baseline']}", COMPONENT_HEADERS, component_rows(results["components"])),
        ("LLM top-1, teacher-forced", TOP1_HEADERS, top1_rows(results["top1"])),
        ("End to end", ROUTE_HEADERS, route_rows(results["end_to_end"])),
    ]
    heading = "## {}\n\n{}" if markdown else "{}\n{}"
    texts = [heading.format(title, table(headers, rows, markdown)) for title, headers, rows in parts if rows]
    verdict_line = f"{s['failures']} failure(s) in {s['checks']} checks: {'PASS' if s['pass'] else 'FAIL'}"
    texts.append(heading.format("Summary", verdict_line))
    return "\n\n".join(texts) + "\n"


def jsonable(value: Any) -> Any:
    """Strict JSON: infinities (identical media's PSNR) become the strings "inf"/"-inf", NaN null."""
    if isinstance(value, float) and not np.isfinite(value):
        return None if np.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


# --- main ---------------------------------------------------------------------------------------


def run_checks(
    build: Build, args: argparse.Namespace, engines: dict[str, Engines], overrides: Overrides
) -> dict[str, Any]:
    labels = list(engines)
    routes = list(QUICK_ROUTES if args.quick else ROUTES)
    points = ("opt",) if args.quick else PROFILE_POINTS
    steps = QUICK_STEPS if args.quick else None
    components = compare_components(build, engines, labels[0], points, args.seed, overrides, args.precision)
    top1 = compare_top1(build, engines, labels[0], [ROUTES[r][0] for r in routes], overrides, args.precision)
    engines.clear()  # the pipelines open their own: do not hold every engine twice
    e2e = compare_routes(build, labels, routes, args.seed, steps, args.precision, args.inputs)
    failures = sum(not r["pass"] for r in components + top1 + e2e)
    return {
        "points": list(points),
        "routes": routes,
        "steps": steps,
        "components": components,
        "top1": top1,
        "end_to_end": e2e,
        "summary": {"checks": len(components + top1 + e2e), "failures": failures, "pass": failures == 0},
    }


def run_bisect(build: Build, args: argparse.Namespace, overrides: Overrides) -> int:
    candidate = args.backends[1]
    result = bisect(build, args.bisect, candidate, args.seed, overrides)
    print(bisect_text(result))
    if args.json:
        meta = metadata(args, build, [candidate], {}, overrides)
        save_report(args.json, jsonable({**meta, "bisect": result}), None, args.engines)
    return 1 if result["first_failure"] else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    overrides = {**OVERRIDES, **dict(args.tolerance)}
    try:
        build = read_manifest(args.engines)
        if args.bisect or any(BACKENDS[b][0] != "torch" for b in args.backends):
            build.verify_files()  # a torch-only comparison reads the checkpoint, not the engine files
        if args.bisect:
            return run_bisect(build, args, overrides)
        engines, unavailable = available_engines(build, args.backends, args.precision)
        meta = metadata(args, build, list(engines), unavailable, overrides)
        results = {**meta, **run_checks(build, args, engines, overrides)}
    except (ManifestError, BackendUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report(results, markdown=False), end="")
    if args.json:
        save_report(args.json, jsonable(results), preamble(results) + report(results, markdown=True), args.engines)
    return 0 if results["summary"]["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
