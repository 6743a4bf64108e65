"""The routing margin loss: edits must raise the side memory's activation score, irrelevant text must not."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def margin_loss(edit_scores: torch.Tensor, irrelevant_scores: torch.Tensor, alpha: float, beta: float,
                gamma: float) -> torch.Tensor:
    """Irrelevant scores below ``alpha``, edit scores above ``beta``, and every edit above every
    irrelevant row by at least ``gamma``."""
    loss = F.relu(beta - edit_scores).mean()
    if irrelevant_scores.numel():
        loss = loss + F.relu(irrelevant_scores - alpha).mean()
        loss = loss + F.relu(gamma - (edit_scores[:, None] - irrelevant_scores[None, :])).mean()
    return loss


def separated(edit_scores: torch.Tensor, irrelevant_scores: torch.Tensor, beta: float, gamma: float) -> bool:
    """The margins that decide routing hold: every edit above ``beta`` and above every irrelevant row by
    ``gamma``. The ``alpha`` ceiling on irrelevant rows is left to the loss: a stop test that waits for it
    runs most edits to ``n_iter`` (it is what keeps the summed loss above ``stop_loss``)."""
    low = float(edit_scores.min())
    return low >= beta and (not irrelevant_scores.numel() or low - float(irrelevant_scores.max()) >= gamma)
