"""runtime.limits: defaults from the build's config, overrides, every check naming its limit; the
engines' axis ranges; the runtime CLI refusing before any engine is opened."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from runtime.__main__ import main as runtime_main
from runtime.backends import check_feeds
from runtime.limits import NAME_MAX_BYTES, LimitError, Limits
from runtime.request import Request
from train.presets import get_preset


def test_defaults_come_from_the_build_config(tiny_dir):
    config = json.loads((tiny_dir / "config.json").read_text())
    limits = Limits.for_config(config)
    context = config["llm"]["max_position_embeddings"]
    runs = sum(len(ids) for ids in config["tokens"]["signal_ids"].values())
    assert limits.max_new_tokens == context - runs - 1 and limits.max_prompt_bytes == 8 * context
    assert limits.max_steps == get_preset("tiny")["decoders"]["image"]["scheduler"]["num_train_timesteps"]
    assert limits.max_file_bytes == Limits().max_file_bytes  # the policy values stay


def test_override_and_its_refusals():
    limits = Limits().override("max_steps=5, max_audio_seconds=2.5")
    assert (limits.max_steps, limits.max_audio_seconds, limits.max_new_tokens) == (5, 2.5, Limits().max_new_tokens)
    assert Limits.from_json(limits.to_json()) == limits and Limits().override(None) == Limits()
    for text, message in [
        ("max_stepz=5", "unknown limit 'max_stepz'"),
        ("max_steps=1.5", "'1.5' is not an integer"),
        ("max_steps=0", "must be positive"),
        ("max_guidance=nan", "must be positive"),
        ("max_guidance=big", "is not a number"),
    ]:
        with pytest.raises(LimitError, match=message):
            Limits().override(text)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"prompt": "é" * 6}, "prompt too long: 12 bytes exceed the limit max_prompt_bytes=10"),
        ({"steps": 21}, "steps 21 exceeds the limit max_steps=20"),
        ({"steps": 0}, "--steps must be at least 1, got 0"),
        ({"max_new_tokens": 17}, "max_new_tokens 17 exceeds the limit max_new_tokens=16"),
        ({"max_new_tokens": -1}, "--max-new-tokens must be at least 1"),
        ({"temperature": math.nan}, r"temperature nan is not a finite number in \[0, 2\] \(limit max_temperature=2\)"),
        ({"temperature": math.inf}, "temperature inf is not a finite number"),
        ({"temperature": -0.1}, "temperature -0.1 is not a finite number"),
        ({"guidance": math.nan}, r"guidance nan is not a finite number in \[0, 20\] \(limit max_guidance=20\)"),
        ({"guidance": 20.5}, "guidance 20.5 is not a finite number"),
        ({"top_p": 1.5}, r"top_p 1.5 is not a finite number in \[0, 1\]"),
        ({"top_p": -math.inf}, "top_p -inf is not a finite number"),
    ],
)
def test_each_request_limit_is_named(fields, message):
    limits = Limits(max_prompt_bytes=10, max_steps=20, max_new_tokens=16, max_temperature=2.0, max_guidance=20.0)
    with pytest.raises(LimitError, match=message):
        Request(**{"prompt": "hi", **fields}).check(limits)
    ok = {"prompt": "é" * 5, "steps": 20, "max_new_tokens": 16, "temperature": 2.0, "guidance": 0.0, "top_p": 1.0}
    Request(**ok).check(limits)  # every bound itself is allowed


def test_file_name_and_size():
    limits = Limits(max_file_bytes=100)
    limits.check_file("a" * NAME_MAX_BYTES, 100)
    with pytest.raises(LimitError, match="file name of 256 bytes exceeds the limit of 255 bytes"):
        limits.check_file("a" * (NAME_MAX_BYTES + 1), 1)
    with pytest.raises(LimitError, match="file name of 258 bytes"):  # bytes, not characters
        limits.check_file("é" * 129, 1)
    with pytest.raises(LimitError, match="x.png: 101 bytes exceeds the limit max_file_bytes=100"):
        limits.check_file("x.png", 101)


UNET = [
    {"name": "sample", "dtype": "float32", "shape": ["batch", 4, "frames", 2, 2]},
    {"name": "timestep", "dtype": "float32", "shape": ["batch"]},
]
DIMS = {"batch": [1, 2, 8], "frames": [1, 4, 4]}


def _feeds(batch: int, frames: int) -> dict[str, np.ndarray]:
    return {"sample": np.zeros((batch, 4, frames, 2, 2), np.float32), "timestep": np.zeros(batch, np.float32)}


def test_check_feeds_keeps_every_dynamic_axis_in_the_engine_range():
    check_feeds(_feeds(1, 1), UNET, DIMS, "unet")
    check_feeds(_feeds(8, 4), UNET, DIMS, "unet")
    with pytest.raises(ValueError, match=r"unet: input 'sample' axis 'frames' is 5, outside the engine's range 1..4"):
        check_feeds(_feeds(2, 5), UNET, DIMS, "unet")
    with pytest.raises(ValueError, match=r"axis 'batch' is 9, outside the engine's range 1..8"):
        check_feeds(_feeds(9, 4), UNET, DIMS, "unet")
    with pytest.raises(ValueError, match=r"axis 'batch' is 0, outside"):
        check_feeds(_feeds(0, 4), UNET, DIMS, "unet")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "1001"], "steps 1001 exceeds the limit max_steps=1000"),
        (["--steps", "3", "--limits", "max_steps=2"], "steps 3 exceeds the limit max_steps=2"),
        (["--temperature", "nan"], "temperature nan is not a finite number"),
        (["--limits", "max_stepz=2"], "unknown limit 'max_stepz'"),
    ],
)
def test_runtime_cli_refuses_beyond_the_limits(argv, message, tiny_build, tmp_path, capsys):
    out = tmp_path / "out"
    assert runtime_main(["--engines", str(tiny_build[0]), "--prompt", "x", "--out", str(out), "--quiet", *argv]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_runtime_cli_limits_apply_to_the_files(tiny_build, sample_inputs, tmp_path, capsys):
    image = str(sample_inputs["image"])
    argv = ["--engines", str(tiny_build[0]), "--prompt", "x", "--image", image, "--quiet", "--max-new-tokens", "2"]
    assert runtime_main([*argv, "--out", str(tmp_path / "a"), "--limits", "max_image_pixels=100"]) == 2
    assert "exceeds the limit max_image_pixels=100" in capsys.readouterr().err
    assert runtime_main([*argv, "--out", str(tmp_path / "b"), "--limits", "max_image_pixels=9216"]) == 0  # 96×96
    assert (tmp_path / "b" / "response.json").is_file()
