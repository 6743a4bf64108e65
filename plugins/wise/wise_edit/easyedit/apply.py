"""The framework's apply functions for the plugin's methods, and their registration in ``ALG_DICT``.

Edits accumulate (the lifelong protocol): each model gets one plugin editor per method, created on the first
call and reused by every later call, so the 100th edit lands in the same memory as the first.
"""

from __future__ import annotations

import copy as copying
import logging
import weakref
from typing import Any, Callable

import torch

from ..chat import chat_requests
from ..editor import LifelongEditor
from ..hparams import HyperParams
from ..registry import registered_methods
from ..request import EditRequest
from .framework import install_shims
from .hparams import as_plugin_hparams

log = logging.getLogger(__name__)

_EDITORS: "weakref.WeakKeyDictionary[torch.nn.Module, dict[str, LifelongEditor]]" = weakref.WeakKeyDictionary()


class Restore(dict):
    """What an apply call returns as ``weights_copy``: undoes that call's edits either way the framework
    restores a model after a one-at-a-time edit (upstream ``restore_after_edit``).

    As a dict it holds the pre-edit copies of the model parameters the method writes (FT-L, ROME, MEMIT), which
    the framework copies back; called, it also puts the method's own state back (side memories, codebooks,
    gates) and forgets the call's edits.
    """

    def __init__(self, editor: LifelongEditor, params: dict[str, torch.Tensor]):
        super().__init__(params)
        self._editor = editor
        self._state = editor.method.state_dict()
        self._logged = len(editor.edit_log)

    def __call__(self) -> None:
        self._editor.method.load_state_dict(self._state)
        del self._editor.edit_log[self._logged:]


def _request(record: dict[str, Any], index: int) -> EditRequest:
    """A framework request (``ZsreDataset`` record, ``BaseEditor`` request) as the plugin's request."""
    record = dict(record)
    if isinstance(record.get("target_new"), dict):  # CounterFact style {"str": ...}
        record["target_new"] = record["target_new"]["str"]
    if isinstance(record.get("locality"), dict) and "locality_prompt" not in record:
        group = next(iter(record["locality"].values()), {})
        if isinstance(group, dict) and group.get("prompt"):
            record["locality_prompt"] = group["prompt"] if isinstance(group["prompt"], str) else group["prompt"][0]
            truth = group.get("ground_truth")
            record["locality_ground_truth"] = truth if isinstance(truth, str) else (truth or [""])[0]
    return EditRequest.from_easyedit(record, index)


def _editor(model: torch.nn.Module, tok: Any, hparams: HyperParams) -> LifelongEditor:
    editors = _EDITORS.setdefault(model, {})
    if hparams.alg_name not in editors:
        editors[hparams.alg_name] = LifelongEditor(hparams, model=model, tok=tok)
    return editors[hparams.alg_name]


def make_apply(alg_name: str, framework_own: Callable[..., Any] | None = None
               ) -> Callable[..., tuple[torch.nn.Module, dict[str, torch.Tensor]]]:
    """The framework's apply function for ``alg_name``.

    ``framework_own``: the framework's own method of that name, which still edits when it is given the
    framework's own hyperparameters (an upstream YAML file); the plugin's hyperparameters go to the plugin.
    """

    def apply_to_model(model, tok, requests, hparams, copy=False, return_orig_weights=False,
                       keep_original_weight=False, **kwargs):
        if framework_own is not None and not isinstance(hparams, HyperParams):
            return framework_own(model, tok, requests, hparams, copy=copy, return_orig_weights=return_orig_weights,
                                 keep_original_weight=keep_original_weight, **kwargs)
        if copy:
            model = copying.deepcopy(model)
        plugin_hparams = as_plugin_hparams(hparams, alg_name)
        editor = _editor(model, tok, plugin_hparams)
        restore = {}
        if return_orig_weights:
            params = dict(model.named_parameters())
            restore = Restore(editor, {name: params[name].detach().clone()
                                       for name in (f"{site.module_path}.weight" for site in editor.method.sites)
                                       if name in params})
        batch = [_request(r, i) for i, r in enumerate(requests)]
        if getattr(hparams, "use_chat_template", False):  # the framework scores these prompts in the template
            batch = chat_requests(tok, batch)
        editor.method.check_requests(batch)  # a record the method cannot edit stops the call before any edit
        fallback = editor.method.prefixes or [""]
        batch = [r if r.irrelevant_text else r.replace(irrelevant_text=fallback[i % len(fallback)] or r.prompt)
                 for i, r in enumerate(batch)]  # framework records carry no irrelevant training text
        for start in range(0, len(batch), plugin_hparams.batch_size):
            editor.apply(batch[start:start + plugin_hparams.batch_size])
        return model, restore

    apply_to_model.__name__ = f"apply_{alg_name.lower().replace('-', '_')}_to_model"
    apply_to_model.wise_edit_alg = alg_name  # marks the functions this bridge installed
    return apply_to_model


def editor_for(model: torch.nn.Module, alg_name: str) -> LifelongEditor:
    """The plugin editor holding ``model``'s ``alg_name`` edits (for saving them, or inspecting the memory)."""
    return _EDITORS[model][alg_name]


def register(override: bool = False) -> list[str]:
    """Add every plugin method to ``ALG_DICT``; returns the names added or replaced.

    A name the framework already has (its own ROME, MEMIT, GRACE or WISE) is left alone unless
    ``override=True``; then the plugin's hyperparameters edit with the plugin's method and the framework's own
    hyperparameters still with the framework's. Registering twice changes nothing.
    """
    install_shims()
    from easyeditor.util import alg_dict

    added = []
    for name in registered_methods():
        current = alg_dict.ALG_DICT.get(name)
        if current is not None and getattr(current, "wise_edit_alg", None) == name:
            continue
        if current is not None and not override:
            log.info("ALG_DICT already has %s; keeping the framework's (register(override=True) to replace)", name)
            continue
        alg_dict.ALG_DICT[name] = make_apply(name, framework_own=current)
        added.append(name)
    return added
