from .config import MEMITHyperParams
from .method import MEMIT

__all__ = ["MEMITHyperParams", "MEMIT"]
