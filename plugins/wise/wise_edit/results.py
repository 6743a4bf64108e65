"""Result files: every run records its config, code version, model, data hash and timings."""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import transformers

from .version import __version__
from .errors import RunError
from .evaluation import TABLE_COLUMNS


def code_version() -> dict[str, Any]:
    """The package version and, inside a git checkout, the commit and whether the tree had changes, as they
    were when this process imported the package: a long run writes its results hours later, and the checkout
    may have moved on meanwhile (a checkpoint once named a commit made while its run was going)."""
    return copy.deepcopy(_AT_IMPORT)


def _read_code_version() -> dict[str, Any]:
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


_AT_IMPORT = _read_code_version()


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically: readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)
    return path


def write_json_or_fallback(path: str | Path, payload: dict[str, Any]) -> Path:
    """:func:`write_json`; if ``path`` cannot be written, the results go to a temporary file and the error says
    where (a run's results are never lost because its output directory broke at the end)."""
    try:
        return write_json(path, payload)
    except OSError as exc:
        fallback = Path(tempfile.gettempdir()) / f"wise-edit-results-{os.getpid()}-{int(time.time())}.json"
        write_json(fallback, payload)
        raise RunError(f"could not write {path} ({exc}); the results were saved to {fallback}") from None


@contextlib.contextmanager
def lock_output_dir(directory: str | Path) -> Iterator[None]:
    """Hold ``directory`` for one live run: a second run into it is refused instead of overwriting the first."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise RunError(f"{directory} is in use by a live run ({owner}); wait for it to end or choose another "
                           "output_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def markdown_table(rows: list[dict[str, Any]], keys: tuple[str, ...] = ("method", "T")) -> str:
    """A Markdown table of summaries; only metric columns that some row has are shown."""
    metrics = [m for m in TABLE_COLUMNS if any(m in r for r in rows)]
    head = [*keys, *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in rows:
        cells = [str(row.get(k, "")) for k in keys]
        cells += [f"{row[m]:.3f}" if isinstance(row.get(m), float) else "" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
