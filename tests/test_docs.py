"""Every command README.md and docs/*.md show exists, takes every flag it is shown with, and accepts
the documented values; every Python block runs on the tiny build; every relative link resolves.

The entry points run in one subprocess, each once per documented argument list plus `--help`:
argparse then rejects a wrong choice or type before answering, and the flags are checked against
the help it prints."""
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from doc_commands import DOCS, MARK, ROOT, Call, classify, documented_calls, fenced

CALLS = documented_calls()
RUNNABLE = ("script", "module")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's code, not an installed copy


@pytest.fixture(scope="module")
def answers() -> dict[tuple[str, str], list[tuple[Call, dict]]]:
    """Every runnable call's answer, from one subprocess."""
    calls = [c for c in CALLS if c.kind in RUNNABLE]
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "doc_commands.py"), json.dumps([[c.kind, c.target, c.args] for c in calls])],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    lines = [line for line in run.stdout.splitlines() if line.startswith(MARK)]
    assert lines, f"the runner gave no results\n{run.stderr[-3000:]}"
    by_target: dict[tuple[str, str], list[tuple[Call, dict]]] = {}
    for call, answer in zip(calls, json.loads(lines[-1].removeprefix(MARK))):
        by_target.setdefault((call.kind, call.target), []).append((call, answer))
    return by_target


def test_the_documents_show_commands_of_every_kind():
    kinds = {c.kind for c in CALLS}
    assert {"script", "module", "bash", "pytest"} <= kinds, kinds
    assert len({c.target for c in CALLS if c.kind == "script"}) >= 15


def test_the_reader_splits_continuations_separators_and_environment():
    call = classify("x", "", ["FULL=1", ".venv/bin/python", "-m", "torch.distributed.run", "--standalone", "train/train.py", "--out", "o"])
    assert (call.kind, call.target, call.flags) == ("script", "train/train.py", ["--out"])
    assert classify("x", "", ["ls"]).kind == "unknown"


@pytest.mark.parametrize("call", [c for c in CALLS if c.kind == "unknown"] or [None], ids=lambda c: c.line[:60] if c else "none")
def test_every_command_is_a_project_entry_point_or_a_known_tool(call):
    assert call is None, f"{call.source}: {call.line!r}: {call.target} is neither a project entry point nor a known external tool"


@pytest.mark.parametrize("target", sorted({(c.kind, c.target) for c in CALLS if c.kind in RUNNABLE}), ids=lambda t: t[1])
def test_every_documented_call_is_accepted_with_every_flag(target, answers):
    for call, answer in answers[target]:
        where = f"{call.source}: {call.line}"
        assert answer["code"] == 0, f"{where}\nexit {answer['code']}: {answer['err']}"
        assert "usage:" in answer["out"], f"{where}\nno help printed: {answer['err']}"
        missing = [f for f in call.flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", answer["out"])]
        assert not missing, f"{where}\nflags not in the help: {missing}"


@pytest.mark.parametrize("call", [c for c in CALLS if c.kind in ("bash", "pytest")], ids=lambda c: c.line[:60])
def test_every_documented_file_exists(call):
    files = [call.target] if call.kind == "bash" else [a for a in call.args if a.endswith(".py")]
    assert files and all((ROOT / f).is_file() for f in files), f"{call.source}: {call.line}"
    if call.kind == "bash":
        assert subprocess.run(["bash", "-n", str(ROOT / call.target)]).returncode == 0


def _entry_points() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("scripts", {})


def _documented_entry_points() -> list[str]:
    names = {c.target for c in CALLS if c.kind == "entry_point"}
    for path in DOCS:
        names |= set(re.findall(r"`(any2any(?:-[a-z-]+)?)`", path.read_text()))
    return sorted(names)


@pytest.mark.parametrize("name", _documented_entry_points(), ids=str)
def test_every_documented_console_entry_point_is_declared(name):
    scripts = _entry_points()
    assert name in scripts, f"{name} is documented but not in pyproject.toml's [project.scripts]"
    module, _, function = scripts[name].partition(":")
    run = subprocess.run([sys.executable, "-c", f"import {module} as m; assert callable(m.{function})"],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


def _links() -> list[tuple[Path, str]]:
    found = []
    for path in DOCS:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        found += [(path, t.split("#")[0]) for t in LINK.findall(text) if "://" not in t and not t.startswith("#")]
    return sorted(set(found))


@pytest.mark.parametrize("link", _links(), ids=lambda l: f"{l[0].name}->{l[1]}")
def test_every_relative_link_resolves(link):
    path, target = link
    assert (path.parent / target).exists(), f"{path.relative_to(ROOT)} links to {target}, which does not exist"


def test_every_python_block_runs_on_the_tiny_build(tiny_build, tmp_path):
    """The blocks run as a reader would run them, from a folder where the demo has run: its build at
    engines/tiny and its sample inputs at outputs/demo/inputs/."""
    from train.demo import write_sample_inputs

    (tmp_path / "engines").mkdir()
    build_dir, _ = tiny_build
    (tmp_path / "engines" / "tiny").symlink_to(build_dir)
    write_sample_inputs(tmp_path / "outputs" / "demo" / "inputs", 16000)
    blocks = [(path, block) for path in DOCS for block in fenced(path, ("python",))]
    assert blocks
    for path, block in blocks:
        run = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"{path.relative_to(ROOT)}:\n{block}\n{run.stderr[-3000:]}"
