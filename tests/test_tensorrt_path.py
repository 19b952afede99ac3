"""The TensorRT / GPU path, proven on the CPU where it can be: portable ONNX, profiles, provider options.

What needs TensorRT and a GPU (plans, CUDA graphs, the device-resident cache) is in
tests/test_tensorrt_gpu.py, skipped here with the reason.
"""
import contextlib
import copy
import dataclasses
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import benchmarks.machine
import export.build_engines
import export.tensorrt_build
import runtime.backends
from benchmarks.machine import BACKENDS, backend_engines, open_pipeline, thread_budget
from export.build_engines import BuildError, verify
from export.onnx_export import FP32_OPS, TENSORRT_OPSETS, computing_in, export_portable, non_standard_ops
from export.specs import component_specs
from export.tensorrt_build import build_plan
from runtime.backends import (
    BackendUnavailable,
    Engines,
    OrtEngine,
    TrtEngine,
    check_feeds,
    choose_profile,
    optimization_profiles,
    ort_providers,
    torch_component,
)
from runtime.generation import LlmGenerator, Tokenizer
from runtime.manifest import read_manifest
from runtime.prompt import PromptIds
from train.components import build_component

OPERATORS = Path(__file__).parent / "data" / "onnx_tensorrt_10.1_operators.md"


def tensorrt_support() -> tuple[set[str], tuple[int, int]]:
    """The ops marked `Y` in onnx-tensorrt's support matrix, and its opset range."""
    text = OPERATORS.read_text()
    ops = set(re.findall(r"^\| (\w+)\s+\| Y\s+\|", text, flags=re.M))
    low, high = re.search(r"inclusive range of opset (\d+) to opset (\d+)", text).groups()
    return ops, (int(low), int(high))


def test_every_portable_onnx_has_only_ops_tensorrt_10_imports(tiny_build):
    out, _ = tiny_build
    supported, (low, high) = tensorrt_support()
    assert (low, high) == TENSORRT_OPSETS  # what export checks every portable ONNX against
    for name, entry in read_manifest(out).components.items():
        model = onnx.load(str(out / entry["onnx"]), load_external_data=False)
        domains = {o.domain: o.version for o in model.opset_import}
        assert set(domains) <= {"", "ai.onnx"}, f"{name}: opset domains {domains}"
        assert low <= domains.get("", domains.get("ai.onnx", 0)) <= high, f"{name}: opset {domains}"
        assert not model.functions, f"{name}: local functions {[f.name for f in model.functions]}"
        ops = {(n.domain, n.op_type) for n in model.graph.node}
        foreign = sorted(f"{d}::{op}" for d, op in ops if d not in ("", "ai.onnx") or op not in supported)
        assert not foreign, f"{name}: {foreign}"


def test_each_provider_opens_the_file_it_can_run(tiny_build, monkeypatch):
    """The CPU provider gets the file with ONNX Runtime's fused contrib ops; the GPU providers, which
    cannot run those, get the portable file."""
    opened = {}
    monkeypatch.setattr(runtime.backends, "OrtEngine", lambda path, io, device, *a, **k: opened.setdefault(device, {}).update({io["name"]: path}))
    build = read_manifest(tiny_build[0])
    for label in ("onnxruntime", "onnxruntime-cuda", "onnxruntime-trt"):
        engines = Engines(build, label)
        for name in build.components:
            engines._open(name)
    for name in build.components:
        fused = {d: any(n.domain == "com.microsoft" for n in onnx.load(str(opened[d][name]), load_external_data=False).graph.node) for d in opened}
        assert not fused["cuda"] and not fused["tensorrt"] and opened["cuda"][name] == opened["tensorrt"][name], name
        assert fused["cpu"] or name.endswith(("vae_decoder", "vocoder")), name  # these two have no attention to fuse


