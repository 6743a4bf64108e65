from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

from ...hparams import HyperParamsError, TrainedEditHyperParams


@dataclass
class GRACEHyperParams(TrainedEditHyperParams):
    """GRACE: a codebook of (key, value, radius) at one layer; a matched row's layer output is the value."""

    SITES: ClassVar[Union[int, None]] = 1

    #: radius of a new codebook entry (distance between keys, Euclidean)
    eps: float = 1.0
    edit_lr: float = 1.0
    optimizer: str = "adam"
    n_iter: int = 100
    stop_loss: float = 0.01
    n_prefixes: int = 0  # the key is the prompt's own last token: prefixed rows would have other keys

    def validate(self, source: str) -> None:
        super().validate(source)
        if self.eps <= 0:
            raise HyperParamsError(f"{source}: key 'eps' must be > 0, got {self.eps}")
