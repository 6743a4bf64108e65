from __future__ import annotations

from typing import Any

import torch

from ...request import EditRequest
from ...sites import hidden_of, run_through
from ...training.runner import SiteRunner
from ...training.subject import SubjectBatch
from ...training.value import request_means
from ..rome.method import ROME
from .config import MEMITHyperParams


class MEMIT(ROME):
    """The target change of the top edited layer's output is written in equal parts into each edited matrix.

    Layer by layer (bottom up), each matrix gets the least-squares update that moves the new keys K toward
    the remaining change while λC keeps ordinary keys in place: ΔW = R Kᵀ(λC + K Kᵀ)⁻¹.
    """

    hparams: MEMITHyperParams

    def __init__(self, model, tok, hparams: MEMITHyperParams):
        super().__init__(model, tok, hparams)
        self.sites.sort(key=lambda site: site.layer_index)

    @torch.no_grad()
    def _read(self, rows: SubjectBatch) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each site's keys and the top edited layer's output hidden state at the subject, per row.

        The target is the residual stream after the top layer: every lower layer's update adds to it directly.
        """
        seen: dict[int, torch.Tensor] = {}
        hooks = [site.linear.register_forward_hook(lambda m, args, out, i=i: seen.update({i: args[0]}))
                 for i, site in enumerate(self.sites)]
        batch = rows.batch.to(self.model.device)
        try:
            hidden = hidden_of(run_through(self.model, self.sites[-1].layer, input_ids=batch.input_ids,
                                           attention_mask=batch.attention_mask))
        finally:
            for hook in hooks:
                hook.remove()
        index = (torch.arange(rows.positions.numel()), rows.positions)
        return [seen[i][index] for i in range(len(self.sites))], hidden[index]

    def value_scale(self, runner: SiteRunner, rows: SubjectBatch) -> torch.Tensor:
        """(R,) the residual stream's norm at the subject after the top layer, as MEMIT's target vector."""
        _, hidden = self._read(rows)
        return hidden[rows.plain_rows].norm(dim=-1).to(runner.keys.device)

    def apply(self, requests: list[EditRequest]) -> dict[str, Any]:
        hp = self.hparams
        rows, _, deltas, losses = self.value_vectors(requests, len(self.sites) - 1)
        plain = rows.plain_rows
        _, start = self._read(rows)
        target = start[plain] + deltas  # (R, d_model) the top layer's output each request should reach
        for i, (site, moment) in enumerate(zip(self.sites, self.moments())):
            keys, now = self._read(rows)
            k = request_means(keys[i], rows, len(requests)).double()  # (R, d_in)
            remaining = (target - now[plain]).double() / (len(self.sites) - i)
            gram = hp.mom2_update_weight * moment.double() + k.T @ k
            update = remaining.T @ torch.linalg.solve(gram, k.T).T
            with torch.no_grad():
                site.linear.weight += update.to(site.linear.weight.dtype)
        return {"losses": losses}
