"""``python -m wise_edit.easyedit SCRIPT [ARGS...]``: run an EasyEdit script unchanged, with the plugin inside.

The script runs as ``python SCRIPT ARGS`` would run it (its own ``sys.argv``, its folder first on
``sys.path``, ``__name__ == "__main__"``) and imports ``easyeditor`` from wherever it would. The moment that
import finishes:

- every plugin method is in ``ALG_DICT`` (:func:`~wise_edit.easyedit.apply.register` with ``override=True``:
  the framework's own WISE, GRACE, ROME and MEMIT still edit with their own hyperparameter files);
- each framework hyperparameter class loads a plugin file as the plugin's class of the file's ``alg_name``
  (:func:`~wise_edit.easyedit.hparams.follow_alg_name`): ``WISEHyperParams.from_hparams(
  "hparams/WISE/smollm2-135m.yaml")`` is the plugin's WISE and recipe, a MEMOIR file is MEMOIR;
- the framework restores a plugin method's model after a one-at-a-time edit by calling what the method
  returned (upstream's ``CALLABLE_RESTORE_ALGS``; :class:`~wise_edit.easyedit.apply.Restore`).

Nothing of this happens without the launcher.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import runpy
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, Sequence

from ..registry import registered_methods
from .apply import register
from .framework import install_shims
from .hparams import follow_alg_name

USAGE = "usage: python -m wise_edit.easyedit SCRIPT [ARGS...]  (an EasyEdit script, e.g. examples/run_wise_editing.py)"


class _AfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds module ``name`` as the other finders would and calls ``then(module)`` once it has executed."""

    def __init__(self, name: str, then: Callable[[ModuleType], None]):
        self.name, self.then, self.loader = name, then, None

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # one import only; and the other finders must not find this one again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__.loader = module.__loader__ = self.loader
        self.loader.exec_module(module)
        self.then(module)


def install(easyeditor: ModuleType) -> None:
    """Put the plugin into an imported ``easyeditor`` (see the module's docstring)."""
    from easyeditor.util import alg_dict
    from easyeditor.util.hparams import HyperParams as FrameworkHyperParams

    framework_algs = frozenset(name for name, apply in alg_dict.ALG_DICT.items()
                               if not hasattr(apply, "wise_edit_alg"))
    register(override=True)
    stack = list(FrameworkHyperParams.__subclasses__())
    while stack:
        cls = stack.pop()
        stack += cls.__subclasses__()
        if "from_hparams" in vars(cls) and cls.__module__.startswith("easyeditor"):
            follow_alg_name(cls, framework_algs, on_load=_announce)
    restore = sys.modules.get("easyeditor.editors.utils")
    callable_restore = getattr(restore, "CALLABLE_RESTORE_ALGS", None)
    if isinstance(callable_restore, set):
        callable_restore.update(set(registered_methods()) - framework_algs)


def _announce(path: Path, whose: str) -> None:
    print(f"wise_edit: {path} loads as {whose}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``argv[0]`` (a script path) with ``argv[1:]`` as its arguments and the plugin installed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        raise SystemExit(USAGE)
    script = Path(argv[0])
    if not script.is_file():
        raise SystemExit(f"error: {script}: no such script\n{USAGE}")
    install_shims()
    if "easyeditor" in sys.modules:
        install(sys.modules["easyeditor"])
    else:
        sys.meta_path.insert(0, _AfterImport("easyeditor", install))
    sys.argv = [str(script), *argv[1:]]
    sys.path.insert(0, str(script.resolve().parent))
    runpy.run_path(str(script), run_name="__main__")
