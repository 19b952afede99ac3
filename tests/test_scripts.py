"""Every script in train/ runs as the docs call it (`python train/script.py`): such a script has
train/ first on sys.path, where train/train.py would shadow the `train` package."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.relative_to(ROOT) for p in (ROOT / "train").glob("*.py") if 'if __name__ == "__main__"' in p.read_text())


def test_scripts_are_found():
    assert Path("train/train.py") in SCRIPTS and Path("train/evaluate.py") in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=str)
def test_script_starts_from_any_directory(script, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage:" in run.stdout
