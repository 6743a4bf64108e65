"""Built-in editing methods; each line registers one (``alg_name`` -> hyperparameters, method)."""

from ..registry import register_method
from .ft_l import FTL, FTLHyperParams
from .grace import GRACE, GRACEHyperParams
from .memit import MEMIT, MEMITHyperParams
from .memoir import MEMOIR, MEMOIRHyperParams
from .rome import ROME, ROMEHyperParams
from .wise import WISE, WISEHyperParams

register_method("FT-L", FTLHyperParams, FTL)
register_method("WISE", WISEHyperParams, WISE)
register_method("MEMOIR", MEMOIRHyperParams, MEMOIR)
register_method("GRACE", GRACEHyperParams, GRACE)
register_method("ROME", ROMEHyperParams, ROME)
register_method("MEMIT", MEMITHyperParams, MEMIT)
