from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

from ...hparams import HyperParamsError, SharedMemoryHyperParams


@dataclass
class MEMOIRHyperParams(SharedMemoryHyperParams):
    """MEMOIR: a zero-initialised residual memory written through sample-dependent sparse masks (TopHash)."""

    SITES: ClassVar[Union[int, None]] = 1

    grad_clip: float | None = 1.0
    #: active inputs per edit (4096 of 14336 for LLaMA-3-8B)
    top_k: int = 4096
    #: least mask overlap |M_q & M_e| / top_k for the memory to fire (0.4 ZsRE, 0.9 hallucination)
    irr_threshold: float = 0.4

    def validate(self, source: str) -> None:
        super().validate(source)
        if self.top_k < 1:
            raise HyperParamsError(f"{source}: key 'top_k' must be >= 1, got {self.top_k}")
        if not 0 < self.irr_threshold <= 1:
            raise HyperParamsError(f"{source}: key 'irr_threshold' must be in (0, 1], got {self.irr_threshold}")
