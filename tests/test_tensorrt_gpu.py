"""TensorRT plans and the GPU providers, for a machine with a CUDA GPU (and TensorRT where marked).

Skipped elsewhere with the reason. One TensorRT build of the tiny checkpoint per module (fp32), so
every plan is compared with ONNX Runtime on the CPU, the LLM's generation with the CPU path, and CUDA
graph replay with eager execution.
"""
import numpy as np
import pytest

from export.build_engines import build
from export.specs import component_specs
from runtime.backends import ORT_PROVIDERS, BackendUnavailable, DeviceTensor, Engines, OrtEngine, TrtEngine, require_tensorrt, resolve_backend
from runtime.generation import LlmGenerator
from runtime.manifest import read_manifest
from runtime.precision import TOLERANCE, compare


def _missing(check) -> str | None:
    try:
        check()
    except BackendUnavailable as e:
        return str(e)
    return None


def _cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("no CUDA GPU (torch.cuda.is_available() is False)")


NO_TENSORRT = _missing(require_tensorrt)
NO_CUDA = _missing(_cuda)
needs_tensorrt = pytest.mark.skipif(NO_TENSORRT is not None, reason=f"needs TensorRT and a CUDA GPU: {NO_TENSORRT}")
needs_cuda = pytest.mark.skipif(NO_CUDA is not None, reason=f"needs a CUDA GPU: {NO_CUDA}")


@pytest.fixture(scope="module")
def trt_build(tmp_path_factory, tiny_dir):
    out = tmp_path_factory.mktemp("trt") / "tiny"
    build(tiny_dir, out, backend="tensorrt", progress=False)
    return out


