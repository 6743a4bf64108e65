from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ...request import EditRequest
from ...training.batch import edit_batch
from ...training.loop import optimise
from ..base import EditMethod
from .config import FTLHyperParams


class FTL(EditMethod):
    """Writes each edit straight into the weight: no memory, no routing (the baseline that forgets)."""

    hparams: FTLHyperParams

    def apply(self, requests: list[EditRequest]) -> dict[str, Any]:
        hp = self.hparams
        weight = self.site.linear.weight
        batch, _ = edit_batch(self.tok, requests, self.prefixes, include_loc=False, max_length=hp.max_length,
                              target_eos=hp.target_eos)
        runner = self.runner(batch)
        delta = torch.zeros_like(weight, requires_grad=True)

        def clamp() -> None:
            if hp.norm_constraint is not None:
                delta.clamp_(-hp.norm_constraint, hp.norm_constraint)

        losses = optimise([delta], lambda: runner.cross_entropy(lambda a: F.linear(a, weight + delta)),
                          n_iter=hp.n_iter, lr=hp.edit_lr, optimizer=hp.optimizer, grad_clip=hp.grad_clip,
                          stop_loss=hp.stop_loss, after_step=clamp, done=runner.holds(hp.stop_margin))
        with torch.no_grad():
            weight += delta
        return {"losses": losses}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weight": self.site.linear.weight.detach().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.site.linear.weight.copy_(state["weight"])
