"""Result files: every run records its config, code version, model, data hash and timings."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
import transformers

from . import __version__


def code_version() -> dict[str, Any]:
    """The package version and, inside a git checkout, the commit and whether the tree had changes."""
    here = Path(__file__).resolve().parent
    info: dict[str, Any] = {"package": __version__, "torch": torch.__version__,
                            "transformers": transformers.__version__, "python": platform.python_version()}
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                            text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, check=True).stdout
        info["git_dirty"] = bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)
    return path


METRIC_COLUMNS = ("rel", "gen", "ood", "loc", "nloc", "avg", "ppl", "gen_em")


def markdown_table(rows: list[dict[str, Any]], keys: tuple[str, ...] = ("method", "T")) -> str:
    """A Markdown table of summaries; only metric columns that some row has are shown."""
    metrics = [m for m in METRIC_COLUMNS if any(m in r for r in rows)]
    head = [*keys, *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in rows:
        cells = [str(row.get(k, "")) for k in keys]
        cells += [f"{row[m]:.3f}" if isinstance(row.get(m), float) else "" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
