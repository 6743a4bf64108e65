#!/usr/bin/env bash
# Set up, then run a small lifelong-editing job (MEMOIR, 10 ZsRE edits) on the bundled SmolLM2-135M model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python scripts/run_lifelong_editing.py alg_name=MEMOIR data=zsre ds_size=10 sequential_edit=true \
    output_dir=outputs/demo "$@"
