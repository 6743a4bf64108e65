#!/usr/bin/env bash
# Set up, then run the whole test suite: the plugin's tests in .venv, then the EasyEdit bridge tests in
# their own environment (.venv-easyedit, see scripts/setup_easyedit.sh), once against the PyPI easyeditor and
# once against upstream EasyEdit 14cea82.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest tests --ignore=tests/bridge "$@"
bash scripts/setup_easyedit.sh
.venv-easyedit/bin/python -m pytest tests/bridge "$@"
WISE_EDIT_FRAMEWORK=upstream PYTHONPATH="$(bash scripts/setup_easyedit.sh --upstream-path)" .venv-easyedit/bin/python -m pytest tests/bridge "$@"
