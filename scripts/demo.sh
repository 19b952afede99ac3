#!/usr/bin/env bash
# Install (pinned) and run the main job on the embedded tiny checkpoint: build the engines (a no-op
# when up to date), write the Triton model repository, start the server on loopback, send one gRPC
# request per route, save the answers in outputs/demo/, stop the server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python triton_repo/demo.py --checkpoint train/checkpoints/tiny --engines engines/tiny \
    --repo outputs/triton_repo --out outputs/demo "$@"
