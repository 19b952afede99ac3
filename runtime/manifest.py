"""`manifest.json`: the only contract between build time and run time.

It lists, per component, the engine files with their hashes, the backend and precision, the IO
(names, dtypes, symbolic shapes), the dynamic-axis ranges and the checkpoint parts it came from;
plus the model config, the tokenizer folder and the constants (unconditional embeddings) that
run time needs. A build whose files do not match their recorded hashes is refused.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT = 1


class ManifestError(ValueError):
    """A missing, foreign or stale build."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(path: Path) -> str:
    """A file's hash, or for a folder the hash of every file's relative path and hash, sorted."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{f.relative_to(path).as_posix()}:{sha256_file(f)}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Build:
    root: Path
    data: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return self.data["config"]

    @property
    def components(self) -> dict[str, dict[str, Any]]:
        return self.data["components"]

    def component(self, name: str) -> dict[str, Any]:
        if name not in self.components:
            raise ManifestError(f"{self.root}: the build has no component {name!r} (built: {', '.join(self.components)})")
        return self.components[name]

    def path(self, relative: str) -> Path:
        return self.root / relative

    def verify_files(self, names: list[str] | None = None) -> None:
        """Every engine file named by the manifest exists and has its recorded hash."""
        entries = [(n, self.component(n)) for n in (names or list(self.components))]
        entries.append(("constants", self.data["constants"]))
        for name, entry in entries:
            for rel, digest in entry["files"].items():
                path = self.path(rel)
                if not path.exists():
                    raise ManifestError(f"{name}: engine file {path} is missing; rebuild with export/build_engines.py")
                if sha256_tree(path) != digest:
                    raise ManifestError(f"{name}: {path} does not match the manifest (stale or foreign); rebuild it")


def read_manifest(root: Path) -> Build:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{root}: no {MANIFEST}; build engines first with export/build_engines.py")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from None
    if data.get("format") != FORMAT:
        raise ManifestError(f"{path}: manifest format {data.get('format')!r}, this runtime reads {FORMAT}")
    return Build(Path(root), data)


def write_manifest(root: Path, data: dict[str, Any]) -> Path:
    """Atomic: a reader sees the old manifest or the new one, never half of one."""
    path = root / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"format": FORMAT, **data}, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
