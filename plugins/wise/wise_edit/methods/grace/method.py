from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...request import EditRequest
from ...routing import query_mask
from ...training.batch import edit_batch
from ...training.loop import optimise
from ..routed import RoutedEditMethod
from .codebook import Codebook, answer_id, last_query_keys
from .config import GRACEHyperParams


class GRACE(RoutedEditMethod):
    """Each edit adds a codebook entry, widens one that gives the same answer, or splits one that conflicts."""

    hparams: GRACEHyperParams
    memory: Codebook

    def build_memory(self, linear: nn.Linear) -> Codebook:
        return Codebook(linear)

    def apply(self, requests: list[EditRequest]) -> dict[str, Any]:
        losses: list[float] = []
        for request in requests:
            losses += self._edit(request)
        return {"losses": losses}

    def _edit(self, request: EditRequest) -> list[float]:
        hp, book = self.hparams, self.memory
        batch, _ = edit_batch(self.tok, [request], self.prefixes, include_loc=False, max_length=hp.max_length,
                              target_eos=hp.target_eos)
        runner = self.runner(batch)
        prompt_tokens = query_mask(runner.batch.attention_mask, runner.batch.query_lengths)
        key = last_query_keys(runner.keys[:1], prompt_tokens[:1])[0]
        answer = answer_id(request.target)
        radius = hp.eps
        if len(book):
            index, distance = (t.item() for t in book.nearest(key[None]))
            if distance <= book.radii[index].item() + hp.eps:
                if book.answers[index].item() == answer:
                    book.radii[index] = max(book.radii[index].item(), distance)  # same answer: cover this key
                    return []
                book.radii[index] = radius = distance / 2  # conflict: split the space between the two keys
        value = self.layer.base(key).detach().clone().requires_grad_(True)  # cold start: the layer's own output

        def ffn(keys: torch.Tensor) -> torch.Tensor:
            return value.expand(*keys.shape[:-1], value.shape[0])

        losses = optimise([value], lambda: runner.cross_entropy(ffn), n_iter=hp.n_iter, lr=hp.edit_lr,
                          optimizer=hp.optimizer, grad_clip=hp.grad_clip, stop_loss=hp.stop_loss,
                          done=runner.holds(hp.stop_margin))
        book.add(key, value.detach(), radius, answer)
        return losses
