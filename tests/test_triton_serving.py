"""Serving under slow, abandoned, flooding and failing requests, on a real server over loopback.

One server for the module, on the repository that build_repo.py writes by default for a CPU
build (`--bls auto`, which is `none` here: every engine in process), with one instance per
pipeline role and a queue bound of 2, so that a flood is easy to make.
"""
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from runtime.pipeline import Any2AnyPipeline
from runtime.request import Request
from train.demo import ROUTES
from triton_repo.build_repo import Serving, build_repo, parse_instances
from triton_repo.client import Any2AnyClient, infer_inputs
from triton_repo.demo import route_request
from triton_repo.protocol import STREAM
from triton_repo.serve import STOP_GRACE_S, TritonServer

SEED = 4
DEADLINE_S = 60.0
QUEUE = 2
# A request that runs for many seconds, here tens (the tiny ZeroScope UNet takes tens of ms a step),
# within the default limit on steps.
LONG = Request("generate a video of a blue dot moving right", output="video", steps=600)
SHORT = Request("show me a red circle", output="image", steps=5)


@pytest.fixture(scope="module")
def repo(tiny_build, tmp_path_factory):
    out = tmp_path_factory.mktemp("serving") / "repo"
    build_repo(tiny_build[0], out, parse_instances("llm=1,media=1"), serving=Serving(DEADLINE_S, QUEUE))
    return out


@pytest.fixture(scope="module")
def server(repo):
    with TritonServer(repo, timeout_s=150) as s:
        yield s


def timed(url, req, timeout_s=60.0):
    """(seconds, the answer or the InferenceServerException) of one ensemble request."""
    start = time.monotonic()
    with Any2AnyClient(url, timeout_s) as client:
        try:
            result = client.infer(req)
        except InferenceServerException as e:
            result = e
    return time.monotonic() - start, result


def test_configs_carry_the_queue_policy_and_the_deadline(repo):
    record = json.loads((repo / "repo.json").read_text())
    assert (record["bls_policy"], record["deadline_s"], record["max_queue_size"]) == ("none", DEADLINE_S, QUEUE)
    for model in ("preprocess", "llm", "media", STREAM, "sd_unet"):
        config = (repo / model / "config.pbtxt").read_text()
        assert f"max_queue_size: {QUEUE}" in config and "allow_timeout_override: true" in config, model
        assert f"default_timeout_microseconds: {int(DEADLINE_S * 1e6)}" in config and "timeout_action: REJECT" in config
    media = (repo / "media" / "config.pbtxt").read_text()
    assert 'key: "deadline_s"' in media and f'string_value: "{DEADLINE_S}"' in media
    with pytest.raises(ValueError, match="--max-queue-size must be at least 1"):
        Serving(max_queue_size=0)


@pytest.fixture(scope="module")
def runtime_ort(tiny_build):
    return Any2AnyPipeline(tiny_build[0], "onnxruntime")


@pytest.mark.parametrize("route", list(ROUTES))
def test_the_default_repository_answers_like_the_runtime(route, server, runtime_ort, sample_inputs):
    req = route_request(route, sample_inputs, SEED)
    want = runtime_ort(req)
    with Any2AnyClient(server.grpc_url, 120) as client:
        got = client.infer(req)
    assert got.token_ids == want.token_ids and got.text == want.text and got.media.keys() == want.media.keys()
    for modality, value in want.media.items():
        np.testing.assert_array_equal(got.media[modality], value)


def test_a_request_past_its_deadline_stops_and_the_next_is_served(server):
    idle_s, answer = timed(server.grpc_url, SHORT)
    assert not isinstance(answer, Exception), answer
    log_before = server.log_text().count("request stopped: deadline")
    waited_s, refused = timed(server.grpc_url, LONG, timeout_s=2.0)
    assert isinstance(refused, InferenceServerException) and refused.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert waited_s < 4.0
    # The media instance stopped its loop at the client's deadline: the next request does not
    # wait for the long one's remaining steps (seconds more), and the log says why it stopped.
    after_s, answer = timed(server.grpc_url, SHORT)
    assert not isinstance(answer, Exception), answer
    assert after_s < idle_s + 3.0, (idle_s, after_s)
    assert server.log_text().count("request stopped: deadline of 2 s exceeded") > log_before


def test_a_cancelled_stream_stops_the_server_loop(server):
    class Leave(Exception):
        pass

    def leave_after_two_steps(modality, done, total):
        if done == 2:
            raise Leave

    before = server.log_text().count("request stopped: cancelled by the client")
    with Any2AnyClient(server.grpc_url, 60) as client, pytest.raises(Leave):
        client.stream(LONG, on_step=leave_after_two_steps)
    deadline = time.monotonic() + 10
    while server.log_text().count("request stopped: cancelled by the client") == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.log_text().count("request stopped: cancelled by the client") == before + 1
    # The stream instance is free again: a short stream is answered.
    with Any2AnyClient(server.grpc_url, 30) as client:
        assert client.stream(SHORT).media["image"].shape[-1] == 3


