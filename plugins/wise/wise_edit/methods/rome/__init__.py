from ...registry import register_method
from .config import ROMEHyperParams
from .method import ROME

register_method("ROME", ROMEHyperParams, ROME)

__all__ = ["ROMEHyperParams", "ROME"]
