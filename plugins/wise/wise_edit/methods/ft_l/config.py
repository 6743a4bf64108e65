from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

from ...hparams import HyperParamsError, TrainedEditHyperParams


@dataclass
class FTLHyperParams(TrainedEditHyperParams):
    """FT-L: fine-tune the one matrix named by ``inner_params`` on the edit (WISE paper baseline)."""

    SITES: ClassVar[Union[int, None]] = 1

    edit_lr: float = 1e-3
    n_iter: int = 25
    optimizer: str = "adam"
    norm_constraint: float | None = None  # element-wise bound on the change, as in EasyEdit's FT
    stop_loss: float = 0.01
    n_prefixes: int = 0  # the WISE paper's FT-L trains on the edit row alone

    def validate(self, source: str) -> None:
        super().validate(source)
