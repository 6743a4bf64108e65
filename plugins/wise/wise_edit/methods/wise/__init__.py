from .config import WISEHyperParams
from .method import WISE

__all__ = ["WISEHyperParams", "WISE"]
