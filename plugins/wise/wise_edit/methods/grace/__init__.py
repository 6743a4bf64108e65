from ...registry import register_method
from .config import GRACEHyperParams
from .method import GRACE

register_method("GRACE", GRACEHyperParams, GRACE)

__all__ = ["GRACEHyperParams", "GRACE"]
