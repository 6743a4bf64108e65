"""Built-in editing methods; each line registers one (``alg_name`` -> hyperparameters, method)."""

from ..registry import register_method
from .ft_l import FTLHyperParams, FTL

register_method("FT-L", FTLHyperParams, FTL)
