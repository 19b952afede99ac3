"""The output projector modes (transformer, linear, qformer): shapes, behaviour, export parity with
PyTorch in ONNX Runtime (portable and CPU ONNX) and a request served by a real Triton server, on
the session's mixed-mode checkpoint (tests/conftest.py: image and video Q-Former, audio linear)."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.specs import component_specs
from runtime.backends import OrtEngine, OvEngine
from runtime.manifest import read_manifest
from runtime.pipeline import Any2AnyPipeline
from runtime.precision import TOLERANCE, compare, rule_for
from runtime.request import Request
from train.checkpoint import make_config
from train.components import build_component
from train.model import load_checkpoint
from train.presets import SIGNAL_TOKEN_COUNTS, added_tokens, get_preset
from train.projectors import MODES, LinearProjector, QFormerProjector, TransformerProjector, build_projector
from triton_repo.build_repo import build_repo, parse_instances
from triton_repo.client import Any2AnyClient
from triton_repo.serve import TritonServer

from tests.conftest import MIXED_PROJECTOR_MODES

CLASSES = {"transformer": TransformerProjector, "linear": LinearProjector, "qformer": QFormerProjector}
SEED = 4


def tiny_config(mode: str) -> dict:
    preset = get_preset("tiny")
    preset["projector"]["modes"] = dict.fromkeys(preset["projector"]["modes"], mode)
    return preset


def signal_inputs(config: dict, modality: str, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, SIGNAL_TOKEN_COUNTS[modality], config["llm"]["hidden_size"])
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("modality", ["image", "video", "audio"])
def test_each_mode_maps_signal_states_to_the_decoder_conditioning(mode, modality):
    config = tiny_config(mode)
    projector = build_projector(config, modality).eval()
    assert isinstance(projector, CLASSES[mode])
    dec = config["decoders"][modality]
    with torch.no_grad():
        out = projector(*signal_inputs(config, modality))
    assert out.shape == (2, dec["embed_tokens"], dec["embed_dim"]) and torch.isfinite(out).all()


def test_the_mode_is_chosen_per_modality_and_an_unknown_one_is_named():
    config = get_preset("tiny")
    config["projector"]["modes"] = {"image": "qformer", "video": "linear", "audio": "transformer"}
    kinds = {m: type(build_projector(config, m)) for m in config["decoders"]}
    assert kinds == {"image": QFormerProjector, "video": LinearProjector, "audio": TransformerProjector}
    config["projector"]["modes"]["audio"] = "mlp"
    with pytest.raises(ValueError, match="projector mode 'mlp' for audio is not one of transformer, linear, qformer"):
        build_projector(config, "audio")


def test_qformer_has_the_reference_parameter_names_and_bidirectional_queries():
    torch.manual_seed(0)
    config = tiny_config("qformer")
    projector = build_projector(config, "image").eval()
    names = set(projector.state_dict())
    assert {"fc.weight", "query_tokens", "model.weight", "Qformer.bert.embeddings.LayerNorm.weight"} <= names
    layers = config["projector"]["qformer"]["layers"]
    for i in range(layers):
        assert f"Qformer.bert.encoder.layer.{i}.crossattention.self.key.weight" in names
    assert not any(".layer.2." in n or "word_embeddings" in n or "position_embeddings" in n for n in names)
    hidden, embeds = signal_inputs(config, "image", batch=1)
    with torch.no_grad():
        before = projector(hidden, embeds)
        # the last query changes what the first one sees; not by a constant, which the embeddings'
        # LayerNorm would take out again
        projector.query_tokens[0, -1] += torch.linspace(-1.0, 1.0, projector.query_tokens.shape[-1])
        after = projector(hidden, embeds)
        changed_signal = projector(hidden + 1.0, embeds)
    assert not torch.allclose(before[0, 0], after[0, 0])
    assert not torch.allclose(after, changed_signal)  # the queries cross-attend to the signal states


def test_linear_mode_is_one_linear_per_token_then_pools_tokens():
    config = tiny_config("linear")
    projector = build_projector(config, "image").eval()
    assert set(projector.state_dict()) == {"model.weight", "model.bias"}  # the pooling is no parameter
    hidden, embeds = signal_inputs(config, "image")
    with torch.no_grad():
        out = projector(hidden, embeds)
        per_token = projector.model(hidden)
    # 4 signal tokens to SD's 8 conditioning tokens: each token twice, in order
    np.testing.assert_allclose(out.numpy(), per_token.repeat_interleave(2, dim=1).numpy(), atol=1e-6)
    audio = build_projector(config, "audio").eval()
    hidden, embeds = signal_inputs(config, "audio")
    with torch.no_grad():  # 8 signal tokens to AudioLDM's one: their mean
        np.testing.assert_allclose(audio(hidden, embeds).numpy(), audio.model(hidden).mean(1, keepdim=True).numpy(), atol=1e-6)


def test_make_config_keeps_the_presets_modes():
    preset = tiny_config("qformer")
    token_ids = {t: 512 + i for i, t in enumerate(added_tokens())}
    config = make_config(preset, token_ids, bos_id=1, vocab_size=550)
    assert config["projector"]["modes"] == dict.fromkeys(("image", "video", "audio"), "qformer")


# --- the mixed-mode checkpoint through export, the runtime and Triton ---------------------------------


@pytest.fixture(scope="module")
def mixed_model(mixed_projector_dir):
    return load_checkpoint(mixed_projector_dir)


def test_the_checkpoint_records_and_reloads_each_mode(mixed_projector_dir, mixed_model):
    config = json.loads((mixed_projector_dir / "config.json").read_text())
    assert config["projector"]["modes"] == MIXED_PROJECTOR_MODES
    assert {m: type(p) for m, p in mixed_model.projectors.items()} == {m: CLASSES[k] for m, k in MIXED_PROJECTOR_MODES.items()}


@pytest.mark.parametrize("modality", ["image", "video", "audio"])
def test_both_onnx_files_of_each_projector_match_pytorch(mixed_projector_build, mixed_model, modality):
    out, outcomes = mixed_projector_build
    name = f"projector_{modality}"
    assert all(o.status == "built" for o in outcomes)
    spec = component_specs(mixed_model.config)[name]
    entry = read_manifest(out).component(name)
    files = [f for f in entry["files"] if f.endswith(".onnx")]
    assert len(files) == 2, files  # the portable ONNX and the CPU one
    module = build_component(mixed_model, name)
    for point in ("min", "max"):
        feeds = spec.sample(spec.point(point), seed=7)
        with torch.no_grad():
            expected = module(torch.from_numpy(feeds["hidden"])).numpy()
        for rel in files:
            session = ort.InferenceSession(str(out / rel), providers=["CPUExecutionProvider"])
            (got,) = session.run(None, {"hidden": feeds["hidden"]})
            np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4, err_msg=f"{rel} at {point}")


def test_the_cpu_onnx_of_the_qformer_runs_fused_attention(mixed_projector_build):
    import onnx

    out, _ = mixed_projector_build
    entry = read_manifest(out).component("projector_image")
    cpu = [f for f in entry["files"] if f.endswith(".opt.onnx")]
    ops = {n.op_type for n in onnx.load(str(out / cpu[0])).graph.node}
    assert "MultiHeadAttention" in ops


@pytest.fixture(scope="module")
def mixed_server(mixed_projector_build, tmp_path_factory):
    repo = tmp_path_factory.mktemp("mixed_triton") / "repo"
    build_repo(mixed_projector_build[0], repo, parse_instances("llm=1,media=1"))
    with TritonServer(repo, timeout_s=150) as server:
        yield server


@pytest.mark.parametrize("output", ["image", "audio"])  # the Q-Former's and the linear projector's
def test_a_served_request_equals_the_runtime(mixed_server, mixed_projector_build, output):
    request = Request("show me something", output=output, seed=SEED, steps=3)
    want = Any2AnyPipeline(mixed_projector_build[0], "onnxruntime")(request)
    with Any2AnyClient(mixed_server.grpc_url, timeout_s=120) as client:
        got = client.infer(request)
    assert output in got.media and got.token_ids == want.token_ids
    np.testing.assert_array_equal(got.media[output], want.media[output])


def test_compare_precision_passes_on_the_mixed_build(mixed_projector_build, tmp_path):
    from benchmarks.compare_precision import main

    out = tmp_path / "precision.json"
    assert main(["--engines", str(mixed_projector_build[0]), "--backends", "torch,onnxruntime", "--quick", "--json", str(out)]) == 0
    rows = [r for r in json.loads(out.read_text())["components"] if r["component"].startswith("projector_")]
    assert {r["component"] for r in rows} == {"projector_image", "projector_video", "projector_audio"}
    assert all(r["pass"] for r in rows)


@pytest.mark.parametrize("modality", ["image", "video", "audio"])
def test_openvino_runs_each_mode_as_onnx_runtime_does(mixed_projector_build, modality):
    """The OpenVINO backend compiles each mode's portable ONNX (fp32) and answers as ONNX Runtime does."""
    built = read_manifest(mixed_projector_build[0])
    name = f"projector_{modality}"
    entry = {"name": name, **built.component(name)}
    spec = component_specs(built.config)[name]
    feeds = spec.sample(spec.point("opt"), seed=2)
    want = OrtEngine(built.path(entry["engine"]), entry).run(feeds)
    got = OvEngine(built.path(entry["onnx"]), entry, "fp32", threads=1).run(feeds)
    for output, expected in want.items():
        result = compare(expected, got[output], TOLERANCE["fp32"], TOLERANCE["fp32"], rule_for("fp32"))
        assert result["pass"], f"{name} {output}: {result['reason']}"
