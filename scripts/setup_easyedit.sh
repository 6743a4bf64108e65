#!/usr/bin/env bash
# Creates .venv-easyedit (or $VENV), one environment for the bridge tests against both EasyEdit versions:
# - the PyPI release easyeditor==0.0.1.dev0, installed; its own pins cannot install on Python 3.11, so it goes
#   in with --no-deps and the `easyedit` extra brings what importing it needs;
# - upstream EasyEdit 14cea82, unpacked from ../shared/vendor into .vendor/ (it has no setup.py): put
#   $(bash scripts/setup_easyedit.sh --upstream-path) first on PYTHONPATH to import it instead.
# `import easyeditor` needs torchvision (timm), which does not import beside the local CPU torch 2.13.0;
# torch 2.14.1 + torchvision 0.29.1 (both on local disk) do, hence an environment of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
UPSTREAM=.vendor/easyedit-14cea82
if [ "${1:-}" = "--upstream-path" ]; then echo "$PWD/$UPSTREAM/EasyEdit"; exit 0; fi
VENV="${VENV:-.venv-easyedit}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$VENV/bin/python" -m pip install -q -e ".[test,easyedit]"
"$VENV/bin/python" -m pip install -q --no-deps easyeditor==0.0.1.dev0
if [ ! -f "$UPSTREAM/EasyEdit/easyeditor/__init__.py" ]; then
  rm -rf "$UPSTREAM" && mkdir -p "$UPSTREAM"
  tar xzf ../shared/vendor/easyedit-14cea82.tar.gz -C "$UPSTREAM"
fi