def test_requests_beyond_the_queue_bound_are_refused_at_once(server):
    """One long request holds the one media instance; of the next ones, QUEUE wait and the rest are
    refused as they reach the media step, without waiting. Every one ends by its 4 s deadline."""
    first = threading.Thread(target=timed, args=(server.grpc_url, LONG, 4.0))
    first.start()
    time.sleep(1.5)  # through preprocess, encode and the LLM, into the denoising loop
    with ThreadPoolExecutor(QUEUE + 3) as pool:
        results = list(pool.map(lambda _: timed(server.grpc_url, LONG, 4.0), range(QUEUE + 3)))
    first.join()
    refused = [s for s, r in results if isinstance(r, InferenceServerException) and "Exceeds maximum queue size" in r.message()]
    assert len(refused) >= 2 and max(refused) < 2.0, results
    assert all(isinstance(r, InferenceServerException) for _, r in results)
    assert {r.status() for _, r in results} <= {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"}
    assert not isinstance(timed(server.grpc_url, SHORT)[1], Exception)


def test_a_short_soak_loses_nothing_and_refuses_each_abuse_with_its_code(server, sample_inputs):
    """benchmarks/soak.py for a few seconds, every other request abusive: the well-formed ones are
    all answered and each abuse case sent got the status it names (a full run: docs/notes/results/soak.md)."""
    from benchmarks.soak import run

    result = run(server.grpc_url, server.process.pid, sample_inputs, seconds=15, concurrency=2, abuse_every=1)
    assert result["well_formed"]["sent"] > 0 and not result["well_formed"]["lost"], result["well_formed"]
    sent = {name: a for name, a in result["abuse"].items() if a["got"]}
    assert len(sent) >= 4
    assert all(a["ok"] for a in sent.values()), {name: (a["expected"], a["got"]) for name, a in sent.items()}
    assert result["rss_samples_mib"]


def test_a_killed_stub_fails_its_request_and_the_model_comes_back(server):
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(result=timed(server.grpc_url, LONG, 60.0)))
    worker.start()
    time.sleep(1.5)  # in the media model's denoising loop
    pid = next(pid for pid, model in server.stubs().items() if model == "media")
    os.kill(pid, signal.SIGKILL)
    worker.join(30)
    assert not worker.is_alive()
    seconds, error = outcome["result"]
    assert isinstance(error, InferenceServerException) and error.status() == "StatusCode.INTERNAL"
    assert "Stub process 'media_0_0' is not healthy" in error.message()
    served = None
    deadline = time.monotonic() + 90
    while served is None and time.monotonic() < deadline:
        _, answer = timed(server.grpc_url, SHORT)
        served = None if isinstance(answer, Exception) else answer
    assert served is not None and served.media["image"].shape[-1] == 3
    assert server.restarts == ["media: a stub process died; model reloaded"]
    assert pid not in server.stubs() and "media" in server.stubs().values()
    # The module's last use of the server. Triton keeps the dead stub's retired instance as a live
    # model until its own exit timeout; stop() must not wait that out (it used to: 30 s, then a kill).
    start = time.monotonic()
    server.stop()
    assert server.process.poll() is not None and not server.stubs()
    assert time.monotonic() - start < STOP_GRACE_S


def test_an_unusable_upload_folder_is_unavailable_not_internal(repo, tiny_build, sample_inputs, tmp_path):
    """The preprocess model alone, saving uploads into a folder that cannot be written (a file
    stands where it should be, so that this holds for root too)."""
    blocked = tmp_path / "uploads"
    blocked.write_text("not a folder")
    full = tmp_path / "full"
    build_repo(tiny_build[0], full, serving=Serving(upload_dir=str(blocked)))
    small = tmp_path / "small"
    small.mkdir()
    (full / "preprocess").rename(small / "preprocess")
    with TritonServer(small, timeout_s=60) as s, grpcclient.InferenceServerClient(s.grpc_url) as client:
        with pytest.raises(InferenceServerException) as refused:
            client.infer("preprocess", infer_inputs(Request("x", {"image": sample_inputs["image"]})), client_timeout=30)
        assert refused.value.status() == "StatusCode.UNAVAILABLE"
        assert f"the server cannot save uploaded files in {blocked}: Not a directory" in refused.value.message()
        assert client.infer("preprocess", infer_inputs(Request("no files")), client_timeout=30).as_numpy("CLIPS_IMAGE").size == 0
