"""Bridge into an installed EasyEdit (``easyeditor``): the plugin's methods through the framework's dispatch.

    from wise_edit.easyedit import register, hparams_class
    register()                                          # adds WISE, MEMOIR, GRACE, ... to ALG_DICT
    hparams = hparams_class("WISE").from_hparams("hparams/WISE/smollm2-135m.yaml")
    model, weights_copy = ALG_DICT["WISE"](model, tok, requests, hparams)

Only what the PyPI release ``easyeditor==0.0.1.dev0`` and upstream EasyEdit (tested at 14cea82) share is
used: the ``easyeditor.util.alg_dict.ALG_DICT`` dict, the ``easyeditor.util.hparams.HyperParams`` base, the apply
function signature, and the settings ``BaseEditor`` and its evaluation read from any hyperparameter object
(``model_parallel``, ``fp16``, ...; :data:`FRAMEWORK_SETTINGS`). Nothing here runs unless this module is imported;
the rest of the plugin never imports ``easyeditor``.

Edits accumulate (the lifelong protocol): each model gets one plugin editor per method, created on the first
call and reused by every later call, so the 100th edit lands in the same memory as the first.
"""

from __future__ import annotations

import copy as copying
import dataclasses
import json
import logging
import os
import weakref
from pathlib import Path
from typing import Any, Callable

import torch

from .chat import chat_requests
from .editor import LifelongEditor
from .hparams import HyperParams, HyperParamsError
from .models import BUNDLED_MODELS, cache_dir, resolve_model_path
from .registry import get_method, registered_methods
from .request import EditRequest

log = logging.getLogger(__name__)

#: keys of upstream EasyEdit YAML files that this plugin has no use for; dropped (with a note) on load
UPSTREAM_ONLY_KEYS = frozenset({"merge_alg", "objective_optimization", "weights", "lambdas", "replay",
                                "stats_dir", "save_path", "mom2_dtype",
                                "fact_token", "layers", "rewrite_module_tmp", "layer_module_tmp",
                                "mlp_module_tmp", "attn_module_tmp", "ln_f_module", "lm_head_module",
                                "context_template_length_params", "mom2_adjustment", "v_loss_layer",
                                "mom2_n_samples", "dist_fn", "val_init", "val_train", "val_reg", "reg",
                                "replacement", "eps_expand", "num_pert", "dropout"})

#: settings the framework's ``BaseEditor`` and evaluation read from every hyperparameter object, with the
#: framework's defaults; a YAML file may set them and they are kept on the loaded object
FRAMEWORK_SETTINGS: dict[str, Any] = {"model_parallel": False, "fp16": False, "use_chat_template": False,
                                      "evaluation_type": None}

#: ``BaseEditor`` picks its model loader by the first of these substrings found in ``model_name`` (checked in
#: this order by upstream EasyEdit); the value is the ``model_type`` each one serves
FRAMEWORK_LOADERS: tuple[tuple[str, str], ...] = (
    ("t5", "t5"), ("gpt", "gpt2"), ("gpt", "gptj"), ("gpt", "gpt_neox"), ("llama", "llama"),
    ("baichuan", "baichuan"), ("chatglm", "chatglm"), ("internlm", "internlm"), ("qwen2", "qwen2"),
    ("qwen3", "qwen3"), ("mistral", "mistral"))

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


def hparams_class(alg_name: str) -> type:
    """The method's hyperparameter class, also derived from ``easyeditor.util.hparams.HyperParams``.

    Loaded objects carry the framework's settings (:data:`FRAMEWORK_SETTINGS`) and a ``model_name`` the
    framework's ``BaseEditor`` can load (:func:`framework_model_path`), so ``BaseEditor.from_hparams`` works.
    """
    if alg_name not in _CLASSES:
        _install_shims()
        from easyeditor.util.hparams import HyperParams as FrameworkHyperParams

        ours = get_method(alg_name).hparams_cls

        def from_dict(cls, data: dict[str, Any], source: str = "<dict>"):
            dropped = sorted(set(data) & (UPSTREAM_ONLY_KEYS - {f.name for f in dataclasses.fields(ours)}))
            if dropped:
                log.info("%s: keys %s are upstream EasyEdit settings this plugin does not use", source, dropped)
            settings = {k: data[k] for k in FRAMEWORK_SETTINGS if k in data}
            values = {k: v for k, v in data.items() if k not in dropped and k not in settings}
            if "model_name" in values:
                values["model_name"] = framework_model_path(str(values["model_name"]))
            obj = ours.from_dict.__func__(cls, values, source)
            for key, value in settings.items():
                setattr(obj, key, value)
            return obj

        def replace(self, **overrides: Any):
            settings = {k: getattr(self, k) for k in FRAMEWORK_SETTINGS}
            return type(self).from_dict({**self.to_dict(), **settings, **overrides}, source="hparams overrides")

        def __getattr__(self, name: str) -> Any:  # only reached for names the object does not have
            if name.startswith("__"):
                raise AttributeError(name)
            raise AttributeError(_missing_setting(type(self), name))

        namespace = {"from_dict": classmethod(from_dict), "replace": replace, "__getattr__": __getattr__,
                     "__module__": __name__, **FRAMEWORK_SETTINGS}
        _CLASSES[alg_name] = type(f"{ours.__name__}ForEasyEdit", (ours, FrameworkHyperParams), namespace)
    return _CLASSES[alg_name]


def _missing_setting(cls: type, name: str) -> str:
    """Why a framework method asked a plugin hparams object for ``name``: usually, it is not the plugin's."""
    from easyeditor.util import alg_dict

    alg = cls.ALG_NAME
    current = alg_dict.ALG_DICT.get(alg)
    if current is not None and getattr(current, "wise_edit_alg", None) != alg:
        return (f"{cls.__name__} has no setting {name!r}: ALG_DICT[{alg!r}] is EasyEdit's own {alg}, which reads "
                f"its own hyperparameters. Call wise_edit.easyedit.register(override=True) to edit with the "
                f"plugin's {alg}, or load the framework's hyperparameter class for its own {alg}")
    return f"{cls.__name__} has no setting {name!r}"


def _as_plugin_hparams(hparams: Any, alg_name: str) -> HyperParams:
    if isinstance(hparams, HyperParams):
        return hparams
    fields = {f.name for f in dataclasses.fields(get_method(alg_name).hparams_cls)}
    values = {k: v for k, v in vars(hparams).items() if k in fields}
    return hparams_class(alg_name).from_dict({**values, "alg_name": alg_name}, source=type(hparams).__name__)


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
        if getattr(hparams, "use_chat_template", False):  # the framework scores these prompts in the template
            batch = chat_requests(tok, batch)
        editor.method.check_requests(batch)  # a record the method cannot edit stops the call before any edit
        fallback = editor.method.prefixes or [""]
        batch = [r if r.irrelevant_text else r.replace(irrelevant_text=fallback[i % len(fallback)] or r.prompt)
                 for i, r in enumerate(batch)]  # framework records carry no irrelevant training text
        for start in range(0, len(batch), plugin_hparams.batch_size):
            editor.apply(batch[start:start + plugin_hparams.batch_size])
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
