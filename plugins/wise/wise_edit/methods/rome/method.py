from __future__ import annotations

from typing import Any, Sequence

import torch

from ...errors import check_shape
from ...request import EditRequest
from ...training.covariance import key_second_moment
from ...training.runner import SiteRunner
from ...training.subject import SubjectBatch, subject_batch
from ...training.value import optimise_values, request_means, subject_outputs
from ..base import EditMethod
from .config import ROMEHyperParams


class ROME(EditMethod):
    """W ← W + δ (C⁻¹k*)ᵀ / (k·C⁻¹k*): the subject's key now yields the optimised output, other keys move least."""

    hparams: ROMEHyperParams

    def __init__(self, model, tok, hparams: ROMEHyperParams):
        super().__init__(model, tok, hparams)
        self._moments: list[torch.Tensor] | None = None

    def moments(self) -> list[torch.Tensor]:
        """The key second moment of every edited matrix (computed or read from the cache on first use; the
        identity with ``mom2_adjustment: false``)."""
        if self._moments is None:
            hp = self.hparams
            if hp.mom2_adjustment:
                self._moments = key_second_moment(self.model, self.tok, self.sites, hp.corpus, hp.mom2_n_tokens,
                                                  hp.mom2_seq_length)
            else:
                self._moments = [torch.eye(s.linear.weight.shape[1], device=s.linear.weight.device)
                                 for s in self.sites]
        return self._moments

    def prepare(self, requests: list[EditRequest], same_form: Sequence[str] = (),
                same_subject: Sequence[tuple[str, str]] = ()) -> None:
        self.moments()

    def value_vectors(self, requests: list[EditRequest], site_index: int
                      ) -> tuple[SubjectBatch, SiteRunner, torch.Tensor, list[float]]:
        """Rows, runner at ``sites[site_index]``, the optimised vectors (R, d_out) and the loss curve."""
        hp = self.hparams
        rows = subject_batch(self.tok, requests, self.prefixes, hp.max_length, hp.kl_template, hp.target_eos)
        runner = self.runner(rows.batch, self.sites[site_index])
        deltas, losses = optimise_values(runner, rows, len(requests), self.value_scale(runner, rows),
                                         n_iter=hp.n_iter, lr=hp.edit_lr,
                                         optimizer=hp.optimizer, kl_factor=hp.kl_factor,
                                         weight_decay=hp.v_weight_decay, clamp_norm_factor=hp.clamp_norm_factor,
                                         grad_clip=hp.grad_clip, stop_loss=hp.stop_loss,
                                         stop_margin=hp.stop_margin)
        return rows, runner, deltas, losses

    def value_scale(self, runner: SiteRunner, rows: SubjectBatch) -> torch.Tensor:
        """(R,) size the value vectors are measured against: the edited matrix's output at the subject (ROME)."""
        return subject_outputs(runner, rows)[rows.plain_rows.to(runner.keys.device)].norm(dim=-1)

    def apply(self, requests: list[EditRequest]) -> dict[str, Any]:
        losses: list[float] = []
        for request in requests:  # ROME is a one-fact editor: a batch is applied fact by fact
            rows, runner, deltas, curve = self.value_vectors([request], 0)
            losses += curve
            keys = runner.keys[torch.arange(rows.positions.numel()), rows.positions.to(runner.keys.device)]
            k_star = request_means(keys, rows, 1)[0]
            k_plain = keys[rows.plain_rows[0]]
            u = torch.linalg.solve(self.moments()[0].double(), k_star.double()).to(k_star.dtype)
            with torch.no_grad():
                self.site.linear.weight += torch.outer(deltas[0], u) / (u @ k_plain)
        return {"losses": losses}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {site.module_path: site.linear.weight.detach().clone() for site in self.sites}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for site in self.sites:
                saved = state[site.module_path]
                check_shape(site.module_path, saved, site.linear.weight.shape)
                site.linear.weight.copy_(saved)
