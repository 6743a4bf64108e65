from .config import FTLHyperParams
from .method import FTL

__all__ = ["FTLHyperParams", "FTL"]
