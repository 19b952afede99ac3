"""Every benchmark result names where it comes from: the commit, the checkpoint's hash, the CPU and its flags."""
import json
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.machine import cpu_flags, isa_flags, provenance
from benchmarks.report import save_report
from runtime.manifest import sha256_tree

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FILES = sorted(p for p in RESULTS.rglob("*") if p.is_file())


def _build(tmp_path: Path) -> tuple[Path, Path]:
    checkpoint = tmp_path / "checkpoint"
    (checkpoint / "decoders").mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "decoders" / "weights.bin").write_bytes(b"\x00\x01")
    build = tmp_path / "build"
    build.mkdir()
    (build / "manifest.json").write_text(json.dumps({"checkpoint": {"path": str(checkpoint)}}))
    return build, checkpoint


def test_a_report_names_the_commit_the_checkpoint_and_the_cpu(tmp_path):
    build, checkpoint = _build(tmp_path)
    save_report(tmp_path / "out" / "r.json", {"x": 1}, "# Title\n\nbody\n", build)
    data = json.loads((tmp_path / "out" / "r.json").read_text())
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert data["x"] == 1
    assert data["provenance"]["commit"] == head
    assert data["provenance"]["checkpoint"]["sha256"] == sha256_tree(checkpoint)
    assert data["provenance"]["cpu_flags"] == cpu_flags()
    title, blank, line = (tmp_path / "out" / "r.md").read_text().splitlines()[:3]
    assert (title, blank) == ("# Title", "")
    assert line.startswith(f"Commit {head[:12]}") and sha256_tree(checkpoint)[:16] in line
    assert all(flag in line for flag in isa_flags(cpu_flags()))


def test_a_checkpoint_that_is_not_there_has_no_hash_rather_than_a_wrong_one(tmp_path):
    assert provenance(tmp_path / "gone")["checkpoint"]["sha256"] is None


def _named(path: Path) -> bool:
    if path.suffix == ".json":
        p = json.loads(path.read_text()).get("provenance", {})
        weights = p.get("checkpoint", {})
        return bool(re.fullmatch(r"[0-9a-f]{40}", p.get("commit") or "")) and bool(
            re.fullmatch(r"[0-9a-f]{64}", weights.get("sha256") or "") or weights.get("random")) and bool(p.get("cpu")) and "cpu_flags" in p
    if path.suffix == ".md":
        return re.search(r"^Commit [0-9a-f]{12}.*; (checkpoint .* sha256 [0-9a-f]{16}|random weights \S.*); CPU ", path.read_text(), re.M) is not None
    if path.suffix == ".png":
        return Image.open(path).text.get("Description", "").startswith("Commit ")
    return False


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(RESULTS)))
def test_every_result_names_where_it_comes_from(path):
    assert _named(path), f"{path} names no commit, checkpoint hash and CPU"


def test_a_figure_carries_the_provenance_line(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.machine import provenance_line
    from benchmarks.report import build_provenance, save_figure

    build, _ = _build(tmp_path)
    origin = build_provenance(build)
    fig, _ = plt.subplots()
    save_figure(fig, tmp_path / "f.png", origin)
    plt.close(fig)
    assert Image.open(tmp_path / "f.png").text["Description"] == provenance_line(origin)
