from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

from ...hparams import HyperParamsError
from ..rome.config import ROMEHyperParams


@dataclass
class MEMITHyperParams(ROMEHyperParams):
    """MEMIT: ROME's target vector, written as a least-squares update spread over several layers' matrices."""

    SITES: ClassVar[Union[int, None]] = None

    #: weight λ of the preserved keys' second moment against the new keys (EasyEdit's mom2_update_weight)
    mom2_update_weight: float = 15000.0

    def validate(self, source: str) -> None:
        super().validate(source)
        if self.mom2_update_weight <= 0:
            raise HyperParamsError(f"{source}: key 'mom2_update_weight' must be > 0")
