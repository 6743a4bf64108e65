from ...registry import register_method
from .config import WISEHyperParams
from .method import WISE

register_method("WISE", WISEHyperParams, WISE)

__all__ = ["WISEHyperParams", "WISE"]