def test_portable_and_cpu_models_agree_on_onnxruntime_cpu(tiny_build, tiny_model):
    out, _ = tiny_build
    build = read_manifest(out)
    for name, spec in component_specs(tiny_model.config).items():
        io = {"name": name, **build.component(name)}
        cpu, portable = (OrtEngine(out / build.component(name)["provider_files"][p], io) for p in ("cpu", "cuda"))
        for point in ("min", "max"):
            feeds = spec.sample(spec.point(point), seed=3)
            a, b = cpu.run(feeds), portable.run(feeds)
            for o in spec.output_names:
                np.testing.assert_allclose(b[o], a[o], atol=1e-4, rtol=1e-4, err_msg=f"{name}.{o} at {point}")


class GpuSession:
    """Stands in for onnxruntime.InferenceSession on a GPU host: it reports the providers and the
    provider options set on the class, as ONNX Runtime reports what it really applied."""

    providers: list[str] = []
    options: dict[str, dict[str, str]] = {}

    def __init__(self, path, options, providers) -> None:
        self.asked = providers

    def get_providers(self) -> list[str]:
        return type(self).providers

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return type(self).options


@pytest.fixture
def gpu_session(monkeypatch, tiny_model):
    """ONNX Runtime with every GPU provider listed as available, sessions as `GpuSession`; and the
    io of a component with its profile, as a manifest gives it."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "InferenceSession", GpuSession)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(GpuSession, "options", {})
    spec = component_specs(tiny_model.config)["projector_image"]
    return {"name": spec.name, **spec.to_json(), "profile": spec.profile()}


@pytest.mark.parametrize(
    ("device", "fallback"),
    [("tensorrt", ["CUDAExecutionProvider", "CPUExecutionProvider"]), ("cuda", ["CPUExecutionProvider"])],
)
def test_a_session_that_fell_back_to_another_provider_is_refused(gpu_session, tmp_path, monkeypatch, device, fallback):
    monkeypatch.setattr(GpuSession, "providers", fallback)
    with pytest.raises(BackendUnavailable, match=f"without {runtime.backends.ORT_PROVIDERS[device][0]} and would run on {', '.join(fallback)}"):
        OrtEngine(tmp_path / "model.onnx", gpu_session, device, cache_dir=tmp_path)
    monkeypatch.setattr(GpuSession, "providers", runtime.backends.ORT_PROVIDERS[device])
    engine = OrtEngine(tmp_path / "model.onnx", gpu_session, device, cache_dir=tmp_path)
    assert engine.providers == runtime.backends.ORT_PROVIDERS[device]


def test_fp32_on_the_cuda_provider_is_ieee_fp32_unless_tf32_is_asked(gpu_session, tmp_path, monkeypatch):
    monkeypatch.setattr(GpuSession, "providers", runtime.backends.ORT_PROVIDERS["cuda"])
    for applied in ("0", "1"):  # what the session reports back
        monkeypatch.setattr(GpuSession, "options", {"CUDAExecutionProvider": {"use_tf32": applied}})
        for precision in ("fp32", "tf32"):
            if (applied == "1") == (precision == "tf32"):
                OrtEngine(tmp_path / "model.onnx", gpu_session, "cuda", precision=precision)
                continue
            with pytest.raises(BackendUnavailable, match=f"applied use_tf32={applied}, not the asked"):
                OrtEngine(tmp_path / "model.onnx", gpu_session, "cuda", precision=precision)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_the_tensorrt_provider_is_never_asked_for_weakly_typed_reduced_precision(gpu_session, tmp_path, monkeypatch, precision):
    monkeypatch.setattr(GpuSession, "providers", runtime.backends.ORT_PROVIDERS["tensorrt"])
    with pytest.raises(ValueError, match=f"computes in fp32, not {precision}; a {precision} engine is a --backend tensorrt"):
        OrtEngine(tmp_path / "model.onnx", gpu_session, "tensorrt", precision=precision, cache_dir=tmp_path)


class ProfileCheckingLlm:
    """Stands in for the LLM engine to record what the generator asks of it: every call is checked
    against the manifest IO and given the optimisation profile a TensorRT plan would run it on (the
    choice TrtEngine makes, refusing a call no profile holds), and answers with logits that never
    stop early, so a request runs to its longest."""

    def __init__(self, spec, entry, token: int) -> None:
        self.spec, self.entry, self.token, self.calls = spec, entry, token, []
        self.profiles = optimization_profiles(entry)
        self.input_names, self.output_names = spec.input_names, spec.output_names

    def run(self, feeds):
        check_feeds(feeds, self.entry["inputs"], self.entry["dims"], "llm")
        profile = list(self.profiles)[choose_profile(self.profiles, {n: feeds[n].shape for n in self.input_names}, "llm")]
        batch, seq = feeds["input_ids"].shape
        layers, _, heads, past, dim = feeds["past_keys"].shape
        assert past + seq <= self.spec.dims["present"][2], (past, seq)
        self.calls.append((seq, past, profile))
        logits = np.zeros((batch, self.entry["outputs"][0]["shape"][1]), np.float32)
        logits[:, self.token] = 1.0
        cache = np.zeros((layers, batch, heads, past + seq, dim), np.float32)
        hidden = np.zeros((batch, seq, self.spec.outputs[1].shape[2]), np.float32)
        return {"logits": logits, "hidden": hidden, "present_keys": cache, "present_values": cache}


@pytest.fixture(scope="module")
def llm_under_test(tiny_build, tiny_model):
    out, _ = tiny_build
    build = read_manifest(out)
    tokenizer = Tokenizer.from_build(build)
    token = tokenizer.encode(" a")[0]  # an ordinary visible token: never the stop marker, never EOS
    engine = ProfileCheckingLlm(component_specs(tiny_model.config)["llm"], build.component("llm"), token)
    return LlmGenerator(engine, build.config, tokenizer), engine


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_llm_profile_covers_every_request_the_runtime_accepts(llm_under_test, data):
    generator, engine = llm_under_test
    context = generator.config["llm"]["max_position_embeddings"]
    runs = sum(len(run) for run in generator.vocab.runs.values())  # what the runtime reserves for forced runs
    prompt_len = data.draw(st.integers(1, context - runs - 1), label="prompt length")
    max_new = data.draw(st.integers(1, context - runs - prompt_len), label="max new tokens")
    required = data.draw(st.lists(st.sampled_from(sorted(generator.vocab.runs)), unique=True), label="outputs")
    ids = [generator.config["tokens"]["bos_id"]] * prompt_len
    engine.calls.clear()
    generation = generator.generate(PromptIds(ids, [], []), max_new_tokens=max_new, temperature=0.0, required=required)
    # the engine never stops the answer: max_new sampled tokens, each but the last fed back one at a
    # time, then every required signal run appended and fed in one chunk with that last token
    appended = sum(len(generator.vocab.runs[m]) for m in required)
    assert len(generation.ids) == max_new + appended
    # each kind of call on its own profile: the forced runs, fed after the cache, on the chunk one
    decode = [(1, prompt_len + i, "decode") for i in range(max_new - 1)]
    chunk = [(1 + appended, prompt_len + max_new - 1, "chunk")] if required else []
    assert engine.calls == [(prompt_len, 0, "prefill"), *decode, *chunk]


def test_benchmark_labels_reach_their_backend_and_device(tiny_build, monkeypatch):
    """Each label opens its own runtime backend and device, as a GPU host would (simulated: a CUDA
    device present, every backend recording what it was asked for)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    asked = []
    monkeypatch.setattr(benchmarks.machine, "Engines", lambda build, label, threads, precision: asked.append(label))
    engines, unavailable = backend_engines(read_manifest(tiny_build[0]), list(BACKENDS), threads=1)
    assert not unavailable and asked == list(BACKENDS)
    import runtime.pipeline

    pipelines = []
    monkeypatch.setattr(runtime.pipeline, "Any2AnyPipeline", lambda build_dir, label, *a, **k: pipelines.append(label))
    for label in BACKENDS:
        open_pipeline(tiny_build[0], label, threads=1)
    assert pipelines == asked


