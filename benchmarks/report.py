"""Where a benchmark's results go: the JSON beside its Markdown table, both naming where they come from."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.machine import build_checkpoint, provenance, provenance_line


def with_provenance(markdown: str, line: str) -> str:
    """The provenance line under the Markdown's title (first, where it has none)."""
    title, sep, rest = markdown.partition("\n")
    if title.startswith("# ") and sep:
        return f"{title}\n\n{line}\n{rest}"
    return f"{line}\n\n{markdown}"


def build_provenance(build_dir: Path | None) -> dict[str, Any]:
    """The provenance of a run on `build_dir`'s engines (the checkpoint its manifest names)."""
    return provenance(build_checkpoint(build_dir) if build_dir else None)


def save_figure(fig: Any, path: Path, origin: dict[str, Any]) -> None:
    """A matplotlib figure as PNG, the provenance line in its Description text chunk."""
    fig.savefig(path, dpi=100, metadata={"Description": provenance_line(origin)})


def save_report(
    json_path: Path, result: dict[str, Any], markdown: str | None, build_dir: Path | None, random_weights: str | None = None
) -> dict[str, Any]:
    """`json_path` and, given `markdown`, the same name with `.md`, parents created; both name the
    provenance (commit, checkpoint hash or the random weights, CPU and its flags) of a run on
    `build_dir`'s engines, which is returned for the figures beside them."""
    origin = build_provenance(build_dir)
    if random_weights:
        origin = provenance(None, random_weights)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"provenance": origin, **result}, indent=2, allow_nan=False) + "\n")
    if markdown is not None:
        json_path.with_suffix(".md").write_text(with_provenance(markdown, provenance_line(origin)))
    return origin
