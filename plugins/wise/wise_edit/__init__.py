"""wise-edit: lifelong knowledge editing (WISE, MEMOIR and baselines) for the EasyEdit framework."""

from . import methods  # noqa: F401  (registers the built-in methods)
from .editor import LifelongEditor, load_edits, make_requests, save_edits
from .evaluation import summarize
from .errors import EditStateError
from .hparams import HyperParams, HyperParamsError
from .registry import get_method, load_hparams, register_method, registered_methods
from .request import EditRequest
from .version import __version__

__all__ = ["LifelongEditor", "HyperParams", "HyperParamsError", "get_method", "load_hparams", "register_method",
           "registered_methods", "make_requests", "EditRequest", "summarize", "save_edits", "load_edits",
           "EditStateError", "__version__"]