def _plan(build_dir, name, **options):
    """The build's TensorRT engine of one component, opened as the runtime opens it."""
    build = read_manifest(build_dir)
    return TrtEngine(build.path(build.component(name)["engine"]), {"name": name, **build.component(name)}, **options)


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_tensorrt
@pytest.mark.parametrize("point", ["min", "opt", "max"])
def test_every_plan_matches_onnxruntime(trt_build, tiny_build, tiny_model, point):
    cpu = read_manifest(tiny_build[0])
    for name, spec in component_specs(tiny_model.config).items():
        plan = _plan(trt_build, name, cuda_graph=False)
        ort = OrtEngine(cpu.path(cpu.component(name)["onnx"]), {"name": name, **cpu.component(name)})
        feeds = spec.sample(spec.point(point), seed=5)
        got, want = plan.run(feeds), ort.run(feeds)
        for o in spec.output_names:
            np.testing.assert_allclose(np.asarray(got[o]), want[o], atol=TOLERANCE["fp32"], rtol=TOLERANCE["fp32"], err_msg=f"{name}.{o} at {point}")


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_tensorrt
def test_manifest_records_tensorrt_version_and_gpu(trt_build):
    build_ = read_manifest(trt_build)
    assert "tensorrt" in build_.data["versions"]
    for name, entry in build_.components.items():
        assert entry["tensorrt"]["gpu_arch"].startswith("sm") and entry["engine"].endswith(f".{entry['tensorrt']['gpu_arch']}.fp32.plan"), name
    assert (trt_build / "timing.cache").is_file() and not (trt_build / ".staging").exists()


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_tensorrt
def test_llm_generation_matches_the_cpu_path(trt_build, tiny_build):
    gpu = LlmGenerator.from_engines(Engines(read_manifest(trt_build), "tensorrt"))
    cpu = LlmGenerator.from_engines(Engines(read_manifest(tiny_build[0]), "onnxruntime"))
    for text in ("show me a red circle", "make a sound"):
        prompt = cpu.build_prompt(text, False)
        assert gpu.generate(prompt, max_new_tokens=32, temperature=0.0).ids == cpu.generate(prompt, max_new_tokens=32, temperature=0.0).ids


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_tensorrt
def test_the_kv_cache_stays_on_the_device_and_fits_the_whole_context(trt_build, tiny_model):
    engine = _plan(trt_build, "llm")
    spec = component_specs(tiny_model.config)["llm"]
    context = tiny_model.config["llm"]["max_position_embeddings"]
    first = engine.run(spec.sample({**spec.point("min"), "seq": context - 1, "past": 0}, seed=0))
    cache = first["present_keys"]
    assert isinstance(cache, DeviceTensor) and cache.shape[3] == context - 1

    def step(seq: int) -> dict:
        return {**spec.sample({**spec.point("min"), "seq": seq}, seed=1), "past_keys": cache, "past_values": first["present_values"]}

    with pytest.raises(ValueError, match="fit no optimisation profile"):  # past + seq beyond the context: refused before it runs
        engine.run(step(2))
    last = engine.run(step(1))  # the refused call left the cache as it was
    assert last["present_keys"].shape[3] == context
    with pytest.raises(ValueError, match="overwritten by a later call"):
        np.asarray(cache)


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_tensorrt
def test_each_llm_call_runs_on_its_profile_and_matches_onnxruntime(trt_build, tiny_build, tiny_model):
    """As the generator calls the LLM: a prefill, decode steps on the device cache, a chunk of forced
    signal runs; each on its own optimisation profile of the one plan."""
    plan = _plan(trt_build, "llm")
    cpu = read_manifest(tiny_build[0])
    ort = OrtEngine(cpu.path(cpu.component("llm")["engine"]), {"name": "llm", **cpu.component("llm")})
    spec = component_specs(tiny_model.config)["llm"]
    chunk = spec.optimization_profiles()["chunk"]["input_ids"]["max"][1]
    device, host, past = {}, {}, 0
    for seq, profile in ((40, "prefill"), (1, "decode"), (1, "decode"), (chunk, "chunk")):
        feeds = spec.sample({**spec.point("min"), "seq": seq, "past": past}, seed=seq + past)
        got, want = plan.run({**feeds, **device}), ort.run({**feeds, **host})
        assert plan.active_profile == profile, (seq, past)
        for o in spec.output_names:
            np.testing.assert_allclose(np.asarray(got[o]), want[o], atol=TOLERANCE["fp32"], rtol=TOLERANCE["fp32"], err_msg=f"{o} on {profile}")
        device = {"past_keys": got["present_keys"], "past_values": got["present_values"]}
        host = {"past_keys": want["present_keys"], "past_values": want["present_values"]}
        past += seq


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_tensorrt
def test_a_request_outside_the_profile_is_refused_before_it_runs(trt_build, tiny_model):
    engine = _plan(trt_build, "sd_unet")
    spec = component_specs(tiny_model.config)["sd_unet"]
    too_big = spec.sample({**spec.point("max"), "batch": spec.dims["batch"][2] + 1})
    with pytest.raises(ValueError, match="sd_unet: input 'sample' .*outside"):
        engine.run(too_big)


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_tensorrt
@pytest.mark.parametrize("name", ["sd_unet", "zeroscope_unet", "sd_vae_decoder"])
def test_cuda_graph_replay_equals_eager(trt_build, tiny_model, name):
    graphed, eager = _plan(trt_build, name, cuda_graph=True), _plan(trt_build, name, cuda_graph=False)
    spec = component_specs(tiny_model.config)[name]
    for seed in (0, 1, 2):  # the first call captures, the next ones replay on new inputs
        feeds = spec.sample(spec.point("opt"), seed=seed)
        a, b = graphed.run(feeds), eager.run(feeds)
        for o in spec.output_names:
            np.testing.assert_array_equal(a[o], b[o])
    assert graphed.graphs and not eager.graphs


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("label", ["onnxruntime-cuda", "onnxruntime-trt"])
def test_onnxruntime_gpu_providers_match_the_cpu(tiny_build, tiny_model, label):
    """On the provider itself, never a fallback (OrtEngine refuses one: this fails rather than skips
    when the provider is installed but cannot load), in IEEE fp32 (the CUDA provider's TF32 off)."""
    import onnxruntime as ort

    provider = ORT_PROVIDERS[resolve_backend(label)[1]][0]
    if provider not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no {provider} here (onnxruntime-gpu is not installed)")
    build_ = read_manifest(tiny_build[0])
    gpu, cpu = Engines(build_, label), Engines(build_, "onnxruntime")
    for name in ("projector_image", "sd_unet", "llm"):
        spec = component_specs(tiny_model.config)[name]
        feeds = spec.sample(spec.point("opt"), seed=2)
        got, want = gpu[name].run(feeds), cpu[name].run(feeds)
        assert gpu[name].providers[0] == provider, gpu[name].providers
        for o in spec.output_names:
            check = compare(want[o], got[o], TOLERANCE["fp32"], TOLERANCE["fp32"])
            assert check["pass"], f"{name}.{o} on {label}: {check['reason']}"


@pytest.mark.gpu
@needs_cuda
def test_torch_on_cuda_matches_the_cpu(tiny_build, tiny_model):
    # every component: the first GPU run found the ImageBind ones left half on the CPU (sd_unet alone passed)
    build_ = read_manifest(tiny_build[0])
    gpu, cpu = Engines(build_, "torch-cuda"), Engines(build_, "torch")
    for name, spec in component_specs(tiny_model.config).items():
        feeds = spec.sample(spec.point("opt"), seed=4)
        got, want = gpu[name].run(feeds), cpu[name].run(feeds)
        for o in spec.output_names:
            np.testing.assert_allclose(got[o], want[o], atol=TOLERANCE["fp32"], rtol=TOLERANCE["fp32"], err_msg=f"{name}.{o}")
