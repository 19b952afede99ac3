"""The TensorRT / GPU path, proven on the CPU where it can be: portable ONNX, profiles, provider options.

What needs TensorRT and a GPU (plans, CUDA graphs, the device-resident cache) is in
tests/test_tensorrt_gpu.py, skipped here with the reason.
"""
import copy
import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.machine import backend_engines, computes_in, open_pipeline, thread_budget
from export.build_engines import verify
from export.onnx_export import TENSORRT_OPSETS, export_portable, non_standard_ops
from export.specs import component_specs
from runtime.backends import BackendUnavailable, OrtEngine, check_feeds, ort_providers, torch_component
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


def test_the_support_matrix_is_read():
    ops, opsets = tensorrt_support()
    assert {"Conv", "MatMul", "Softmax", "LayerNormalization"} <= ops and "AffineGrid" not in ops
    assert opsets == TENSORRT_OPSETS


def test_every_portable_onnx_has_only_ops_tensorrt_10_imports(tiny_build):
    out, _ = tiny_build
    supported, (low, high) = tensorrt_support()
    for name, entry in read_manifest(out).components.items():
        model = onnx.load(str(out / entry["onnx"]), load_external_data=False)
        domains = {o.domain: o.version for o in model.opset_import}
        assert set(domains) <= {"", "ai.onnx"}, f"{name}: opset domains {domains}"
        assert low <= domains.get("", domains.get("ai.onnx", 0)) <= high, f"{name}: opset {domains}"
        assert not model.functions, f"{name}: local functions {[f.name for f in model.functions]}"
        ops = {(n.domain, n.op_type) for n in model.graph.node}
        foreign = sorted(f"{d}::{op}" for d, op in ops if d not in ("", "ai.onnx") or op not in supported)
        assert not foreign, f"{name}: {foreign}"


def test_the_manifest_names_each_providers_file(tiny_build):
    out, _ = tiny_build
    for name, entry in read_manifest(out).components.items():
        files = entry["provider_files"]
        assert files == {"cpu": entry["engine"], "cuda": entry["onnx"], "tensorrt": entry["onnx"]}, name
        cpu = onnx.load(str(out / files["cpu"]), load_external_data=False)
        # the CPU file is the one with ONNX Runtime's own fusions; the portable one never has them
        assert any(n.domain == "com.microsoft" for n in cpu.graph.node) or name.endswith(("vae_decoder", "vocoder")), name
        assert set(entry["verify"]["by_file"]) == {files["cpu"], files["cuda"]}


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


def test_tensorrt_provider_options_carry_profile_caches_and_precision(tiny_build, tmp_path):
    out, _ = tiny_build
    entry = read_manifest(out).component("llm")
    providers = ort_providers("tensorrt", {"name": "llm", **entry}, "fp16", tmp_path)
    assert [p if isinstance(p, str) else p[0] for p in providers] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
    ]
    options = providers[0][1]
    for point in ("min", "opt", "max"):
        pairs = dict(item.split(":") for item in options[f"trt_profile_{point}_shapes"].split(","))
        assert pairs == {n: "x".join(map(str, s[point])) for n, s in entry["profile"].items()}
    assert options["trt_profile_max_shapes"].count("past_keys:") == 1
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(tmp_path)
    assert (options["trt_engine_cache_enable"], options["trt_timing_cache_enable"]) == ("1", "1")
    assert (options["trt_fp16_enable"], options["trt_bf16_enable"]) == ("1", "0")
    assert ort_providers("cpu", entry) == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="needs a folder for its engine and timing caches"):
        ort_providers("tensorrt", {"name": "llm", **entry})


class ProfileCheckingLlm:
    """Stands in for the LLM engine to record what the generator asks of it: every call is checked
    against the manifest IO and against the spec's profile (what a TensorRT plan accepts), and answers
    with logits that never stop early, so a request runs to its longest."""

    def __init__(self, spec, entry, token: int) -> None:
        self.spec, self.entry, self.token, self.calls = spec, entry, token, []
        self.profile = spec.profile()
        self.input_names, self.output_names = spec.input_names, spec.output_names

    def run(self, feeds):
        check_feeds(feeds, self.entry["inputs"], self.entry["dims"], "llm")
        for name, shapes in self.profile.items():
            shape = feeds[name].shape
            assert all(lo <= s <= hi for s, lo, hi in zip(shape, shapes["min"], shapes["max"])), (name, shape)
        batch, seq = feeds["input_ids"].shape
        layers, _, heads, past, dim = feeds["past_keys"].shape
        assert past + seq <= self.spec.dims["present"][2], (past, seq)
        self.calls.append((seq, past))
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
    generation = generator.generate(PromptIds(ids, None), max_new_tokens=max_new, temperature=0.0, required=required)
    assert engine.calls[0] == (prompt_len, 0)
    assert len(generation.ids) >= min(max_new, 1)


def test_benchmark_labels_reach_their_backend_and_device(tiny_build):
    build = read_manifest(tiny_build[0])
    labels = ["torch-cuda", "onnxruntime-cuda", "onnxruntime-trt", "tensorrt"]
    engines, unavailable = backend_engines(build, labels, threads=1)
    if engines:
        pytest.skip(f"a GPU runs {sorted(engines)} here: the refusals do not apply")
    assert sorted(unavailable) == sorted(labels)
    for label in labels:  # a label is a backend and a device, never passed on as a backend name
        with pytest.raises(BackendUnavailable, match="CUDA GPU|TensorRT|CUDAExecutionProvider|TensorrtExecutionProvider"):
            open_pipeline(tiny_build[0], label, threads=1)


def test_backends_compute_in_the_asked_precision_only_where_it_applies(tiny_build):
    # an fp16 run asks torch-cuda and the TensorRT provider for fp16; the CPU baseline stays the fp32 reference
    assert [computes_in(b, "fp16") for b in ("torch", "onnxruntime", "onnxruntime-cuda", "tensorrt")] == ["fp32"] * 4
    assert computes_in("torch-cuda", "fp16") == computes_in("onnxruntime-trt", "fp16") == "fp16"
    engines, _ = backend_engines(read_manifest(tiny_build[0]), ["torch", "onnxruntime"], threads=1, precision="fp16")
    assert engines["torch"].precision == engines["onnxruntime"].precision == "fp32"


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
    IO, standard ops only; fp16 runs on ONNX Runtime's CPU provider within the build's fp16 tolerance."""
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
    if precision == "fp16":  # raises, naming the output, beyond atol = rtol = TOLERANCE["fp16"]
        verify(spec, module, OrtEngine(path, {"name": name, **spec.to_json()}), precision)