def test_an_fp16_run_leaves_the_cpu_backends_in_fp32(tiny_build, tiny_model):
    # an fp16 run asks the GPU backends for fp16; the CPU ones stay the fp32 reference, bit for bit
    build = read_manifest(tiny_build[0])
    spec = component_specs(tiny_model.config)["projector_image"]
    feeds = spec.sample(spec.point("opt"), seed=0)
    runs = {p: backend_engines(build, ["torch", "onnxruntime"], threads=1, precision=p)[0] for p in ("fp32", "fp16")}
    for label in ("torch", "onnxruntime"):
        got, want = (runs[p][label]["projector_image"].run(feeds)["embeds"] for p in ("fp16", "fp32"))
        np.testing.assert_array_equal(got, want, err_msg=label)


def test_a_torch_component_moves_with_everything_it_computes_with(tiny_model):
    """What broke the first run on a GPU: the ImageBind components reach the encoder through a bound
    method, which the component's own .to() leaves behind. A dtype move takes the same path as a device
    move, so float64 shows here what cuda would."""
    model = copy.deepcopy(tiny_model)
    for name, spec in component_specs(model.config).items():
        module = torch_component(model, name, torch.float64)
        feeds = spec.sample(spec.point("min"), seed=0)
        args = [torch.from_numpy(np.asarray(feeds[n])) for n in spec.input_names]
        with torch.no_grad():
            out = module(*[a.double() if a.is_floating_point() else a for a in args])
        assert all(o.dtype == torch.float64 for o in (out if isinstance(out, tuple) else (out,)) if o.is_floating_point()), name


