"""The runtime on engines against the PyTorch reference: every route, same seed, same answer."""
import json

import numpy as np
import pytest

from benchmarks.metrics import psnr
from runtime.__main__ import main
from runtime.pipeline import Any2AnyPipeline
from runtime.request import Request
from train.demo import ROUTES


def route_request(route, files, seed=4):
    prompt, inputs, output = ROUTES[route]
    return Request(prompt, {m: files[m] for m in inputs}, output=output, seed=seed)


@pytest.mark.parametrize("route", list(ROUTES))
def test_route_matches_the_reference(route, runtime_ort, reference, sample_inputs):
    req = route_request(route, sample_inputs)
    expected, got = reference(req), runtime_ort(req)
    assert got.token_ids == expected.token_ids and got.text == expected.text
    assert got.media.keys() == expected.media.keys()
    if ROUTES[route][2]:
        assert ROUTES[route][2] in got.media
    for modality, ref in expected.media.items():
        assert got.media[modality].dtype == ref.dtype
        assert psnr(ref, got.media[modality]) >= 40.0, modality


def test_sampling_matches_the_reference_too(runtime_ort, reference):
    req = Request("tell me about a red circle", seed=11, temperature=0.8, top_p=0.9, max_new_tokens=24)
    assert runtime_ort(req).token_ids == reference(req).token_ids


def test_torch_backend_runs_the_same_pipeline(tiny_build, reference, sample_inputs):
    req = route_request("image_to_audio", sample_inputs)
    got, expected = Any2AnyPipeline(tiny_build[0], "torch")(req), reference(req)
    assert got.token_ids == expected.token_ids
    assert psnr(expected.media["audio"], got.media["audio"]) >= 40.0


def test_text_streams_before_the_answer_is_complete(runtime_ort):
    pieces = []
    resp = runtime_ort(Request("describe a blue square", max_new_tokens=20), on_text=pieces.append)
    assert len(pieces) > 1 and "".join(pieces).strip() == resp.text


def test_denoising_progress_is_reported(runtime_ort):
    steps = []
    runtime_ort(Request("draw", output="image", steps=3), on_step=lambda m, done, total: steps.append((m, done, total)))
    image_steps = [s for s in steps if s[0] == "image"]
    assert image_steps[-1][1] == image_steps[-1][2] and len(image_steps) == image_steps[-1][2]


def cli(build, out, *extra):
    return main(["--engines", str(build), "--out", str(out), "--quiet", *extra])


def test_cli_streams_text_and_writes_the_answer(tiny_build, tmp_path, capsys):
    assert cli(tiny_build[0], tmp_path / "o", "--prompt", "make a sound", "--output", "audio", "--steps", "2") == 0
    body = json.loads((tmp_path / "o" / "response.json").read_text())
    assert body["media"]["audio"] == "audio.wav" and body["backend"] == "onnxruntime"
    assert (tmp_path / "o" / "audio.wav").stat().st_size > 44
    assert f"audio: {tmp_path / 'o' / 'audio.wav'}" in capsys.readouterr().out


def _wav_at(d, rate):
    import wave

    path = d / f"at_{rate}.wav"
    with wave.open(str(path), "wb") as w:  # our own writer refuses such a rate
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(bytes(2 * rate))
    return path


def _truncated_wav(d):
    from runtime import media

    path = d / "cut.wav"
    media.write_wav(path, np.zeros(16000, np.float32), 16000)
    path.write_bytes(path.read_bytes()[:100])
    return path


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d: ["--prompt", ""], "empty prompt"),
        (lambda d: ["--prompt", "word " * 600], "prompt too long"),
        (lambda d: ["--prompt", "x", "--steps", "0"], "--steps must be at least 1"),
        (lambda d: ["--prompt", "x", "--image", str(d / "corrupt.png")], "corrupt.png"),
        (lambda d: ["--prompt", "x", "--audio", str(_truncated_wav(d))], "cut.wav"),
        (lambda d: ["--prompt", "x", "--video", str(d / "clip.webm")], "clip.webm"),
        (lambda d: ["--prompt", "x", "--audio", str(d / "missing.wav")], "missing.wav"),
        (lambda d: ["--prompt", "x", "--audio", str(_wav_at(d, 1000))], "at_1000.wav"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny_build, tmp_path, capsys, make_args, message):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "clip.webm").write_bytes(b"\x1aE\xdf\xa3" + bytes(64))
    out = tmp_path / "out"
    assert cli(tiny_build[0], out, *make_args(tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and message in err
    assert not out.exists()


def test_missing_or_stale_engine_is_refused_before_serving(tiny_build, tmp_path, capsys):
    import shutil

    build = shutil.copytree(tiny_build[0], tmp_path / "engines")
    (build / "llm" / "model.opt.onnx").unlink()
    assert cli(build, tmp_path / "out", "--prompt", "hi") == 2
    assert "llm: engine file" in capsys.readouterr().err
    assert cli(tmp_path / "nowhere", tmp_path / "out", "--prompt", "hi") == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_tensorrt_backend_names_what_is_missing(tiny_build, tmp_path, capsys):
    from runtime.backends import BackendUnavailable, require_tensorrt

    try:
        require_tensorrt()
        pytest.skip("TensorRT is present here")
    except BackendUnavailable:
        pass
    assert cli(tiny_build[0], tmp_path / "out", "--prompt", "hi", "--backend", "tensorrt") == 2
    assert "TensorRT" in capsys.readouterr().err
