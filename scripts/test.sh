#!/usr/bin/env bash
# Set up, then run the whole test suite: the plugin's tests in .venv, then the EasyEdit bridge tests in
# their own environment (.venv-easyedit, with the PyPI easyeditor; see scripts/setup_easyedit.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest tests --ignore=tests/bridge "$@"
bash scripts/setup_easyedit.sh
.venv-easyedit/bin/python -m pytest tests/bridge "$@"
