"""The reference pipeline end to end on the tiny checkpoint: every route, determinism, bad input."""
import json

import numpy as np
import pytest

from runtime import media
from train.demo import ROUTES, route_args
from train.generate import answer, main

EXPECTED_MEDIA = {"image": "image.png", "audio": "audio.wav", "video": "video.mp4"}


@pytest.fixture(scope="module")
def answers(tmp_path_factory, reference, tiny_dir, sample_inputs):
    out = tmp_path_factory.mktemp("routes")
    return out, {r: answer(reference, route_args(tiny_dir, out, r, sample_inputs, seed=3)) for r in ROUTES}


@pytest.mark.parametrize("route", list(ROUTES))
def test_route_writes_text_and_requested_media(answers, reference, route):
    out, bodies = answers
    body = bodies[route]
    saved = json.loads((out / route / "response.json").read_text())
    assert saved == body and isinstance(body["text"], str)
    wanted = ROUTES[route][2]
    if wanted:
        assert body["media"][wanted] == EXPECTED_MEDIA[wanted]
    for modality, name in body["media"].items():
        path = out / route / name
        dec = reference.config["decoders"][modality]
        if modality == "image":
            assert media.read_image(path).shape == (dec["height"], dec["width"], 3)
        elif modality == "audio":
            wave, rate = media.read_audio(path)
            assert rate == dec["sample_rate"] and len(wave) == int(dec["sample_rate"] * dec["audio_length_s"])
        else:
            frames, _ = media.read_video(path)
            assert frames.shape == (dec["frames"], dec["height"], dec["width"], 3)


def test_inputs_change_the_answer(reference, sample_inputs):
    from runtime.request import Request

    plain = reference(Request("describe this", seed=1))
    with_image = reference(Request("describe this", {"image": sample_inputs["image"]}, seed=1))
    assert plain.token_ids != with_image.token_ids


def test_same_seed_same_outputs_and_other_seed_differs(reference, sample_inputs):
    from runtime.request import Request

    req = dict(prompt="show me a red circle", files={"audio": sample_inputs["audio"]}, output="image")
    a, b = reference(Request(**req, seed=5)), reference(Request(**req, seed=5))
    c = reference(Request(**req, seed=6))
    assert a.text == b.text and np.array_equal(a.media["image"], b.media["image"])
    assert not np.array_equal(a.media["image"], c.media["image"])


def test_output_flag_forces_the_modality_even_with_a_short_answer(reference):
    from runtime.request import Request

    resp = reference(Request("hello", output="video", max_new_tokens=1))
    assert "video" in resp.media
    run = reference.vocab.runs["video"]
    start = reference.vocab.completed(resp.token_ids)["video"]
    assert resp.token_ids[start : start + len(run)] == run


def test_a_started_run_is_completed_not_crashed(reference):
    """Make [IMG0] the model's favourite token: the run must come out whole, never broken."""
    from runtime.request import Request

    first = reference.vocab.runs["image"][0]
    lm_head = reference.model.llm.get_output_embeddings()
    saved = lm_head.bias
    try:
        import torch

        bias = torch.zeros(lm_head.out_features)
        bias[first] = 1e4
        lm_head.bias = torch.nn.Parameter(bias)
        resp = reference(Request("hi", max_new_tokens=6))
    finally:
        lm_head.bias = saved
    run = reference.vocab.runs["image"]
    assert resp.token_ids[: len(run)] == run and "image" in resp.media


def cli(tiny_dir, out, *extra):
    return main(["--checkpoint", str(tiny_dir), "--out", str(out), "--quiet", *extra])


def test_cli_prints_and_writes(tiny_dir, tmp_path, capsys):
    assert cli(tiny_dir, tmp_path / "o", "--prompt", "show me", "--output", "audio", "--video-format", "gif") == 0
    assert "audio: " in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "response.json").read_text())["media"]["audio"] == "audio.wav"


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d: ["--prompt", "   "], "empty prompt"),
        (lambda d: ["--prompt", "word " * 600], "prompt too long"),
        (lambda d: ["--prompt", "x", "--steps", "0"], "--steps must be at least 1"),
        (lambda d: ["--prompt", "x", "--image", str(d / "missing.png")], "missing.png"),
        (lambda d: ["--prompt", "x", "--image", str(d / "corrupt.png")], "corrupt.png"),
        (lambda d: ["--prompt", "x", "--audio", str(d / "clip.flac")], "clip.flac"),
        (lambda d: ["--prompt", "x", "--video", str(d / "corrupt.png")], "corrupt.png"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny_dir, tmp_path, capsys, make_args, message):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "clip.flac").write_bytes(b"fLaC" + bytes(100))
    out = tmp_path / "out"
    assert cli(tiny_dir, out, *make_args(tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # library warnings may come before it
    assert err.startswith("error: ") and message in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_mismatched_checkpoint_is_one_line(tmp_path, tiny_dir, capsys):
    import shutil

    ckpt = shutil.copytree(tiny_dir, tmp_path / "ckpt")
    (ckpt / "llm.safetensors").unlink()
    assert cli(ckpt, tmp_path / "out", "--prompt", "hi") == 2
    assert "llm.safetensors: missing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
