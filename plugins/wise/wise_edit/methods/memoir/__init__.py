from .config import MEMOIRHyperParams
from .method import MEMOIR

__all__ = ["MEMOIRHyperParams", "MEMOIR"]
