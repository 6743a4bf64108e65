from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Union

from ...hparams import HyperParamsError, TrainedEditHyperParams


@dataclass
class ROMEHyperParams(TrainedEditHyperParams):
    """ROME: a rank-one closed-form update of one MLP output matrix at the subject's last token.

    ``edit_lr``/``n_iter`` are the value optimisation's (EasyEdit's ``v_lr``/``v_num_grad_steps``).
    """

    SITES: ClassVar[Union[int, None]] = 1

    edit_lr: float = 0.5
    optimizer: str = "adam"
    n_iter: int = 25
    stop_loss: float = 0.05
    #: weight of the KL term on "{subject} is a" (keeps the subject's other facts)
    kl_factor: float = 0.0625
    kl_template: str = "{} is a"
    v_weight_decay: float = 1e-3
    clamp_norm_factor: float = 4.0
    #: spread the update along C⁻¹k (the ROME/MEMIT papers); false: C = I, the update lies along k itself and
    #: no corpus is read (EasyEdit's llama-7b ROME file)
    mom2_adjustment: bool = True
    #: local text corpus for the key second moment C (relative paths: from the working directory)
    mom2_dataset: str = "../shared/data/wikitext/wiki.test.raw"
    mom2_n_tokens: int = 100_000
    mom2_seq_length: int = 128

    def validate(self, source: str) -> None:
        super().validate(source)
        if "{}" not in self.kl_template:
            raise HyperParamsError(f"{source}: key 'kl_template' must contain '{{}}' for the subject")
        self._at_least(source, mom2_n_tokens=1, mom2_seq_length=1, kl_factor=0, v_weight_decay=0)
        self._positive(source, "clamp_norm_factor")

    @property
    def corpus(self) -> Path:
        return Path(self.mom2_dataset).expanduser()
