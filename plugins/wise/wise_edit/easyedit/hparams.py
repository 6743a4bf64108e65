"""The plugin's hyperparameter classes as the framework sees them, and which class loads a given YAML file.

:func:`hparams_class` derives each method's class from ``easyeditor.util.hparams.HyperParams`` as well, so the
framework's ``BaseEditor`` and evaluation can read it. :func:`follow_alg_name` (installed by the launcher) makes
the framework's own classes (``WISEHyperParams.from_hparams`` ...) hand a plugin file to the plugin's class of
the file's ``alg_name``, and every other file to the framework's class as before.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any, Callable

from ..hparams import HyperParams, HyperParamsError, read_mapping
from ..registry import get_method, registered_methods
from .framework import framework_model_path, install_shims

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

_CLASSES: dict[str, type] = {}


def hparams_class(alg_name: str) -> type:
    """The method's hyperparameter class, also derived from ``easyeditor.util.hparams.HyperParams``.

    Loaded objects carry the framework's settings (:data:`FRAMEWORK_SETTINGS`) and a ``model_name`` the
    framework's ``BaseEditor`` can load (:func:`framework_model_path`), so ``BaseEditor.from_hparams`` works.
    """
    if alg_name not in _CLASSES:
        install_shims()
        from easyeditor.util.hparams import HyperParams as FrameworkHyperParams

        ours = get_method(alg_name).hparams_cls

        def from_dict(cls, data: dict[str, Any], source: str = "<dict>"):
            dropped = sorted(set(data) & (UPSTREAM_ONLY_KEYS - _plugin_keys(alg_name)))
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


def _plugin_keys(alg_name: str) -> set[str]:
    return {f.name for f in dataclasses.fields(get_method(alg_name).hparams_cls)}


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


def as_plugin_hparams(hparams: Any, alg_name: str) -> HyperParams:
    """``hparams`` as the plugin's hyperparameters of ``alg_name`` (a framework object: the fields they share)."""
    if isinstance(hparams, HyperParams):
        return hparams
    values = {k: v for k, v in vars(hparams).items() if k in _plugin_keys(alg_name)}
    return hparams_class(alg_name).from_dict({**values, "alg_name": alg_name}, source=type(hparams).__name__)


def is_plugin_file(data: dict[str, Any], framework_has: bool) -> bool:
    """Whether a YAML mapping is one of the plugin's hyperparameter files.

    Its ``alg_name`` must be a plugin method; a method only the plugin has takes any such file (its loader then
    names a wrong key), one the framework also has (WISE, GRACE, ROME, MEMIT) only a file whose every key is the
    plugin's or a framework setting: upstream's own files carry keys the plugin lacks (``merge_alg``,
    ``objective_optimization``, ``layers``, ...).
    """
    alg_name = data.get("alg_name")
    if alg_name not in registered_methods():
        return False
    return not framework_has or set(data) <= _plugin_keys(alg_name) | set(FRAMEWORK_SETTINGS)


def follow_alg_name(framework_cls: type, framework_algs: frozenset[str],
                    on_load: Callable[[Path, str], None] | None = None) -> None:
    """Make ``framework_cls.from_hparams`` load a plugin file (:func:`is_plugin_file`) as the plugin's class of
    the file's ``alg_name``, and any other file as before. ``framework_algs``: the methods the framework has
    itself; ``on_load(path, whose)`` hears which implementation each file went to ("the plugin's WISE",
    "EasyEdit's WISEHyperParams"). A file neither loads is refused naming the file and the keys the plugin
    does not know."""
    original = framework_cls.__dict__["from_hparams"].__func__
    if getattr(original, "wise_edit_follows", False):
        return

    @functools.wraps(original)
    def from_hparams(cls, hparams_name_or_path, *args, **kwargs):
        path = _yaml_path(hparams_name_or_path)
        data = read_mapping(path) if path.is_file() else {}
        alg_name = data.get("alg_name")
        if is_plugin_file(data, alg_name in framework_algs):
            loaded = hparams_class(alg_name).from_hparams(path)
            if on_load is not None:
                on_load(path, f"the plugin's {alg_name}")
            return loaded
        try:
            loaded = original(cls, hparams_name_or_path, *args, **kwargs)
        except (TypeError, KeyError, AssertionError, ValueError) as exc:
            if alg_name not in registered_methods():
                raise
            unknown = sorted(set(data) - _plugin_keys(alg_name) - set(FRAMEWORK_SETTINGS) - UPSTREAM_ONLY_KEYS)
            raise HyperParamsError(
                f"{path}: neither the plugin's {alg_name} (unknown key(s) {unknown}) nor EasyEdit's "
                f"{cls.__name__} ({type(exc).__name__}: {exc}) loads this file") from None
        if on_load is not None:
            on_load(path, f"EasyEdit's {cls.__name__}")
        return loaded

    from_hparams.wise_edit_follows = True
    framework_cls.from_hparams = classmethod(from_hparams)


def _yaml_path(name_or_path: Any) -> Path:
    """The file EasyEdit's loaders read for ``name_or_path`` (they add ``.yaml`` when it is missing)."""
    path = Path(str(name_or_path))
    return path if path.suffix in (".yaml", ".yml", ".json") else Path(f"{path}.yaml")
