from __future__ import annotations

from dataclasses import dataclass

from ...hparams import HyperParamsError
from ..rome.config import ROMEHyperParams


@dataclass
class MEMITHyperParams(ROMEHyperParams):
    """MEMIT: ROME's target vector, written as a least-squares update spread over several layers' matrices."""

    #: weight λ of the preserved keys' second moment against the new keys (EasyEdit's mom2_update_weight)
    mom2_update_weight: float = 15000.0

    def _check_sites(self, source: str) -> None:
        if len(set(self.inner_params)) != len(self.inner_params):
            raise HyperParamsError(f"{source}: inner_params lists a matrix twice")
        if self.mom2_update_weight <= 0:
            raise HyperParamsError(f"{source}: key 'mom2_update_weight' must be > 0")
