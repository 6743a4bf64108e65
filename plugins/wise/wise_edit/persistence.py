"""Saving an editor's edits next to an unchanged base model, and loading them onto a fresh copy of it.

A saved directory holds ``edits.safetensors`` (everything the method changed: memories, shard deltas,
thresholds, masks, permutation, codebooks, edited matrices) and ``edits.json`` (hyperparameters, the edit log,
a fingerprint of the base matrices, code version). The frozen base weights are not copied: loading needs the
same base model, and a different one (other weights or layer shapes) is refused with the reason.
The same files are the checkpoints of a resumable edit stream.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from .errors import EditStateError, NonFiniteError
from .results import code_version
from .sites import resolve_site

if TYPE_CHECKING:
    from .editor import LifelongEditor

STATE_FILE, META_FILE = "edits.safetensors", "edits.json"


def fingerprint(model: PreTrainedModel, inner_params: list[str]) -> dict[str, dict[str, Any]]:
    """Shape and content hash of each configured matrix (taken before editing: the base the edits need)."""
    prints = {}
    for path in inner_params:
        weight = resolve_site(model, path).linear.weight.detach()
        prints[path] = {"shape": list(weight.shape),
                        "sha256": hashlib.sha256(weight.cpu().contiguous().numpy().tobytes()).hexdigest()}
    return prints


def save_edits(editor: "LifelongEditor", directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the editor's state to ``directory`` (replaced atomically, so a kill never leaves half a state)."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().contiguous().cpu() for k, v in editor.method.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteError(f"the {editor.hparams.alg_name} edit state has NaN or infinite values in {bad}; "
                             f"not saved to {directory}")
    save_file(state, str(tmp / STATE_FILE))
    meta = {"alg_name": editor.hparams.alg_name, "hparams": editor.hparams.to_dict(),
            "base_fingerprint": editor.base_fingerprint, "edit_log": editor.edit_log,
            "method_state": editor.method.extra_state(),
            "code_version": code_version(), **(extra or {})}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    if directory.exists():
        old = directory.with_name(directory.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old)
    else:
        tmp.rename(directory)
    return directory


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    if not path.is_file() or not (Path(directory) / STATE_FILE).is_file():
        raise EditStateError(f"{directory} is not a saved edit state (needs {META_FILE} and {STATE_FILE})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EditStateError(f"{path}: not a readable edit-state description ({exc})") from None
    missing = [k for k in ("alg_name", "hparams", "base_fingerprint", "edit_log") if k not in meta]
    if missing:
        raise EditStateError(f"{path}: missing entries {missing}")
    return meta


def restore(editor: "LifelongEditor", directory: str | Path) -> dict[str, Any]:
    """Put the state saved in ``directory`` into ``editor`` (whose model must be the unedited base)."""
    directory = Path(directory)
    meta = read_meta(directory)
    if meta["alg_name"] != editor.hparams.alg_name:
        raise EditStateError(f"{directory} holds {meta['alg_name']} edits, this editor runs {editor.hparams.alg_name}")
    for path, saved in meta["base_fingerprint"].items():
        here = editor.base_fingerprint.get(path)
        if here is None:
            raise EditStateError(f"{directory}: edits were made at {path!r}, this editor edits "
                                 f"{sorted(editor.base_fingerprint)}")
        if here["shape"] != saved["shape"]:
            raise EditStateError(f"{directory}: {path} had shape {saved['shape']} when saved, this model's is "
                                 f"{here['shape']}: a different base model")
        if here["sha256"] != saved["sha256"]:
            raise EditStateError(f"{directory}: {path} differs from the base the edits were made on "
                                 "(a different or already edited model)")
    device = editor.model.device
    try:
        state = {k: v.to(device) for k, v in load_file(str(directory / STATE_FILE)).items()}
    except Exception as exc:  # safetensors raises its own error type for a truncated or foreign file
        raise EditStateError(f"{directory / STATE_FILE}: not a readable safetensors file ({exc})") from None
    try:
        editor.method.load_state_dict(state)
    except KeyError as missing:
        raise EditStateError(f"{directory / STATE_FILE}: the saved {editor.hparams.alg_name} state has no "
                             f"entry {missing}") from None
    except EditStateError as exc:
        raise EditStateError(f"{directory / STATE_FILE}: {exc}") from None
    editor.method.load_extra_state(meta.get("method_state", {}))
    editor.edit_log = list(meta["edit_log"])
    return meta
