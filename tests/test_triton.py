"""The Triton deployment on a real server over loopback: one server for the module, on a repository
generated from the session's tiny build, against the in-process runtime on the same build."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from benchmarks.metrics import PSNR_PASS_DB, psnr
from runtime.request import Request
from train.demo import ROUTES
from triton_repo import client as client_cli
from triton_repo.build_repo import build_repo, parse_instances, resolve_bls
from triton_repo.client import Any2AnyClient
from triton_repo.demo import route_request
from triton_repo.serve import ROOT, ServerError, TritonServer

SEED = 4
START_TIMEOUT_S = 150  # 18 models on 2 busy cores


@pytest.fixture(scope="module")
def repo(tiny_build, tmp_path_factory):
    # Two media instances calling every engine model (not the CPU default), so that concurrent
    # denoising loops can share UNet batches.
    out = tmp_path_factory.mktemp("triton") / "repo"
    build_repo(tiny_build[0], out, parse_instances("llm=1,media=2"), delay_us=2000, bls="all")
    return out


@pytest.fixture(scope="module")
def server(repo):
    with TritonServer(repo, timeout_s=START_TIMEOUT_S) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with Any2AnyClient(server.grpc_url, timeout_s=120) as c:
        yield c


@pytest.fixture(scope="module")
def expected(runtime_ort, sample_inputs):
    """The in-process runtime's answer for every route."""
    return {route: runtime_ort(route_request(route, sample_inputs, SEED)) for route in ROUTES}


def assert_same(got, want, exact=True):
    assert got.token_ids == want.token_ids and got.text == want.text
    assert got.media.keys() == want.media.keys()
    for modality, value in want.media.items():
        assert got.media[modality].dtype == value.dtype and got.media[modality].shape == value.shape
        if exact:  # one request at a time: the same engine calls on the same inputs
            np.testing.assert_array_equal(got.media[modality], value)
        else:  # batched with other requests' samples: the same up to float rounding
            assert psnr(value, got.media[modality]) >= PSNR_PASS_DB, modality


@pytest.mark.parametrize("route", list(ROUTES))
def test_route_over_grpc_equals_the_runtime(route, client, expected, sample_inputs):
    got = client.infer(route_request(route, sample_inputs, SEED))
    assert_same(got, expected[route])
    if ROUTES[route][2]:
        assert ROUTES[route][2] in got.media


def test_task_verdicts_over_grpc_equal_the_runtime(client, runtime_ort, heldout_world):
    from train.evaluate import TASKS, evaluate
    from train.judges import DEFAULT_JUDGES, load_judges

    judges = load_judges(DEFAULT_JUDGES)
    rates = {"audio": float(runtime_ort.config["decoders"]["audio"]["sample_rate"])}
    got = evaluate(client.infer, heldout_world, judges, rates, 1, seed=SEED, steps=2, progress=False)
    want = evaluate(runtime_ort, heldout_world, judges, rates, 1, seed=SEED, steps=2, progress=False)
    for task in TASKS:
        assert [(v["token_ids"], v["seen"], v["correct"]) for v in got[task]] == [
            (v["token_ids"], v["seen"], v["correct"]) for v in want[task]
        ], task


def test_follow_up_verdicts_over_grpc_equal_the_runtime(client, runtime_ort, conversation_world):
    """The follow-up tasks asked turn by turn over gRPC (the conversation and the media of all its
    turns on the wire): every answer, the judged one and the history, as in process."""
    from train.evaluate import FOLLOW_UP_TASKS, evaluate
    from train.judges import DEFAULT_JUDGES, load_judges

    judges = load_judges(DEFAULT_JUDGES)
    rates = {"audio": float(runtime_ort.config["decoders"]["audio"]["sample_rate"])}
    got = evaluate(client.infer, conversation_world, judges, rates, None, seed=SEED, steps=2, progress=False, follow_ups=True)
    want = evaluate(runtime_ort, conversation_world, judges, rates, None, seed=SEED, steps=2, progress=False, follow_ups=True)
    for task in FOLLOW_UP_TASKS:
        assert len(want[task]) == 2
        assert [(v["history"], v["token_ids"], v["seen"], v["correct"]) for v in got[task]] == [
            (v["history"], v["token_ids"], v["seen"], v["correct"]) for v in want[task]
        ], task


