"""The one place that maps an ``alg_name`` to its hyperparameter class and its method class.

Nothing else in the package knows a method's name: the editor, CLI and bridges look methods up here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .hparams import HyperParams

if TYPE_CHECKING:
    from .methods.base import EditMethod


@dataclass(frozen=True)
class MethodSpec:
    alg_name: str
    hparams_cls: type[HyperParams]
    method_cls: type["EditMethod"]


_METHODS: dict[str, MethodSpec] = {}


def register_method(alg_name: str, hparams_cls: type[HyperParams], method_cls: type["EditMethod"]) -> None:
    """Make ``alg_name`` available to the editor, the CLI and the EasyEdit bridge."""
    existing = _METHODS.get(alg_name)
    if existing is not None and (existing.hparams_cls, existing.method_cls) != (hparams_cls, method_cls):
        raise ValueError(f"alg_name {alg_name!r} is already registered to {existing.method_cls.__name__}")
    hparams_cls.ALG_NAME = alg_name
    _METHODS[alg_name] = MethodSpec(alg_name, hparams_cls, method_cls)


def get_method(alg_name: str) -> MethodSpec:
    """The registered method ``alg_name`` (the built-in ones register when ``wise_edit`` is imported)."""
    try:
        return _METHODS[alg_name]
    except KeyError:
        raise KeyError(f"unknown alg_name {alg_name!r}; registered: {sorted(_METHODS)}") from None


def registered_methods() -> list[str]:
    return sorted(_METHODS)


def load_hparams(path: str | Path) -> HyperParams:
    """The hyperparameter file ``path`` as the class its ``alg_name`` registered (``.yaml`` optional)."""
    return HyperParams.from_hparams(path)
