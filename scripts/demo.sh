#!/usr/bin/env bash
# Install (pinned) and run the main job on the embedded tiny checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python train/demo.py --checkpoint train/checkpoints/tiny --out outputs/demo "$@"
