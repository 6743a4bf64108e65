"""Built-in editing methods; each line registers one (``alg_name`` -> hyperparameters, method)."""

from ..registry import register_method
from .ft_l import FTL, FTLHyperParams
from .memoir import MEMOIR, MEMOIRHyperParams
from .wise import WISE, WISEHyperParams

register_method("FT-L", FTLHyperParams, FTL)
register_method("WISE", WISEHyperParams, WISE)
register_method("MEMOIR", MEMOIRHyperParams, MEMOIR)
