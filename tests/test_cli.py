"""The command lines' shared vocabulary: every console entry point's --help, the help layout, the
backend labels and the refusal to overwrite a folder by accident."""
import argparse
import hashlib
import importlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from runtime.backends import BACKENDS, BackendUnavailable, check_build_serves, resolve_backend
from runtime.cli import add_backend, backend_list, make_parser, refuse_non_empty, shows_default

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
# every other command, as `python path/to/script.py` runs it
SCRIPTS = {
    p.name: f"{'.'.join(p.relative_to(ROOT).with_suffix('').parts)}:main"
    for folder in ("benchmarks", "train", "triton_repo", "export")
    for p in sorted((ROOT / folder).glob("*.py"))
    if "\ndef main(" in p.read_text() and f"{folder}.{p.stem}:main" not in ENTRY_POINTS.values()
}
RETIRED_FLAGS = {"--device", "--triton", "--timeout"}  # the vocabulary's old words: a backend label, --url, two timeouts


def test_the_main_commands_have_entry_points():
    assert {"any2any", "any2any-build", "any2any-serve", "any2any-client", "any2any-evaluate", "any2any-train",
            "any2any-compare-precision", "any2any-compare-latency", "any2any-make-tiny"} <= set(ENTRY_POINTS)


def test_the_other_commands_are_found():
    assert {"triton_load.py", "soak.py", "perf_analyzer.py", "generate.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", [*sorted(ENTRY_POINTS), *sorted(SCRIPTS)])
def test_every_command_helps(name, monkeypatch, capsys):
    """As the installed console script (or the script) runs it: sys.argv[0] is the command's name."""
    module, function = {**ENTRY_POINTS, **SCRIPTS}[name].split(":")
    main = getattr(importlib.import_module(module), function)
    parsers = []
    print_help = argparse.ArgumentParser.print_help
    monkeypatch.setattr(argparse.ArgumentParser, "print_help", lambda self, file=None: (parsers.append(self), print_help(self, file)))
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {name} "), text[:200]
    flat = " ".join(text.split())
    options = {o for action in parsers[0]._actions for o in action.option_strings}
    assert not options & RETIRED_FLAGS or name == "embed_captions.py"  # its --device is torch's, for the text encoders
    for action in parsers[0]._actions:
        if action.option_strings and shows_default(action):
            assert f"(default: {action.default})" in flat, f"{action.option_strings[0]}'s default is not shown"
    # a usage example whose line ended in an unescaped backslash comes out joined into one long line
    assert not re.search(r"\S {4,}\[--", text), "a docstring line continuation mangled the usage example"


def test_defaults_are_shown_also_without_help_text_and_none_is_not():
    p = make_parser("doc")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="denoising steps")
    p.add_argument("--quiet", action="store_true")
    add_backend(p)
    text = p.format_help()
    assert re.search(r"--seed SEED +\(default: 0\)\n", text)
    assert "denoising steps\n" in text and "None" not in text and "False" not in text
    assert "(default: onnxruntime)" in text


def test_python_dash_m_runtime_names_itself(monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(ROOT / "runtime" / "__main__.py")])
    assert make_parser("doc", "python -m runtime").prog == "python -m runtime"
    monkeypatch.setattr(sys, "argv", ["any2any"])
    assert make_parser("doc", "python -m runtime").prog == "any2any"


def test_backend_labels_are_one_vocabulary():
    assert {"torch", "onnxruntime", "onnxruntime-cuda", "onnxruntime-trt", "tensorrt"} <= set(BACKENDS)
    assert resolve_backend("onnxruntime-trt") == ("onnxruntime", "tensorrt")
    assert backend_list("torch, onnxruntime-cuda") == ["torch", "onnxruntime-cuda"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown backend 'cuda'; known: torch"):
        backend_list("torch,cuda")
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        resolve_backend("gpu")


def test_an_onnxruntime_build_refuses_the_tensorrt_label_in_one_line():
    build = SimpleNamespace(root=Path("engines/tiny"), components={"llm": {"backend": "onnxruntime"}})
    for label in ("torch", "onnxruntime", "onnxruntime-cuda", "onnxruntime-trt"):
        check_build_serves(build, label)
    with pytest.raises(BackendUnavailable) as refused:
        check_build_serves(build, "tensorrt")
    message = str(refused.value)
    assert "\n" not in message and "holds engines for onnxruntime" in message and "onnxruntime-trt" in message and "not tensorrt" in message


def test_a_runtime_cli_with_an_unknown_backend_exits_2(capsys):
    from runtime.__main__ import parse_args

    with pytest.raises(SystemExit) as done:
        parse_args(["--engines", "x", "--prompt", "p", "--out", "o", "--backend", "cuda"])
    assert done.value.code == 2 and "invalid choice: 'cuda'" in capsys.readouterr().err


def test_refuse_non_empty(tmp_path, capsys):
    refuse_non_empty(tmp_path / "new", force=False)
    (tmp_path / "empty").mkdir()
    refuse_non_empty(tmp_path / "empty", force=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    refuse_non_empty(tmp_path / "full", force=True)
    with pytest.raises(SystemExit) as done:
        refuse_non_empty(tmp_path / "full", force=False)
    assert done.value.code == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'full'} is not empty; pass --force to write into it\n"


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_make_tiny_without_arguments_leaves_the_embedded_checkpoint_alone(tiny_dir):
    before = _tree_digest(tiny_dir)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "train/make_tiny.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {Path('train/checkpoints/tiny')} is not empty; pass --force to write into it"]
    assert _tree_digest(tiny_dir) == before


@pytest.mark.parametrize("module", ["export.build_engines", "train.train", "train.import_nextgpt", "triton_repo.build_repo"])
def test_writers_refuse_a_non_empty_out_before_any_work(module, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("mine")
    argv = {
        "export.build_engines": ["--checkpoint", str(tmp_path / "none")],
        "train.train": ["--config", str(tmp_path / "none.yaml"), "--checkpoint", str(tmp_path / "none")],
        "train.import_nextgpt": [f"--{n}={tmp_path / 'none'}" for n in ("imagebind", "vicuna", "delta", "sd", "audioldm", "zeroscope")],
        "triton_repo.build_repo": ["--engines", str(tmp_path / "none")],
    }[module]
    with pytest.raises(SystemExit) as done:
        importlib.import_module(module).main([*argv, "--out", str(out)])
    assert done.value.code == 2 and "pass --force" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep"] and (out / "keep").read_text() == "mine"
