# Sourced by the GPU scripts (gpu_anchor.sh, gpu_smoke.sh): the repository's Python, the GPU check and
# `step`. The Python is $PYTHON, else the repository's .venv, else python3; the repository root is put
# on PYTHONPATH, so no editable install is needed.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
failed=0

require_gpu() {  # SCRIPT: exit 3 with one line unless PyTorch sees a CUDA GPU
    local why
    why=$("$PYTHON" -c 'import torch; print("" if torch.cuda.is_available() else f"torch {torch.__version__} sees no CUDA device")' 2>&1 | tail -n 1)
    if [ -n "$why" ]; then
        echo "$1: needs a CUDA GPU visible to PyTorch ($PYTHON: $why)"
        exit 3
    fi
}

step() {  # NAME COMMAND...: run with a time limit, log to $out/NAME.log, show its end, count failures
    local name=$1
    shift
    echo "== $name ($(date -u +%T))"
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local status=$?
    if [ "$status" -ne 0 ]; then
        echo "$name failed with status $status; the end of its log:"
        failed=$((failed + 1))
    fi
    tail -n 25 "$out/$name.log"
    if [ -n "${ARCHIVE:-}" ]; then tar czf "$ARCHIVE" -C "$out" .; fi
}