def test_every_cpu_backend_gets_one_thread_budget():
    import torch

    before = torch.get_num_threads()
    try:
        assert thread_budget(0) == os.cpu_count() == torch.get_num_threads()
        assert thread_budget(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("name", "precision"), [("projector_image", "fp16"), ("projector_image", "bf16"), ("sd_unet", "fp16")])
def test_reduced_precision_lives_in_the_portable_onnx(tiny_model, tmp_path, name, precision):
    """What a strongly typed TensorRT network takes its precision from: weights in that type, float32
    IO, standard ops only; fp16 runs on ONNX Runtime's CPU provider within the build's fp16 tolerance
    (of PyTorch in fp16 or in fp32: on the SD UNet PyTorch's CPU fp16 is the farther from fp32)."""
    spec = component_specs(tiny_model.config)[name]
    module = build_component(tiny_model, name)
    path = export_portable(spec, module, tmp_path / "model.onnx", precision)
    model = onnx.load(str(path))
    initializers = {t.name: t for t in model.graph.initializer}
    weighted = [n.input[1] for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm") and n.input[1] in initializers]
    types = {onnx.TensorProto.DataType.Name(initializers[w].data_type) for w in weighted}
    assert weighted and types == {"FLOAT16" if precision == "fp16" else "BFLOAT16"}, types
    assert {onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type) for v in [*model.graph.input, *model.graph.output]} <= {"FLOAT", "INT64"}
    assert not non_standard_ops(model)
    assert all(p.dtype == torch.float32 for p in module.parameters())  # the checkpoint's module is left as it was
    inferred = onnx.shape_inference.infer_shapes(model)
    kinds = {v.name: onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type) for v in [*inferred.graph.value_info, *model.graph.input]}
    reductions = [(n.op_type, kinds[n.input[0]]) for n in model.graph.node if n.op_type in FP32_OPS]
    assert reductions and all(kind == "FLOAT" for _, kind in reductions), reductions
    if precision == "fp16":  # raises, naming the output, beyond the fp16 tolerance against PyTorch in fp16
        errors = verify(spec, module, OrtEngine(path, {"name": name, **spec.to_json()}), precision)
        assert errors["max_abs_error"] > 0 and errors["max_abs_error_vs_fp32"] > 0, errors  # it does compute in fp16


