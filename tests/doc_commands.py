"""The commands README.md and docs/*.md show, and a runner that asks each entry point for its help.

Imported by tests/test_docs.py to read the documents; run as a script it executes entry points in
one process (torch and the rest imported once), each with a documented argument list plus
`--help`, and prints every exit status with its output as JSON:

    python tests/doc_commands.py '[["script", "export/build_engines.py", ["--out", "x"]], ...]'
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import runpy
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # docs/notes/ is history, not instructions
FENCE = re.compile(r"^([ \t]*)```([\w-]*)[ \t]*\n(.*?)^\1```", re.M | re.S)
SHELLS = ("bash", "sh", "shell", "console")
PYTHONS = ("python", "python3", "python3.11", ".venv/bin/python")
SEPARATORS = ("&&", "||", ";", "|")
ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=")
FLAG = re.compile(r"^(--?[A-Za-z][\w-]*)")
# Programs the project does not ship: their flags are their own documentation's business.
EXTERNAL = ("cd", "cp", "curl", "docker", "echo", "export", "git", "hadolint", "helm", "kubectl", "kubernetes-validate", "mkdir", "nvidia-smi", "pip", "rsync")
# `python -m LAUNCHER ... script.py args`: the script's flags are checked, not the launcher's
LAUNCHERS = ("torch.distributed.run",)
MARK = "doc-commands: "  # the line with the results, whatever else an import printed


@dataclass
class Call:
    """One documented command: where it is, what it runs and with which arguments."""

    source: str
    line: str
    kind: str  # script, module, bash, pytest, entry_point, external, unknown
    target: str
    args: list[str] = field(default_factory=list)

    @property
    def flags(self) -> list[str]:
        return [m.group(1) for a in self.args if (m := FLAG.match(a))]


def fenced(path: Path, languages: tuple[str, ...]) -> list[str]:
    """The bodies of a Markdown file's fenced blocks in one of `languages`, indentation removed."""
    blocks = []
    for indent, language, body in FENCE.findall(path.read_text()):
        if language in languages:
            blocks.append("\n".join(line.removeprefix(indent) for line in body.splitlines()))
    return blocks


def _logical_lines(block: str) -> list[str]:
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _split(words: list[str]) -> list[list[str]]:
    commands, current = [], []
    for word in words:
        if word in SEPARATORS:
            commands.append(current)
            current = []
        else:
            current.append(word)
    return [c for c in [*commands, current] if c]


def classify(source: str, line: str, argv: list[str]) -> Call:
    while argv and ENV.match(argv[0]):
        argv = argv[1:]
    program, rest = argv[0], argv[1:]
    if program in PYTHONS and rest[:1] == ["-m"]:
        module, rest = rest[1], rest[2:]
        if module == "pytest":
            return Call(source, line, "pytest", module, rest)
        if module in LAUNCHERS:
            script = next((i for i, a in enumerate(rest) if a.endswith(".py")), None)
            if script is None:
                return Call(source, line, "unknown", module, rest)
            return Call(source, line, "script", rest[script], rest[script + 1:])
        return Call(source, line, "module", module, rest)
    if program in PYTHONS:
        return Call(source, line, "script", rest[0], rest[1:])
    if program == "bash":
        return Call(source, line, "bash", rest[0], rest[1:])
    if program.startswith("any2any"):
        return Call(source, line, "entry_point", program, rest)
    if program in EXTERNAL:
        return Call(source, line, "external", program, rest)
    return Call(source, line, "unknown", program, rest)


def documented_calls(docs: list[Path] = DOCS) -> list[Call]:
    """Every command of every shell block in `docs`."""
    calls = []
    for path in docs:
        source = str(path.relative_to(ROOT))
        for block in fenced(path, SHELLS):
            for line in _logical_lines(block):
                for argv in _split(shlex.split(line, comments=True)):
                    calls.append(classify(source, line, argv))
    return calls


def _run_once(kind: str, target: str, args: list[str]) -> dict[str, object]:
    out, err = io.StringIO(), io.StringIO()
    code: object = 0
    argv0 = str(ROOT / target) if kind == "script" else target
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [argv0, *args, "--help"]
    if kind == "script":
        sys.path[0] = str(Path(argv0).parent)  # as `python path/to/script.py` has it
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if kind == "script":
                runpy.run_path(argv0, run_name="__main__")
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if e.code is not None else 0
    except Exception as e:  # a crash before argparse answered: the documented call cannot work
        code, err = 1, io.StringIO(f"{type(e).__name__}: {e}")
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()[-2000:]}


def main() -> None:
    results = [_run_once(kind, target, args) for kind, target, args in json.loads(sys.argv[1])]
    print(MARK + json.dumps(results))


if __name__ == "__main__":
    main()
