#!/usr/bin/env bash
# perf_analyzer for this machine, from PyPI wheels, without installing anything:
#   bash scripts/get_perf_analyzer.sh [CACHE]      (default CACHE: ~/.cache/any2any/perf_analyzer)
# prints the path of a wrapper that runs it.
#
# Why this way: the perf-analyzer wheels on PyPI (2.58-2.60) need glibc 2.38 (Debian 12 has 2.36).
# The tritonclient 2.41.0 wheel ships a perf_analyzer binary that runs here given two libraries
# it links against: libcudart.so.12 (from the nvidia-cuda-runtime-cu12 wheel; no GPU is needed
# for gRPC load) and libb64.so.0d (bundled, renamed, in the nvidia-pytriton wheel of .venv).
# Both wheels are downloaded with `pip download --no-deps`, unpacked into CACHE, and left out of
# the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${1:-$HOME/.cache/any2any/perf_analyzer}"
PY=.venv/bin/python
mkdir -p "$CACHE/wheels" "$CACHE/lib" "$CACHE/bin"
if [ ! -x "$CACHE/bin/perf_analyzer" ]; then
    $PY -m pip download --quiet --no-deps -d "$CACHE/wheels" tritonclient==2.41.0 nvidia-cuda-runtime-cu12==12.9.79
    $PY - "$CACHE" <<'EOF'
import sys, zipfile
from pathlib import Path

cache = Path(sys.argv[1])
members = {
    "tritonclient-2.41.0": ("tritonclient-2.41.0.data/data/bin/perf_analyzer", cache / "bin" / "perf_analyzer"),
    "nvidia_cuda_runtime_cu12": ("nvidia/cuda_runtime/lib/libcudart.so.12", cache / "lib" / "libcudart.so.12"),
}
for wheel in (cache / "wheels").glob("*.whl"):
    for prefix, (member, target) in members.items():
        if wheel.name.startswith(prefix):
            target.write_bytes(zipfile.ZipFile(wheel).read(member))
            target.chmod(0o755)
EOF
fi
LIBB64=$($PY -c "import pytriton, pathlib; print(next((pathlib.Path(pytriton.__file__).parents[1] / 'nvidia_pytriton.libs').glob('libb64*.so.0d')))")
ln -sf "$LIBB64" "$CACHE/lib/libb64.so.0d"
cat > "$CACHE/perf_analyzer" <<EOF
#!/usr/bin/env bash
LD_LIBRARY_PATH="$CACHE/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$CACHE/bin/perf_analyzer" "\$@"
EOF
chmod +x "$CACHE/perf_analyzer"
"$CACHE/perf_analyzer" --version >/dev/null 2>&1 || { echo "error: $CACHE/perf_analyzer does not run here" >&2; exit 1; }
echo "$CACHE/perf_analyzer"
