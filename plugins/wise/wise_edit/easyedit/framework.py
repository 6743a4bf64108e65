"""Importing the installed EasyEdit (``easyeditor``) and giving its ``BaseEditor`` a model path it can load."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..hparams import HyperParamsError
from ..models import BUNDLED_MODELS, cache_dir, resolve_model_path

#: ``BaseEditor`` picks its model loader by the first of these substrings found in ``model_name`` (checked in
#: this order by upstream EasyEdit); the value is the ``model_type`` each one serves
FRAMEWORK_LOADERS: tuple[tuple[str, str], ...] = (
    ("t5", "t5"), ("gpt", "gpt2"), ("gpt", "gptj"), ("gpt", "gpt_neox"), ("llama", "llama"),
    ("baichuan", "baichuan"), ("chatglm", "chatglm"), ("internlm", "internlm"), ("qwen2", "qwen2"),
    ("qwen3", "qwen3"), ("mistral", "mistral"))


def install_shims() -> None:
    """Names ``easyeditor==0.0.1.dev0`` imports from ``transformers.modeling_utils`` (its BLIP-2 code).

    transformers 5 moved ``apply_chunking_to_forward`` and ``prune_linear_layer`` to ``pytorch_utils`` and
    removed ``find_pruneable_heads_and_indices``; without them ``import easyeditor`` fails. They are added
    only when missing, only when the bridge is used.
    """
    from transformers import modeling_utils, pytorch_utils

    for name in ("apply_chunking_to_forward", "prune_linear_layer"):
        if not hasattr(modeling_utils, name) and hasattr(pytorch_utils, name):
            setattr(modeling_utils, name, getattr(pytorch_utils, name))
    if not hasattr(modeling_utils, "find_pruneable_heads_and_indices"):
        modeling_utils.find_pruneable_heads_and_indices = _find_pruneable_heads_and_indices


def _find_pruneable_heads_and_indices(heads: list[int], n_heads: int, head_size: int,
                                      already_pruned_heads: set[int]) -> tuple[set[int], torch.LongTensor]:
    """The heads still to prune and the indices of the entries to keep (transformers 4's contract)."""
    heads_left = set(heads) - already_pruned_heads
    keep = torch.ones(n_heads, head_size)
    for head in heads_left:
        keep[head - sum(1 for h in already_pruned_heads if h < head)] = 0
    return heads_left, torch.arange(keep.numel())[keep.view(-1).eq(1)].long()


def framework() -> Any:
    """``import easyeditor``, with the shims it needs in place (import it through this, not directly)."""
    install_shims()
    import easyeditor

    return easyeditor


def framework_model_path(model_name: str) -> str:
    """A local directory of ``model_name`` whose path makes ``BaseEditor`` pick the right loader.

    The framework chooses its loader by substrings of ``model_name`` (``llama``, ``qwen2``, ``gpt``, ...); the
    bundled model's directory (``.../smollm2-135m``) has none, so a link named after the model's
    ``model_type`` is made in the plugin's cache (``<cache>/easyedit/llama-smollm2-135m``). A directory whose
    path already selects the loader of its ``model_type`` is returned as it is; a Hugging Face id is returned
    unchanged (the framework loads it).
    """
    if model_name not in BUNDLED_MODELS and not Path(model_name).expanduser().is_dir():
        return model_name
    path = Path(resolve_model_path(model_name)).expanduser().resolve()
    try:
        model_type = json.loads((path / "config.json").read_text())["model_type"]
    except (OSError, ValueError, KeyError) as exc:
        raise HyperParamsError(f"model_name {model_name!r}: {path / 'config.json'} has no model_type") from exc
    token = next((t for t, served in FRAMEWORK_LOADERS if served == model_type), None)
    if token is None:
        raise HyperParamsError(
            f"model_name {model_name!r}: EasyEdit's BaseEditor has no loader for model_type {model_type!r} "
            f"(it knows {sorted({served for _, served in FRAMEWORK_LOADERS})}); call ALG_DICT[alg] directly")
    if _framework_loader(str(path)) == token:
        return str(path)
    link = cache_dir() / "easyedit" / f"{token}-{path.name}"
    if _framework_loader(str(link)) != token:
        raise HyperParamsError(f"model_name {model_name!r}: the cache path {link} selects EasyEdit's "
                               f"{_framework_loader(str(link))!r} loader, not {token!r}; set WISE_EDIT_CACHE")
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink() or link.resolve() != path:
        tmp = link.with_name(f".{link.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(path, target_is_directory=True)
        tmp.replace(link)  # atomic: a concurrent caller sees the old link or the new one
    return str(link)


def _framework_loader(model_name: str) -> str | None:
    lowered = model_name.lower()
    return next((token for token, _ in FRAMEWORK_LOADERS if token in lowered), None)