def test_a_reduced_precision_engine_passes_near_either_reference_and_fails_far_from_both(tiny_model, monkeypatch):
    """fp16 is judged against PyTorch in fp16 or in fp32, whichever the engine is nearer: with a
    reduced-precision reference 0.1 off fp32 (as PyTorch's CPU fp16 can be off, less), an engine
    that gives fp32's answer passes, one that gives the reference's passes, one far from both fails."""
    name = "projector_image"
    spec, module = component_specs(tiny_model.config)[name], build_component(tiny_model, name)
    feeds = spec.sample(spec.point("opt"), seed=1)
    args = [torch.from_numpy(np.asarray(feeds[n])) for n in spec.input_names]

    class Off(torch.nn.Module):
        def forward(self, *xs: torch.Tensor) -> torch.Tensor:
            return module(*xs) + 0.1

    monkeypatch.setattr(export.build_engines, "computing_in", lambda m, dtype: Off())

    class Fixed:
        def __init__(self, shift: float) -> None:
            with torch.no_grad():
                self.out = module(*args).numpy() + shift

        def run(self, _: dict) -> dict:
            return {spec.output_names[0]: self.out}

    for shift in (0.0, 0.1):  # fp32's answer, the reduced reference's
        assert verify(spec, module, Fixed(shift), "fp16", feeds=feeds)["min_cosine"] > 0.99
    with pytest.raises(BuildError, match="differs from PyTorch \\(fp16\\)"):
        verify(spec, module, Fixed(0.3), "fp16", feeds=feeds)


def test_the_rotary_tables_stay_fp32_in_a_reduced_precision_copy(tiny_model):
    llm = build_component(tiny_model, "llm")
    half = computing_in(llm, torch.float16)
    tables = {n: b for n, b in half.named_buffers() if "rotary" in n}
    want = dict(llm.named_buffers())
    assert tables and all(b.dtype == torch.float32 and torch.equal(b, want[n]) for n, b in tables.items()), tables
    assert {p.dtype for p in half.parameters()} == {torch.float16}


def test_no_llm_profile_lets_seq_and_past_exceed_the_context(tiny_model):
    """TensorRT sizes an engine's memory for a profile's largest shapes at once: one box holding
    seq = context beside past = context - 1 asked for about twice the context. Each profile stays
    within it: prefill on an empty cache, decode one token at a time, tuned at a step on a cache."""
    context = tiny_model.config["llm"]["max_position_embeddings"]
    profiles = component_specs(tiny_model.config)["llm"].optimization_profiles()
    assert list(profiles) == ["prefill", "decode", "chunk"]
    for name, shapes in profiles.items():
        seq, past = shapes["input_ids"]["max"][1], shapes["past_keys"]["max"][3]
        assert seq + past <= context, (name, seq, past)
    prefill, decode = profiles["prefill"], profiles["decode"]
    assert prefill["input_ids"]["max"][1] == context and prefill["past_keys"]["max"][3] == 0
    assert decode["input_ids"]["opt"][1] == decode["input_ids"]["max"][1] == 1
    assert 0 < decode["past_keys"]["opt"][3] and decode["past_keys"]["max"][3] == context - 1


def test_a_spec_whose_profile_lets_a_sum_pass_its_range_is_refused(tiny_model):
    llm = component_specs(tiny_model.config)["llm"]
    context = llm.dims["present"][2]
    with pytest.raises(ValueError, match=rf"llm: profile 'all' lets seq \+ past reach {2 * context - 1}, above present's {context}"):
        dataclasses.replace(llm, profiles=None)  # the one box over every axis range


