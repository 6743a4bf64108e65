"""Bridge into an installed EasyEdit (``easyeditor``): the plugin's methods through the framework's dispatch.

    from wise_edit.easyedit import register, hparams_class
    register()                                          # adds WISE, MEMOIR, GRACE, ... to ALG_DICT
    hparams = hparams_class("WISE").from_hparams("hparams/WISE/smollm2-135m.yaml")
    model, weights_copy = ALG_DICT["WISE"](model, tok, requests, hparams)

Only what the PyPI release ``easyeditor==0.0.1.dev0`` and current upstream EasyEdit share is used: the
``easyeditor.util.alg_dict.ALG_DICT`` dict, the ``easyeditor.util.hparams.HyperParams`` base and the apply
function signature. Nothing here runs unless this module is imported; the rest of the plugin never imports
``easyeditor``.

Edits accumulate (the lifelong protocol): each model gets one plugin editor per method, created on the first
call and reused by every later call, so the 100th edit lands in the same memory as the first.
"""

from __future__ import annotations

import copy as copying
import dataclasses
import logging
import weakref
from typing import Any, Callable

import torch

from .editor import LifelongEditor
from .hparams import HyperParams
from .registry import get_method, registered_methods

log = logging.getLogger(__name__)

#: keys of upstream EasyEdit YAML files that this plugin has no use for; dropped (with a note) on load
UPSTREAM_ONLY_KEYS = frozenset({"merge_alg", "objective_optimization", "weights", "lambdas", "replay",
                                "model_parallel", "use_chat_template", "stats_dir", "mom2_dtype",
                                "fact_token", "layers", "rewrite_module_tmp", "layer_module_tmp",
                                "mlp_module_tmp", "attn_module_tmp", "ln_f_module", "lm_head_module",
                                "context_template_length_params", "mom2_adjustment", "v_loss_layer",
                                "mom2_n_samples", "dist_fn", "val_init", "val_train", "val_reg", "reg",
                                "replacement", "eps_expand", "num_pert", "dropout"})

_EDITORS: "weakref.WeakKeyDictionary[torch.nn.Module, dict[str, LifelongEditor]]" = weakref.WeakKeyDictionary()
_CLASSES: dict[str, type] = {}


def _install_shims() -> None:
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
    _install_shims()
    import easyeditor

    return easyeditor


def hparams_class(alg_name: str) -> type:
    """The method's hyperparameter class, also derived from ``easyeditor.util.hparams.HyperParams``."""
    if alg_name not in _CLASSES:
        _install_shims()
        from easyeditor.util.hparams import HyperParams as FrameworkHyperParams

        ours = get_method(alg_name).hparams_cls

        def from_dict(cls, data: dict[str, Any], source: str = "<dict>"):
            dropped = sorted(set(data) & (UPSTREAM_ONLY_KEYS - {f.name for f in dataclasses.fields(ours)}))
            if dropped:
                log.info("%s: keys %s are upstream EasyEdit settings this plugin does not use", source, dropped)
            return ours.from_dict.__func__(cls, {k: v for k, v in data.items() if k not in dropped}, source)

        _CLASSES[alg_name] = type(f"{ours.__name__}ForEasyEdit", (ours, FrameworkHyperParams),
                                  {"from_dict": classmethod(from_dict), "__module__": __name__})
    return _CLASSES[alg_name]


def _as_plugin_hparams(hparams: Any, alg_name: str) -> HyperParams:
    if isinstance(hparams, HyperParams):
        return hparams
    fields = {f.name for f in dataclasses.fields(get_method(alg_name).hparams_cls)}
    values = {k: v for k, v in vars(hparams).items() if k in fields}
    return hparams_class(alg_name).from_dict({**values, "alg_name": alg_name}, source=type(hparams).__name__)


def _request(record: dict[str, Any], index: int) -> dict[str, Any]:
    """A framework request (``ZsreDataset`` record, ``BaseEditor`` request) as the plugin's request dict."""
    request = dict(record)
    request.setdefault("case_id", index)
    if isinstance(request.get("target_new"), dict):  # CounterFact style {"str": ...}
        request["target_new"] = request["target_new"]["str"]
    if isinstance(request.get("locality"), dict) and "locality_prompt" not in request:
        group = next(iter(request["locality"].values()), {})
        if isinstance(group, dict) and group.get("prompt"):
            request["locality_prompt"] = group["prompt"] if isinstance(group["prompt"], str) else group["prompt"][0]
            truth = group.get("ground_truth")
            request["locality_ground_truth"] = truth if isinstance(truth, str) else (truth or [""])[0]
    return request


def _editor(model: torch.nn.Module, tok: Any, hparams: HyperParams) -> LifelongEditor:
    editors = _EDITORS.setdefault(model, {})
    if hparams.alg_name not in editors:
        editors[hparams.alg_name] = LifelongEditor(hparams, model=model, tok=tok)
    return editors[hparams.alg_name]


def make_apply(alg_name: str) -> Callable[..., tuple[torch.nn.Module, dict[str, torch.Tensor]]]:
    """The framework's apply function for ``alg_name``."""

    def apply_to_model(model, tok, requests, hparams, copy=False, return_orig_weights=False,
                       keep_original_weight=False, **kwargs):
        if copy:
            model = copying.deepcopy(model)
        plugin_hparams = _as_plugin_hparams(hparams, alg_name)
        editor = _editor(model, tok, plugin_hparams)
        weights_copy = {}
        if return_orig_weights:  # what a method writes into the model's own parameters (FT-L, ROME, MEMIT)
            params = dict(model.named_parameters())
            weights_copy = {name: params[name].detach().clone()
                            for name in (f"{site.module_path}.weight" for site in editor.method.sites)
                            if name in params}
        batch = [_request(r, i) for i, r in enumerate(requests)]
        fallback = editor.method.prefixes or [""]
        for i, request in enumerate(batch):  # framework records carry no irrelevant training text
            request.setdefault("loc_prompt", fallback[i % len(fallback)] or request["prompt"])
        editor.method.prepare(batch)
        editor.method.apply(batch)
        editor.edit_log += [{"case_id": r["case_id"], "prompt": r["prompt"], "target_new": r["target_new"]}
                            for r in batch]
        return model, (weights_copy if keep_original_weight else {})

    apply_to_model.__name__ = f"apply_{alg_name.lower().replace('-', '_')}_to_model"
    apply_to_model.wise_edit_alg = alg_name  # marks the functions this bridge installed
    return apply_to_model


def editor_for(model: torch.nn.Module, alg_name: str) -> LifelongEditor:
    """The plugin editor holding ``model``'s ``alg_name`` edits (for saving them, or inspecting the memory)."""
    return _EDITORS[model][alg_name]


def register(override: bool = False) -> list[str]:
    """Add every plugin method to ``ALG_DICT``; returns the names added or replaced.

    A name the framework already has (its own ROME, MEMIT, GRACE or WISE) is left alone unless
    ``override=True``; registering twice changes nothing.
    """
    _install_shims()
    from easyeditor.util import alg_dict

    added = []
    for name in registered_methods():
        current = alg_dict.ALG_DICT.get(name)
        if current is not None and getattr(current, "wise_edit_alg", None) == name:
            continue
        if current is not None and not override:
            log.info("ALG_DICT already has %s; keeping the framework's (register(override=True) to replace)", name)
            continue
        alg_dict.ALG_DICT[name] = make_apply(name)
        added.append(name)
    return added
