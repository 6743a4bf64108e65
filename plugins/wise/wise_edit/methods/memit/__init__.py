from ...registry import register_method
from .config import MEMITHyperParams
from .method import MEMIT

register_method("MEMIT", MEMITHyperParams, MEMIT)

__all__ = ["MEMITHyperParams", "MEMIT"]
