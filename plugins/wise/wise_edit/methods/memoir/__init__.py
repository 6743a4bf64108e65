from ...registry import register_method
from .config import MEMOIRHyperParams
from .method import MEMOIR

register_method("MEMOIR", MEMOIRHyperParams, MEMOIR)

__all__ = ["MEMOIRHyperParams", "MEMOIR"]
