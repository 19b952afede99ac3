#!/usr/bin/env bash
# Create or refresh .venv with the pinned dependencies; a no-op when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_browser.sh  # system packages: checked every time, apart from the Python stamp
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
stamp=.venv/.installed-$(cat requirements.txt constraints.txt pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -r requirements.txt -c constraints.txt
.venv/bin/python -m pip install -q --no-deps -e .
rm -f .venv/.installed-* && touch "$stamp"
