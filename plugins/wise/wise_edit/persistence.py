"""Edit states on disk: file-level functions that read and write them, and never build an editor.

A saved directory holds ``edits.safetensors`` (everything the method changed: memories, shard deltas,
thresholds, masks, permutation, codebooks, edited matrices) and ``edits.json``, the state's record
(hyperparameters, the edit log, a fingerprint of the base matrices, code version and, for a checkpoint of a
stream, its progress). The frozen base weights are not copied: loading needs the same base model, and a
different one (other weights or layer shapes) is refused with the reason (:func:`check_base`).
The same files are the checkpoints of a resumable edit stream.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from .errors import EditStateError, NonFiniteError
from .sites import resolve_site

STATE_FILE, RECORD_FILE = "edits.safetensors", "edits.json"
#: what every record holds
RECORD_KEYS = ("alg_name", "hparams", "base_fingerprint", "edit_log")


def fingerprint(model: PreTrainedModel, inner_params: list[str]) -> dict[str, dict[str, Any]]:
    """Shape and content hash of each configured matrix (taken before editing: the base the edits need)."""
    prints = {}
    for path in inner_params:
        weight = resolve_site(model, path).linear.weight.detach()
        prints[path] = {"shape": list(weight.shape),
                        "sha256": hashlib.sha256(weight.cpu().contiguous().numpy().tobytes()).hexdigest()}
    return prints


def write_state(directory: str | Path, tensors: dict[str, torch.Tensor], record: dict[str, Any]) -> Path:
    """Write ``tensors`` and ``record`` to ``directory``, replaced atomically (a kill never leaves half a state).

    A state with NaN or infinite values is refused and nothing is written.
    """
    directory = Path(directory)
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise ValueError(f"an edit-state record needs {missing}")
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteError(f"the {record['alg_name']} edit state has NaN or infinite values in {bad}; "
                             f"not saved to {directory}")
    tmp = directory.with_name(directory.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / STATE_FILE))
    (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str))
    if directory.exists():
        old = directory.with_name(directory.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old)
    else:
        tmp.rename(directory)
    return directory


def is_state(directory: str | Path) -> bool:
    return (Path(directory) / RECORD_FILE).exists()


def read_record(directory: str | Path) -> dict[str, Any]:
    """The record of the state saved in ``directory``; a missing or unreadable one is an error naming the file."""
    path = Path(directory) / RECORD_FILE
    if not path.is_file() or not (Path(directory) / STATE_FILE).is_file():
        raise EditStateError(f"{directory} is not a saved edit state (needs {RECORD_FILE} and {STATE_FILE})")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EditStateError(f"{path}: not a readable edit-state description ({exc})") from None
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise EditStateError(f"{path}: missing entries {missing}")
    return record


def read_tensors(directory: str | Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    path = Path(directory) / STATE_FILE
    try:
        return {k: v.to(device) for k, v in load_file(str(path)).items()}
    except Exception as exc:  # safetensors raises its own error type for a truncated or foreign file
        raise EditStateError(f"{path}: not a readable safetensors file ({exc})") from None


def check_base(record: dict[str, Any], base: dict[str, dict[str, Any]], directory: str | Path) -> None:
    """Refuse, with the reason, to put the state saved in ``directory`` on a model whose unedited matrices
    (``base``: :func:`fingerprint`) are not those the edits were made on."""
    for path, saved in record["base_fingerprint"].items():
        here = base.get(path)
        if here is None:
            raise EditStateError(f"{directory}: edits were made at {path!r}, this editor edits {sorted(base)}")
        if here["shape"] != saved["shape"]:
            raise EditStateError(f"{directory}: {path} had shape {saved['shape']} when saved, this model's is "
                                 f"{here['shape']}: a different base model")
        if here["sha256"] != saved["sha256"]:
            raise EditStateError(f"{directory}: {path} differs from the base the edits were made on "
                                 "(a different or already edited model)")