def test_the_manifest_records_each_components_profiles(tiny_build, tiny_model):
    build = read_manifest(tiny_build[0])
    for name, spec in component_specs(tiny_model.config).items():
        assert optimization_profiles(build.component(name)) == spec.optimization_profiles(), name
    assert list(optimization_profiles(build.component("llm"))) == ["prefill", "decode", "chunk"]  # in the plan's order


@pytest.mark.parametrize("name", ["llm", "projector_image"])
def test_the_tensorrt_build_adds_one_profile_per_declared_profile(tiny_model, monkeypatch, tmp_path, name):
    """The builder configuration build_plan hands polygraphy (its own Profile and CreateConfig); the
    ONNX parser and the builder, which need TensorRT and a GPU, are stood in for."""
    import polygraphy.backend.trt as polygraphy_trt

    built = {}

    def engine_bytes(network, config, save_timing_cache):
        built.update(network=network, config=config)
        return b"plan"

    monkeypatch.setattr(export.tensorrt_build, "require_tensorrt", lambda: None)
    monkeypatch.setattr(polygraphy_trt, "network_from_onnx_path", lambda path, strongly_typed: (path, strongly_typed))
    monkeypatch.setattr(polygraphy_trt, "engine_bytes_from_network", engine_bytes)
    spec = component_specs(tiny_model.config)[name]
    build_plan(spec, tmp_path / "model.onnx", tmp_path / "model.plan", tmp_path / "timing.cache")
    config = built["config"]
    assert built["network"] == (str(tmp_path / "model.onnx"), True) and config.tf32 is False
    got = [{n: {"min": list(s.min), "opt": list(s.opt), "max": list(s.max)} for n, s in p.items()} for p in config.profiles]
    assert got == list(spec.optimization_profiles().values())
    assert len(got) == (3 if name == "llm" else 1)
    if name == "llm":
        context = tiny_model.config["llm"]["max_position_embeddings"]
        assert all(p["input_ids"]["max"][1] + p["past_keys"]["max"][3] <= context for p in got)


def test_the_tensorrt_provider_gets_one_profile_that_holds_every_declared_one(tiny_model, tmp_path):
    """ONNX Runtime's TensorRT provider builds every profile it is given but runs on its first (its
    execution context never switches): it gets one box, which must hold every call the plans take."""
    spec = component_specs(tiny_model.config)["llm"]
    (_, options), *_ = ort_providers("tensorrt", {"name": "llm", **spec.to_json(), "profile": spec.profile()}, cache_dir=tmp_path)

    def shapes(point: str) -> list[tuple[str, list[int]]]:
        return [(n, [int(d) for d in s.split("x")]) for n, s in (e.split(":") for e in options[f"trt_profile_{point}_shapes"].split(","))]

    low, high = shapes("min"), shapes("max")
    assert [n for n, _ in low] == [n for n, _ in high] == spec.input_names  # each input once: one profile
    for profile, boxes in spec.optimization_profiles().items():
        for (n, lo), (_, hi) in zip(low, high):
            assert all(a <= b for a, b in zip(lo, boxes[n]["min"])) and all(a >= b for a, b in zip(hi, boxes[n]["max"])), (profile, n)


# --- TrtEngine on a simulated TensorRT: what it checks before any GPU work ------------------------


