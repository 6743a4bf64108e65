"""wise-edit: lifelong knowledge editing (WISE, MEMOIR and baselines) for the EasyEdit framework."""

from .editor import LifelongEditor, make_requests, summarize
from .hparams import HyperParams, HyperParamsError
from .registry import get_method, register_method, registered_methods

__all__ = ["LifelongEditor", "HyperParams", "HyperParamsError", "get_method", "register_method",
           "registered_methods", "make_requests", "summarize"]
__version__ = "0.1.0"
