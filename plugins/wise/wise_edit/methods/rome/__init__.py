from .config import ROMEHyperParams
from .method import ROME

__all__ = ["ROMEHyperParams", "ROME"]