class SimulatedPlan:
    """A deserialized plan as TrtEngine reads it: IO names, modes and dtypes (numpy dtypes stand in
    for tensorrt.DataType), its optimisation profiles (as polygraphy built them from `profiles`), an
    execution context that counts its launches and, as TensorRT's does, starts on profile 0, switches
    when asked and refuses an input shape outside its current profile."""

    def __init__(self, io, dtypes, profiles) -> None:
        tensors = [*io["inputs"], *io["outputs"]]
        self.modes = {t["name"]: "INPUT" if t in io["inputs"] else "OUTPUT" for t in tensors}
        self.dtypes = {t["name"]: np.dtype(t["dtype"]) for t in tensors} | dtypes
        self.names, self.num_io_tensors, self.launches = list(self.modes), len(self.modes), 0
        self.profiles = list(profiles.values())
        self.num_optimization_profiles = len(self.profiles)
        self.switches: list[int] = []  # profiles the context was switched to, in order
        self.active, self.shapes = 0, {}

    def get_tensor_profile_shape(self, name, index):
        box = self.profiles[index][name]
        return [box["min"], box["opt"], box["max"]]

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return self.modes[name]

    def get_tensor_dtype(self, name):
        return self.dtypes[name]

    def create_execution_context(self):
        def launch(stream):
            self.launches += 1
            return True

        def switch(index, stream):
            self.switches.append(index)
            self.active, self.shapes = index, {}
            return True

        def set_shape(name, shape):
            box = self.profiles[self.active][name]
            if not all(lo <= s <= hi for s, lo, hi in zip(shape, box["min"], box["max"])):
                return False
            self.shapes[name] = shape
            return True

        return SimpleNamespace(execute_async_v3=launch, set_optimization_profile_async=switch, set_input_shape=set_shape)


class SimulatedLogger:
    WARNING = 2

    def __init__(self, level: int) -> None:
        self.level = level


@pytest.fixture
def simulated_tensorrt(monkeypatch, tmp_path, tiny_model):
    """Opens a TrtEngine of a component on a simulated plan: `open_(name, cuda_graph, dtypes, plan_profiles,
    manifest_profiles)`; the plan's profiles are the manifest's unless given."""
    specs = component_specs(tiny_model.config)
    monkeypatch.setattr(torch.cuda, "Stream", lambda: SimpleNamespace(cuda_stream=0))
    monkeypatch.setattr(TrtEngine, "_allocate", lambda self: {})
    (tmp_path / "model.plan").write_bytes(b"plan")

    def open_(name, cuda_graph=None, dtypes=None, plan_profiles=None, manifest_profiles="spec"):
        io = {"name": name, **specs[name].to_json()}
        plan = SimulatedPlan(io, dtypes or {}, plan_profiles or optimization_profiles(io))
        if manifest_profiles is None:
            del io["profiles"]
        trt = SimpleNamespace(
            Logger=SimulatedLogger,
            TensorIOMode=SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"),
            Runtime=lambda logger: SimpleNamespace(deserialize_cuda_engine=lambda data: plan),
            nptype=lambda dtype: dtype,
        )
        monkeypatch.setattr(runtime.backends, "require_tensorrt", lambda: trt)
        return TrtEngine(tmp_path / "model.plan", io, cuda_graph)

    return open_


def test_a_plan_whose_tensor_dtype_is_not_the_manifests_is_refused(simulated_tensorrt):
    simulated_tensorrt("projector_image")
    with pytest.raises(RuntimeError, match="projector_image: the plan's tensor 'embeds' is float16, the manifest's float32"):
        simulated_tensorrt("projector_image", dtypes={"embeds": np.dtype("float16")})


def test_a_cuda_graph_for_the_stateful_llm_is_refused(simulated_tensorrt):
    assert not simulated_tensorrt("llm").use_graph
    with pytest.raises(ValueError, match="llm: a CUDA graph cannot drive a stateful engine"):
        simulated_tensorrt("llm", cuda_graph=True)


def test_each_batch_size_keeps_its_cuda_graph(simulated_tensorrt, monkeypatch):
    """Triton's dynamic batching changes the batch between calls: a graph captured at one size is
    replayed when that size comes back, not captured again."""
    captured = []

    class Graph:
        def __init__(self) -> None:
            self.replays = 0
            captured.append(self)

        def replay(self) -> None:
            self.replays += 1

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", lambda graph, stream=None: contextlib.nullcontext())
    engine = simulated_tensorrt("sd_unet")
    assert engine.use_graph
    for batch in (2, 4, 2, 4, 2):
        engine._launch({"sample": (batch, 4, 8, 8)})
    assert [g.replays for g in captured] == [2, 1]
    assert engine.engine.launches == 4  # an eager run and a capture per batch size, nothing after


