"""Bridge into an installed EasyEdit (``easyeditor``): the plugin's methods through the framework's dispatch.

Run the framework's own scripts with the plugin inside (:mod:`wise_edit.easyedit.launcher`)::

    python -m wise_edit.easyedit examples/run_wise_editing.py --editing_method=WISE \\
        --hparams_dir=hparams/WISE/smollm2-135m.yaml --data_dir=data --data_type=ZsRE --sequential_edit

or register by hand::

    from wise_edit.easyedit import register, hparams_class
    register()                                          # adds WISE, MEMOIR, GRACE, ... to ALG_DICT
    hparams = hparams_class("WISE").from_hparams("hparams/WISE/smollm2-135m.yaml")
    model, weights_copy = ALG_DICT["WISE"](model, tok, requests, hparams)

Only what the PyPI release ``easyeditor==0.0.1.dev0`` and upstream EasyEdit (tested at 14cea82) share is
used: the ``easyeditor.util.alg_dict.ALG_DICT`` dict, the ``easyeditor.util.hparams.HyperParams`` base, the apply
function signature, and the settings ``BaseEditor`` and its evaluation read from any hyperparameter object
(``model_parallel``, ``fp16``, ...; :data:`FRAMEWORK_SETTINGS`). Nothing here runs unless this package is
imported; the rest of the plugin never imports ``easyeditor``.
"""

from .apply import Restore, editor_for, make_apply, register
from .framework import FRAMEWORK_LOADERS, framework, framework_model_path
from .hparams import FRAMEWORK_SETTINGS, UPSTREAM_ONLY_KEYS, follow_alg_name, hparams_class, is_plugin_file

__all__ = ["register", "hparams_class", "editor_for", "make_apply", "Restore", "framework", "framework_model_path",
           "follow_alg_name", "is_plugin_file", "FRAMEWORK_LOADERS", "FRAMEWORK_SETTINGS", "UPSTREAM_ONLY_KEYS"]
