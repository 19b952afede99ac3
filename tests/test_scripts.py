"""Every script in train/ runs as the docs call it (`python train/script.py`): such a script has
train/ first on sys.path, where train/train.py would shadow the `train` package. The GPU scripts pick
the repository's Python and need no editable install; without a GPU they stop at once."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_smoke import main as smoke
from runtime.backends import BackendUnavailable, require_tensorrt

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.relative_to(ROOT) for p in (ROOT / "train").glob("*.py") if 'if __name__ == "__main__"' in p.read_text())
GPU_SCRIPTS = ("scripts/gpu_smoke.sh", "scripts/gpu_anchor.sh")


def _without_pythonpath() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHON")}


@pytest.mark.parametrize("script", SCRIPTS, ids=str)
def test_script_starts_from_any_directory(script, tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=tmp_path, env=_without_pythonpath(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage:" in run.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU; this one has one")
@pytest.mark.parametrize("script", GPU_SCRIPTS)
def test_a_gpu_script_without_a_gpu_exits_3_with_one_line(script, tmp_path):
    # a python3 first on PATH that fails: the script must take the repository's .venv instead
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text("#!/bin/sh\nexit 42\n")
    (bin_dir / "python3").chmod(stat.S_IRWXU)
    env = {**_without_pythonpath(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    run = subprocess.run(["bash", str(ROOT / script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    lines = (run.stdout + run.stderr).splitlines()
    assert run.returncode == 3 and len(lines) == 1, run.stdout + run.stderr
    assert "needs a CUDA GPU visible to PyTorch (.venv/bin/python: torch" in lines[0]


def test_the_smoke_steps_run_from_any_directory(tmp_path):
    """As the smoke script calls them: PYTHONPATH = the repository, no editable install."""
    env = {**_without_pythonpath(), "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "benchmarks.gpu_smoke", "environment", "--out", str(tmp_path)]
    info = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and "onnxruntime providers available: " in info.stdout, info.stderr[-2000:]


def test_a_smoke_step_without_its_library_says_so_in_one_line(tmp_path, capsys):
    try:
        require_tensorrt()
    except BackendUnavailable as e:
        assert smoke(["cuda_graph", "--out", str(tmp_path)]) == 0
        assert capsys.readouterr().out.splitlines() == [f"SKIP cuda_graph: {e}"]
    else:
        pytest.skip("TensorRT and a GPU are here: the step runs")
