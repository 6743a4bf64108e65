#!/usr/bin/env bash
# Creates .venv-easyedit (or $VENV): the plugin plus the PyPI easyeditor==0.0.1.dev0, for the bridge tests.
# easyeditor's own pins cannot install on Python 3.11, so it goes in with --no-deps and the `easyedit` extra
# brings what importing it needs. Its timm needs torchvision, which does not import beside the local CPU
# torch 2.13.0; torch 2.14.1 + torchvision 0.29.1 (both on local disk) do, hence a separate environment.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-easyedit}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$VENV/bin/python" -m pip install -q -e ".[test,easyedit]"
"$VENV/bin/python" -m pip install -q --no-deps easyeditor==0.0.1.dev0
