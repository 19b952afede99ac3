"""Shared fixtures: the embedded tiny checkpoint, loaded once per session."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "train" / "checkpoints" / "tiny"


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return TINY


@pytest.fixture(scope="session")
def tiny_model():
    from train.model import load_checkpoint

    return load_checkpoint(TINY)


@pytest.fixture(scope="session")
def reference(tiny_model):
    from train.reference import ReferencePipeline

    return ReferencePipeline(tiny_model, progress=False)


@pytest.fixture(scope="session")
def sample_inputs(tmp_path_factory, reference) -> dict[str, Path]:
    from train.demo import write_sample_inputs

    rate = reference.config["imagebind"]["audio"]["sample_rate"]
    return write_sample_inputs(tmp_path_factory.mktemp("inputs"), rate)


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory, tiny_dir):
    """Every component of the tiny checkpoint built once on ONNX Runtime (about 90 s on 2 cores)."""
    from export.build_engines import build

    out = tmp_path_factory.mktemp("engines") / "tiny"
    outcomes = build(tiny_dir, out, progress=False)
    return out, outcomes


@pytest.fixture(scope="session")
def runtime_ort(tiny_build):
    """The tiny build's pipeline on ONNX Runtime, the in-process answer the served ones must equal."""
    from runtime.pipeline import Any2AnyPipeline

    return Any2AnyPipeline(tiny_build[0], "onnxruntime")


@pytest.fixture(scope="session")
def heldout_world(tmp_path_factory) -> Path:
    """The synthetic world cut to one held-out record of each kind: one evaluation sample per task."""
    from train.synthetic import write_world

    kinds = ("image", "video", "audio", "text_to_image", "text_to_video", "text_to_audio")
    return write_world(tmp_path_factory.mktemp("heldout_world"), counts={"heldout": dict.fromkeys(kinds, 1)}, progress=False)


# image and video through the Q-Former, audio through the linear mode: one build covers both new modes
MIXED_PROJECTOR_MODES = {"image": "qformer", "video": "qformer", "audio": "linear"}


@pytest.fixture(scope="session")
def mixed_projector_dir(tmp_path_factory, tiny_dir) -> Path:
    """The embedded checkpoint with its output projectors drawn afresh in MIXED_PROJECTOR_MODES."""
    from train.compare_projectors import rebuild_projectors
    from train.model import load_checkpoint, save_checkpoint

    model = load_checkpoint(tiny_dir)
    rebuild_projectors(model, MIXED_PROJECTOR_MODES, seed=3)
    out = tmp_path_factory.mktemp("mixed_projectors") / "tiny"
    save_checkpoint(model, out)
    return out


@pytest.fixture(scope="session")
def mixed_projector_build(tmp_path_factory, mixed_projector_dir):
    """Every component of that checkpoint built once on ONNX Runtime."""
    from export.build_engines import build

    out = tmp_path_factory.mktemp("mixed_engines") / "tiny"
    return out, build(mixed_projector_dir, out, progress=False)


@pytest.fixture(scope="session")
def conversation_world(tmp_path_factory) -> Path:
    """Held-out conversations of the world, one of each kind: two samples per follow-up task."""
    from train.conversations import write_conversations
    from train.synthetic import write_world

    root = write_world(tmp_path_factory.mktemp("conversation_world"), counts={"heldout": {"image": 1}}, progress=False)
    write_conversations(root, 0, {"heldout": {"ask": 1, "compare": 1, "transform": 1, "switch": 1}}, progress=False)
    return root
