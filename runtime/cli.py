"""What every command line of the project shares: the help layout, the backend and server flags, and
the refusal to write into a folder that already holds something."""
from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable, Collection
from pathlib import Path

from runtime.backends import BACKENDS

DEFAULT_URL = "127.0.0.1:8001"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The description as written (its usage examples keep their lines) and every option's default,
    also where the option has no help text, unless it means "not given" (`shows_default`)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if not shows_default(action):
            return action.help or ""
        return super()._get_help_string(action)

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and action.option_strings and shows_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


def shows_default(action: argparse.Action) -> bool:
    """False for a default that means "not given" (None, a flag's False, an empty string)."""
    default = action.default
    return not (default is None or default is False or default == "" or default == argparse.SUPPRESS)


def make_parser(doc: str | None, module_prog: str | None = None) -> argparse.ArgumentParser:
    """An argument parser whose help is `doc` (the command's module docstring) and shows defaults.
    Its usage line names the command as it was called (a script, a console entry point), or
    `module_prog` (`python -m runtime`) when that was a package's `__main__.py`."""
    prog = module_prog if module_prog and Path(sys.argv[0]).name == "__main__.py" else None
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=HelpFormatter)


def add_backend(
    p: argparse.ArgumentParser, default: str | None = "onnxruntime", labels: tuple[str, ...] = tuple(BACKENDS), help: str = ""
) -> None:
    """`--backend LABEL`: one of the project's backend labels (`runtime.backends.BACKENDS`)."""
    p.add_argument("--backend", choices=labels, default=default, help=help or "what runs the engines")


def comma_list(what: str, known: Collection[str], all_word: str | None = None, hint: str = "") -> Callable[[str], list[str]]:
    """An argparse type for `A,B,...` of the `known` names (`all_word` alone: every one of them): the
    first unknown name, or an empty list, is refused in one line that names the known ones."""

    def parse(text: str) -> list[str]:
        names = list(known) if all_word and text == all_word else [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown[0] if unknown else text!r}; known: {', '.join(known)}{hint}")
        return names

    return parse


backend_list = comma_list("backend", tuple(BACKENDS))  # `--backends L1,L2,...`: labels compared side by side


def add_backends(p: argparse.ArgumentParser, default: str, help: str = "") -> None:
    p.add_argument("--backends", type=backend_list, default=default, help=help or f"comma-separated, of {', '.join(BACKENDS)}")


def add_url(p: argparse.ArgumentParser, default: str | None = DEFAULT_URL, help: str = "the Triton server's gRPC address") -> None:
    p.add_argument("--url", metavar="HOST:PORT", default=default, help=help)


def add_load_url(p: argparse.ArgumentParser) -> None:
    """The load tools' `--url`: a server started elsewhere, or none (they start one here)."""
    add_url(p, None, "a running server's gRPC address (default: start one here)")


def add_force(p: argparse.ArgumentParser, help: str = "write into --out even if it already holds files") -> None:
    p.add_argument("--force", action="store_true", help=help)


def refuse_non_empty(out: Path, force: bool) -> None:
    """The one check every command that writes a checkpoint or a build makes before any work: an
    existing folder with anything in it is written into only when the user said `--force`;
    otherwise one `error:` line naming it and exit status 2."""
    out = Path(out)
    if force or not out.exists():
        return
    if not out.is_dir():
        problem = "exists and is not a folder"
    elif any(out.iterdir()):
        problem = "is not empty; pass --force to write into it"
    else:
        return
    print(f"error: {out} {problem}", file=sys.stderr)
    raise SystemExit(2)
