"""Limits and real-world media against a real Triton server on loopback: the default repository
(`--bls auto`, every engine in process on CPU) written with small limits, so that each limit is
cheap to reach. Every refusal is INVALID_ARGUMENT naming the limit, and the next well-formed
request is served."""
from __future__ import annotations

import math
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile
from tritonclient.utils import InferenceServerException

from runtime import media
from runtime.manifest import read_manifest
from runtime.pipeline import Any2AnyPipeline
from runtime.request import Request
from triton_repo.build_repo import build_repo, parse_instances
from triton_repo.client import TYPES, Any2AnyClient
from triton_repo.protocol import ENSEMBLE, encode_request
from triton_repo.serve import TritonServer

START_TIMEOUT_S = 150
LIMITS = {
    "max_steps": 20, "max_new_tokens": 16, "max_prompt_bytes": 200, "max_file_bytes": 200_000,
    "max_image_pixels": 100 * 100, "max_video_frames": 24, "max_video_seconds": 10, "max_audio_seconds": 4,
    "max_guidance": 20, "max_temperature": 2,
}


@pytest.fixture(scope="module")
def repo(tiny_build, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton_limits") / "repo"
    overrides = ",".join(f"{k}={v}" for k, v in LIMITS.items())
    build_repo(tiny_build[0], out, parse_instances("llm=1,media=1"), limits=overrides)
    return out


@pytest.fixture(scope="module")
def client(repo):
    with TritonServer(repo, timeout_s=START_TIMEOUT_S) as server, Any2AnyClient(server.grpc_url, timeout_s=120) as c:
        yield c


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Files as users have them, one limit beyond or within each."""
    d = tmp_path_factory.mktemp("limit_files")
    media.write_png(d / "big.png", np.full((101, 100, 3), 90, np.uint8))
    media.write_png(d / "small.png", np.full((100, 100, 3), 90, np.uint8))
    (d / "heavy.png").write_bytes(np.random.default_rng(0).integers(0, 256, 200_001, dtype=np.uint8).tobytes())
    t = np.arange(16000 * 5) / 16000
    soundfile.write(d / "long.flac", 0.3 * np.sin(2 * np.pi * 440 * t), 16000)
    soundfile.write(d / "tone.flac", 0.3 * np.sin(2 * np.pi * 440 * t[: 16000 * 3]), 16000)
    frames = np.zeros((25, 32, 32, 3), np.uint8)
    frames[:, 8:24, 8:24] = np.arange(25)[:, None, None, None] * 10
    media.write_video(d / "many.gif", frames, 8.0)
    media.write_video(d / "slow.gif", frames[:12], 1.0)  # 12 s
    ffmpeg = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "32x32"]
    subprocess.run([*ffmpeg, "-r", "8", "-i", "-", "-c:v", "libvpx-vp9", str(d / "clip.webm")], input=frames[:16].tobytes(), check=True)
    return d


def _refused(client, req, message: str, stream: bool = False) -> None:
    with pytest.raises(InferenceServerException) as refused:
        client.stream(req) if stream else client.infer(req)
    # A gRPC stream carries a response's error as its message alone, without a status code.
    assert stream or refused.value.status() == "StatusCode.INVALID_ARGUMENT", refused.value
    assert message in refused.value.message()


CASES = [
    (lambda d: Request("x", steps=21), "steps 21 exceeds the limit max_steps=20"),
    (lambda d: Request("x", max_new_tokens=17), "max_new_tokens 17 exceeds the limit max_new_tokens=16"),
    (lambda d: Request("é" * 101), "prompt too long: 202 bytes exceed the limit max_prompt_bytes=200"),
    (lambda d: Request("x" * 1_000_000), "exceed the limit max_prompt_bytes=200"),
    (lambda d: Request("x", temperature=math.nan), "temperature nan is not a finite number in [0, 2] (limit max_temperature=2)"),
    (lambda d: Request("x", temperature=math.inf), "temperature inf is not a finite number"),
    (lambda d: Request("x", guidance=math.nan), "guidance nan is not a finite number in [0, 20] (limit max_guidance=20)"),
    (lambda d: Request("x", top_p=1.5), "top_p 1.5 is not a finite number in [0, 1]"),
    (lambda d: Request("x", {"image": d / "big.png"}), "big.png: 100×101 pixels exceeds the limit max_image_pixels=10000"),
    (lambda d: Request("x", {"image": d / "heavy.png"}), "heavy.png: 200001 bytes exceeds the limit max_file_bytes=200000"),
    (lambda d: Request("x", {"audio": d / "long.flac"}), "long.flac: 5.0 s exceeds the limit max_audio_seconds=4"),
    (lambda d: Request("x", {"video": d / "many.gif"}), "many.gif: more than 24 frames exceeds the limit max_video_frames"),
    (lambda d: Request("x", {"video": d / "slow.gif"}), "slow.gif: 11.0 s exceeds the limit max_video_seconds=10"),
]


@pytest.mark.parametrize("make, message", CASES)
def test_each_limit_is_invalid_argument_naming_it(make, message, client, files):
    _refused(client, make(files), message)
    assert client.infer(Request("hi", max_new_tokens=4)).token_ids  # the next well-formed request is served


@pytest.mark.parametrize("make, message", [CASES[0], CASES[4], CASES[9]])
def test_the_stream_model_refuses_the_same(make, message, client, files):
    _refused(client, make(files), message, stream=True)
    assert client.stream(Request("hi", max_new_tokens=4)).token_ids


def test_a_file_name_over_255_bytes_is_invalid_argument(client, files):
    """No file system here stores such a name, so the request is made by hand."""
    import tritonclient.grpc as grpcclient

    tensors = encode_request(Request("x", {"image": files / "small.png"}))
    tensors["IMAGE_FILE"][0] = ("n" * 252 + ".png").encode()
    inputs = []
    for name, value in tensors.items():
        inputs.append(grpcclient.InferInput(name, list(value.shape), TYPES[name]))
        inputs[-1].set_data_from_numpy(value)
    with pytest.raises(InferenceServerException) as refused:
        client.client.infer(ENSEMBLE, inputs)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "file name of 256 bytes exceeds the limit of 255 bytes" in refused.value.message()
    assert client.infer(Request("hi", max_new_tokens=4)).token_ids


def test_the_llm_step_called_on_its_own_checks_the_request_too(client, tiny_build):
    import tritonclient.grpc as grpcclient

    hidden = read_manifest(tiny_build[0]).config["llm"]["hidden_size"]
    values = {"PROMPT": (np.array([b"hi"], dtype=object), "BYTES"), "MAX_NEW_TOKENS": (np.array([17], np.int64), "INT64"),
              "MEDIA_TOKEN": (np.zeros((0, hidden), np.float32), "FP32")}
    inputs = []
    for name, (value, dtype) in values.items():
        inputs.append(grpcclient.InferInput(name, list(value.shape), dtype))
        inputs[-1].set_data_from_numpy(value)
    with pytest.raises(InferenceServerException) as refused:
        client.client.infer("llm", inputs)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "max_new_tokens 17 exceeds the limit max_new_tokens=16" in refused.value.message()


def test_at_the_limits_requests_are_served(client, files):
    got = client.infer(Request("draw", {"image": files / "small.png"}, output="image", steps=20, max_new_tokens=16))
    assert got.media["image"].ndim == 3


def test_engine_inputs_outside_the_spec_range_are_invalid_argument(client, tiny_build):
    import tritonclient.grpc as grpcclient

    video = read_manifest(tiny_build[0]).config["decoders"]["video"]
    frames_max, side = video["frames"], video["unet"]["sample_size"]

    def unet_inputs(frames: int) -> list:
        values = {
            "sample": np.zeros((1, 4, frames, side, side), np.float32), "timestep": np.zeros((1, 1), np.float32),
            "encoder_hidden_states": np.zeros((1, video["embed_tokens"], video["embed_dim"]), np.float32),
        }
        inputs = []
        for name, value in values.items():
            tensor = grpcclient.InferInput(name, list(value.shape), "FP32")
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        return inputs

    with pytest.raises(InferenceServerException) as refused:
        client.client.infer("zeroscope_unet", unet_inputs(frames_max + 1))
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert f"input 'sample' axis 'frames' is {frames_max + 1}, outside the engine's range 1..{frames_max}" in refused.value.message()
    shape = client.client.infer("zeroscope_unet", unet_inputs(frames_max)).as_numpy("noise_pred").shape
    assert shape == (1, 4, frames_max, side, side)


def test_flac_and_webm_are_served_as_the_runtime_reads_them(client, files, tiny_build):
    runtime = Any2AnyPipeline(tiny_build[0], "onnxruntime")
    for req in (Request("what is this", {"audio": files / "tone.flac"}, max_new_tokens=8),
                Request("what is this", {"video": files / "clip.webm"}, max_new_tokens=8)):
        assert client.infer(req).token_ids == runtime(req).token_ids
