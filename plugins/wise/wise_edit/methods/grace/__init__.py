from .config import GRACEHyperParams
from .method import GRACE

__all__ = ["GRACEHyperParams", "GRACE"]
