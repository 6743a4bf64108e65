"""wise-edit: lifelong knowledge editing (WISE, MEMOIR and baselines) for the EasyEdit framework."""

__version__ = "0.1.0"  # first: modules imported below read it

from .editor import LifelongEditor, make_requests, summarize
from .hparams import HyperParams, HyperParamsError
from .errors import EditStateError
from .persistence import load_edits, save_edits
from .registry import get_method, register_method, registered_methods

__all__ = ["LifelongEditor", "HyperParams", "HyperParamsError", "get_method", "register_method",
           "registered_methods", "make_requests", "summarize", "save_edits", "load_edits", "EditStateError"]
