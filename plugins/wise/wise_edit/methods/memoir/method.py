from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...request import EditRequest
from ...routing import query_mask
from ...timing import phase
from ...training.batch import edit_batch, plain_rows
from ...training.loop import batch_clip, optimise
from ..routed import RoutedEditMethod
from .config import MEMOIRHyperParams
from .residual_memory import ResidualMemory


class MEMOIR(RoutedEditMethod):
    """Each edit trains only the columns of the residual memory that its prompt's TopHash mask selects."""

    hparams: MEMOIRHyperParams
    memory: ResidualMemory

    def __init__(self, model, tok, hparams: MEMOIRHyperParams):
        super().__init__(model, tok, hparams)
        self._calibrated = False

    def build_memory(self, linear: nn.Linear) -> ResidualMemory:
        hp = self.hparams
        return ResidualMemory(linear.weight.shape, linear.weight.device, hp.top_k, hp.irr_threshold, hp.seed,
                              hp.protect)

    def prepare(self, requests: list[EditRequest], same_form: Sequence[str] = (),
                same_subject: Sequence[tuple[str, str]] = ()) -> None:
        """Background mean from the stream's irrelevant prompts (or, without any, the model's own prefixes); the
        fact gate's radius from the dev texts."""
        self.prepare_gate(requests, same_form, same_subject)
        if self._calibrated:
            return
        self.memory.hash.background = self.background_key(requests)
        self._calibrated = True

    def apply(self, requests: list[EditRequest]) -> dict[str, Any]:
        hp = self.hparams
        subjects = self.filings(requests)  # before any state changes: a request it refuses changes nothing
        self.prepare(requests)
        with phase("capture"):
            batch, _ = edit_batch(self.tok, requests, self.prefixes, include_loc=False, max_length=hp.max_length,
                                      target_eos=hp.target_eos)
            runner = self.runner(batch)
        weight = self.layer.base.weight
        rows_per_request = 1 + len(self.prefixes)
        plain = plain_rows(len(requests), len(self.prefixes), weight.device)
        prompt_tokens = query_mask(runner.batch.attention_mask, runner.batch.query_lengths)
        masks = self.memory.hash.masks(runner.keys[plain], prompt_tokens[plain])  # (R, d_in)
        row_masks = masks.repeat_interleave(rows_per_request, dim=0).to(weight.dtype)  # same mask for all rows
        columns = masks.any(0).nonzero().squeeze(-1)
        sub = self.memory.weight[:, columns].clone().requires_grad_(True)  # only these columns can change
        row_masks = row_masks[:, columns]

        def ffn(keys: torch.Tensor) -> torch.Tensor:
            return F.linear(keys, weight) + (keys[..., columns] * row_masks[:, None, :]) @ sub.T

        with phase("protection"):
            precondition = self.memory.protection.preconditioner(columns)
        if precondition is not None:
            sub.register_hook(lambda grad: grad @ precondition)
        n = len(requests)
        with phase("steps"):
            losses = optimise([sub], lambda: runner.cross_entropy(ffn, rows_per_request), n_iter=hp.n_iter,
                              lr=hp.edit_lr, optimizer=hp.optimizer, grad_clip=batch_clip(hp.grad_clip, n),
                              stop_loss=None if hp.stop_loss is None else hp.stop_loss * n,
                              done=runner.holds(hp.stop_margin))
        with phase("hold"), torch.no_grad():
            self.memory.weight[:, columns] = sub.detach()
            self.memory.db.add(masks)
            self.hold_subjects(subjects, list(range(len(self.memory.db) - n, len(self.memory.db))))
            tokens = runner.batch.attention_mask.bool()
            for r in range(n):
                rows = slice(r * rows_per_request, (r + 1) * rows_per_request)
                self.memory.protection.add(runner.keys[rows][tokens[rows]], masks[r])
        return {"losses": losses}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        self._calibrated = True  # the background mean is part of the state