def test_each_llm_call_runs_on_the_profile_that_holds_it(simulated_tensorrt, tiny_model):
    """Prefill, decode steps and the chunk of forced runs, each on its profile: the context switches
    only when the profile changes, and a call no profile holds is refused in one line, leaving the
    engine ready for the next call."""
    engine = simulated_tensorrt("llm")
    plan = engine.engine
    spec = component_specs(tiny_model.config)["llm"]
    context = spec.dims["present"][2]

    def call(seq: int, past: int) -> str:
        engine._set_shapes({n: a.shape for n, a in spec.sample({**spec.point("min"), "seq": seq, "past": past}).items()})
        assert plan.shapes["input_ids"] == (1, seq) and plan.shapes["past_keys"][3] == past
        return engine.active_profile

    assert [call(20, 0), call(1, 20), call(1, 21), call(5, 22), call(context, 0), call(1, context - 1)] == [
        "prefill", "decode", "decode", "chunk", "prefill", "decode"
    ]
    assert plan.switches == [1, 2, 0, 1]
    with pytest.raises(ValueError) as refused:
        call(2, context - 1)  # past + seq above the context
    message = str(refused.value)
    assert "\n" not in message and message.startswith("llm: input shapes past_keys (2, 1, ")
    assert "fit no optimisation profile of the engine: prefill takes past_keys" in message
    assert "; decode takes input_ids (1, 1)..(4, 1); chunk takes past_keys" in message
    assert plan.switches == [1, 2, 0, 1]  # refused before the context was touched
    assert call(1, context - 2) == "decode"


def test_a_plan_whose_profiles_are_not_the_manifests_is_refused(simulated_tensorrt, tiny_model):
    one_box = {"all": component_specs(tiny_model.config)["llm"].profile()}  # how plans were built before
    with pytest.raises(RuntimeError, match=r"llm: the plan's 1 optimisation profile\(s\) are not the manifest's \(prefill, decode, chunk\)"):
        simulated_tensorrt("llm", plan_profiles=one_box)
    with pytest.raises(BackendUnavailable, match="llm: the manifest predates per-profile shapes; rebuild it"):
        simulated_tensorrt("llm", manifest_profiles=None)


def test_the_smoke_scripts_llm_calls_each_run_on_their_profile(tiny_build, tmp_path, monkeypatch, capsys):
    """benchmarks/gpu_smoke.py's trt_llm step, its TensorRT plan stood in for by ONNX Runtime choosing
    a profile per call as TrtEngine does: what it feeds is checked (every call on the profile it names,
    the refusal from the profiles), not TensorRT's numbers."""
    import benchmarks.gpu_smoke

    class ProfiledOrtEngine(OrtEngine):
        def __init__(self, path, io, cuda_graph=None) -> None:
            super().__init__(path, io)

        def run(self, feeds):
            shapes = {n: np.shape(feeds[n]) for n in self.input_names}
            profiles = optimization_profiles(self.io)
            self.active_profile = list(profiles)[choose_profile(profiles, shapes, self.io["name"])]
            return super().run(feeds)

    for backend in ("onnxruntime", "tensorrt"):
        (tmp_path / "engines").mkdir(exist_ok=True)
        (tmp_path / "engines" / backend).symlink_to(tiny_build[0])
    monkeypatch.setattr(benchmarks.gpu_smoke, "require_tensorrt", lambda: None)
    monkeypatch.setattr(benchmarks.gpu_smoke, "TrtEngine", ProfiledOrtEngine)
    assert benchmarks.gpu_smoke.main(["trt_llm", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.rsplit(" on profile ", 1)[-1] for line in lines if " on profile " in line] == ["prefill", "prefill", "decode", "decode", "chunk"]
    refused = [line for line in lines if line.startswith("ok refused outside every profile: llm: input shapes ")]
    assert len(refused) == 1 and "fit no optimisation profile" in refused[0], lines