def unet_requests(url, name="sd_unet"):
    """How many requests the UNet model has answered (each denoising step of a loop is one)."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as c:
        return int(c.get_inference_statistics(name, as_json=True)["model_stats"][0]["inference_stats"]["success"].get("count", 0))


def test_stream_sends_text_and_progress_before_the_answer(client, server, expected, sample_inputs):
    """Text is sent while the server still works: when the first piece reaches the client, the
    denoising loop (whose every step is a request to the sd_unet model here) has not finished."""
    events, unet_at_first_text = [], []

    def on_text(piece):
        if not unet_at_first_text:
            unet_at_first_text.append(unet_requests(server.grpc_url))
        events.append(("text", piece))

    before = unet_requests(server.grpc_url)
    got = client.stream(
        route_request("text_to_image", sample_inputs, SEED),
        on_text=on_text,
        on_step=lambda m, done, total: events.append(("step", (m, done, total))),
    )
    assert_same(got, expected["text_to_image"])
    pieces = [e[1] for e in events if e[0] == "text"]
    steps = [e[1] for e in events if e[0] == "step"]
    assert len(pieces) > 1 and "".join(pieces).strip() == got.text
    assert steps and steps[-1][1] == steps[-1][2] and {s[0] for s in steps} == {"image"}
    assert events[0][0] == "text" and events[-1][0] == "step"
    total = steps[-1][2]
    assert unet_requests(server.grpc_url) == before + total
    assert unet_at_first_text[0] < before + total, "the text came only after the whole denoising loop"


def test_sixteen_concurrent_requests_all_succeed(client, expected, sample_inputs):
    # Whether two loops' UNet steps meet in one batch depends on timing: that they do when they
    # arrive together is test_an_engine_model_runs_concurrent_requests_as_one_batch.
    routes = [route for route in ROUTES for _ in range(2)]
    with ThreadPoolExecutor(len(routes)) as pool:
        answers = list(pool.map(lambda r: client.infer(route_request(r, sample_inputs, SEED)), routes))
    for route, got in zip(routes, answers):
        assert_same(got, expected[route], exact=False)


def test_an_engine_model_runs_concurrent_requests_as_one_batch(repo, tiny_build, tmp_path):
    """Four requests of two samples each (a guided step's pair), sent at once to the SD UNet model
    with a queue delay far longer than they take to arrive: the batcher waits until they fill the
    maximum batch (8) and runs them as one engine call, whose slices are each request's answer."""
    import tritonclient.grpc as grpcclient

    from runtime.backends import Engines
    from runtime.manifest import read_manifest

    small = tmp_path / "small"
    shutil.copytree(repo / "sd_unet", small / "sd_unet")
    config = small / "sd_unet" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_queue_delay_microseconds: 2000", "max_queue_delay_microseconds: 30000000"))
    build = read_manifest(tiny_build[0])
    inputs = build.component("sd_unet")["inputs"]
    rng = np.random.default_rng(0)
    feeds = [
        {t["name"]: rng.standard_normal([2, *t["shape"][1:]]).astype(np.float32) for t in inputs} for _ in range(4)
    ]
    want = [Engines(build, "onnxruntime")["sd_unet"].run(f)["noise_pred"] for f in feeds]

    def send(f):
        with grpcclient.InferenceServerClient(s.grpc_url) as c:
            tensors = [_tensor(n, v.reshape(2, -1) if n == "timestep" else v, "FP32") for n, v in f.items()]
            return c.infer("sd_unet", tensors, client_timeout=60).as_numpy("noise_pred")

    with TritonServer(small, timeout_s=60) as s, ThreadPoolExecutor(4) as pool:
        got = list(pool.map(send, feeds))
        with grpcclient.InferenceServerClient(s.grpc_url) as c:
            stats = c.get_inference_statistics("sd_unet", as_json=True)["model_stats"][0]
    assert (int(stats["execution_count"]), int(stats["inference_count"])) == (1, 8)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


def _corrupt_png(d):
    path = d / "corrupt.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return {"image": path}


def _webm(d):
    path = d / "clip.webm"
    path.write_bytes(b"\x1aE\xdf\xa3" + bytes(64))
    return {"video": path}


@pytest.mark.parametrize(
    "make_request, message",
    [
        (lambda d: Request("x", _corrupt_png(d)), "corrupt.png: cannot decode image"),
        (lambda d: Request("x", _webm(d)), "clip.webm: cannot decode video"),
        (lambda d: Request(""), "empty prompt"),
        (lambda d: Request("word " * 600), "prompt too long"),
        (lambda d: Request("x", steps=0), "--steps must be at least 1"),
        (lambda d: Request("x", output="smell"), "unknown output modality 'smell'"),
    ],
)
def test_bad_request_is_invalid_argument_and_the_server_goes_on(make_request, message, client, tmp_path):
    with pytest.raises(InferenceServerException) as refused:
        client.infer(make_request(tmp_path))
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT" and message in refused.value.message()
    assert client.infer(Request("hi", max_new_tokens=4)).token_ids


def _tensor(name, value, dtype):
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput(name, list(value.shape), dtype)
    tensor.set_data_from_numpy(value)
    return tensor


PROMPT = (np.array([b"hi"], dtype=object), "BYTES")


@pytest.mark.parametrize(
    "tensors, message",
    [
        ({"PROMPT": (np.array([1], np.int32), "INT32")}, "data-type is 'INT32', but model 'any2any' expects 'BYTES'"),
        ({"PROMPT": PROMPT, "SEED": (np.array([1.5], np.float32), "FP32")}, "input 'SEED' data-type is 'FP32'"),
        ({"PROMPT": (np.array([b"a", b"b"], dtype=object), "BYTES")}, "unexpected shape for input 'PROMPT'"),
        ({"PROMPT": PROMPT, "IMAGE_FILE": (np.array([b"x.png"], dtype=object), "BYTES")}, "unexpected shape for input 'IMAGE_FILE'"),
        ({"PROMPT": PROMPT, "SMELL_FILE": (np.array([b"a", b"b"], dtype=object), "BYTES")}, "unexpected inference input 'SMELL_FILE'"),
        ({"PROMPT": (np.array([b"\xff\xfe"], dtype=object), "BYTES")}, "PROMPT is not UTF-8 text"),
    ],
)
def test_wrong_tensors_are_invalid_argument(tensors, message, client):
    inputs = [_tensor(name, value, dtype) for name, (value, dtype) in tensors.items()]
    with pytest.raises(InferenceServerException) as refused:
        client.client.infer("any2any", inputs)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT" and message in refused.value.message()
    assert client.infer(Request("hi", max_new_tokens=4)).token_ids


def test_client_cli_writes_the_answer_like_the_runtime(server, sample_inputs, tmp_path, capsys):
    argv = ["--url", server.grpc_url, "--prompt", "make the sound of a bell", "--output", "audio", "--out", str(tmp_path / "o")]
    assert client_cli.main([*argv, "--stream", "--quiet", "--audio", str(sample_inputs["audio"])]) == 0
    body = json.loads((tmp_path / "o" / "response.json").read_text())
    # the asked medium, and every medium the answer holds written where response.json names it
    assert body["media"]["audio"] == "audio.wav" and body["backend"] == "triton"
    assert all((tmp_path / "o" / f).stat().st_size > 0 for f in body["media"].values())
    assert (tmp_path / "o" / "audio.wav").stat().st_size > 44
    assert f"audio: {tmp_path / 'o' / 'audio.wav'}" in capsys.readouterr().out
    (tmp_path / "bad.png").write_bytes(b"not an image")
    bad = ["--url", server.grpc_url, "--prompt", "x", "--image", str(tmp_path / "bad.png"), "--out", str(tmp_path / "bad")]
    assert client_cli.main(bad) == 2
    assert "bad.png: cannot decode image" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_generated_configs_come_from_the_manifest(repo, tiny_build, tmp_path):
    from runtime.manifest import read_manifest

    build = read_manifest(tiny_build[0])
    record = json.loads((repo / "repo.json").read_text())
    assert "llm" not in record["batched"] and {"sd_unet", "imagebind_vision", "audioldm_vocoder"} <= set(record["batched"])
    unet = (repo / "sd_unet" / "config.pbtxt").read_text()
    assert f"max_batch_size: {build.component('sd_unet')['dims']['batch'][2]}" in unet
    assert "max_queue_delay_microseconds: 2000" in unet and 'backend: "python"' in unet
    assert 'platform: "ensemble"' in (repo / "any2any" / "config.pbtxt").read_text()
    assert "decoupled: true" in (repo / "any2any_stream" / "config.pbtxt").read_text()
    assert "count: 2" in (repo / "media" / "config.pbtxt").read_text()
    native = tmp_path / "native"
    build_repo(tiny_build[0], native, native=True)
    config = (native / "sd_unet" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and 'default_model_filename: "model.opt.onnx"' in config
    assert (native / "sd_unet" / "1" / "model.opt.onnx").is_file()
    build_repo(tiny_build[0], tmp_path / "native_gpu", native=True, backend="onnxruntime-cuda")
    gpu_config = (tmp_path / "native_gpu" / "sd_unet" / "config.pbtxt").read_text()
    assert 'default_model_filename: "model.onnx"' in gpu_config and "KIND_GPU" in gpu_config
    assert (tmp_path / "native_gpu" / "sd_unet" / "1" / "model.onnx").is_file()
    with pytest.raises(ValueError, match="not written by build_repo.py"):
        build_repo(tiny_build[0], tmp_path)
    build_repo(tiny_build[0], tmp_path / "unets", bls="unets")
    assert sorted(json.loads((tmp_path / "unets" / "repo.json").read_text())["bls"]) == ["audioldm_unet", "sd_unet", "zeroscope_unet"]
    assert "sd_vae_decoder" in (tmp_path / "unets" / "media" / "config.pbtxt").read_text()  # run in process
    build_repo(tiny_build[0], tmp_path / "auto")  # a CPU build: every engine in process, still served on its own
    record = json.loads((tmp_path / "auto" / "repo.json").read_text())
    assert (record["bls_policy"], record["bls"]) == ("none", []) and "sd_unet" in record["models"]
    assert resolve_bls("auto", "onnxruntime-cuda") == "all" and resolve_bls("unets", "onnxruntime") == "unets"
    with pytest.raises(ValueError, match="bls must be one of"):
        build_repo(tiny_build[0], tmp_path / "bad", bls="some")
    assert not (tmp_path / "bad").exists() and not (tmp_path / ".bad.staging").exists()


def _small_repo(repo, tmp_path, broken=False):
    """One engine model from the generated repository, plus one that cannot load if `broken`."""
    small = tmp_path / "small"
    shutil.copytree(repo / "projector_image", small / "projector_image")
    if broken:
        shutil.copytree(repo / "projector_image", small / "broken_model")
        config = small / "broken_model" / "config.pbtxt"
        config.write_text(config.read_text().replace('"projector_image"', '"broken_model"'))
    return small


def test_a_model_that_fails_to_load_is_named(repo, tmp_path):
    server = TritonServer(_small_repo(repo, tmp_path, broken=True), timeout_s=60)
    with pytest.raises(ServerError, match="models that failed to load: broken_model: .*no component 'broken_model'"):
        server.start()
    assert server.process.poll() is not None


def test_launcher_serves_until_sigterm(repo, tmp_path):
    cmd = [sys.executable, str(ROOT / "triton_repo" / "serve.py"), "--repo", str(_small_repo(repo, tmp_path))]
    cmd += ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("ready" in line for line in lines) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert any(line.startswith("grpc: 127.0.0.1:") for line in lines), lines
        assert any(line.startswith("metrics: 127.0.0.1:") for line in lines), lines
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    reader.join(5)
    assert any("stopping" in line for line in lines)
    port = int(next(line for line in lines if line.startswith("grpc: ")).rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # the server went down with the launcher
