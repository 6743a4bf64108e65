from ...registry import register_method
from .config import FTLHyperParams
from .method import FTL

register_method("FT-L", FTLHyperParams, FTL)

__all__ = ["FTLHyperParams", "FTL"]
