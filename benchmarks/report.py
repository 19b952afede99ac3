"""Where a benchmark's results go: the JSON beside its Markdown table."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def save_report(json_path: Path, result: dict[str, Any], markdown: str) -> None:
    """`json_path` and the same name with `.md`, parents created."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    json_path.with_suffix(".md").write_text(markdown)
