"""The activation router: which side memory (if any) answers an input.

Score of an input for a side memory with change D = W' - W: the mean over its query tokens of
||a D^T||, i.e. how much that memory would move this layer's output. The *relative* score divides each token's
||a D^T|| by ||a||: the memory's gain in that key's direction. Edits are what the memory was trained to amplify,
so their gain is high whatever their length or loudness, while an unrelated prompt with loud keys gets a high
absolute score from the directions it shares with the edits but a low gain. A memory answers when the score reaches
its threshold ``act_ratio * (smallest score of the edits it holds)``; with several memories (WISE-Retrieve) the
highest-scoring one among those above their thresholds answers.
"""

from __future__ import annotations

import torch

from ...routing import MAIN


def token_scores(keys: torch.Tensor, delta: torch.Tensor, relative: bool = False) -> torch.Tensor:
    """(...,) ||key @ delta^T|| of each key (``relative``: divided by ||key||)."""
    norms = torch.linalg.vector_norm(keys @ delta.T, dim=-1)
    if relative:
        norms = norms / torch.linalg.vector_norm(keys, dim=-1).clamp(min=torch.finfo(norms.dtype).tiny)
    return norms


def activation_scores(keys: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor,
                      relative: bool = False) -> torch.Tensor:
    """(B,) mean over the masked tokens of :func:`token_scores`."""
    norms = token_scores(keys, delta, relative)
    mask = mask.to(norms.dtype)
    return (norms * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def threshold(edit_scores: torch.Tensor, act_ratio: float) -> float:
    """``act_ratio`` times the weakest edit's score: every held edit is routed, with a safety margin."""
    return act_ratio * edit_scores.min().item() if edit_scores.numel() else float("inf")


def select(scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """(B,) index of the highest-scoring memory among those at or above their threshold, else ``MAIN``.

    ``scores`` is (M, B), ``thresholds`` (M,).
    """
    above = scores >= thresholds[:, None]
    best = torch.where(above, scores, torch.full_like(scores, -float("inf"))).argmax(dim=0)
    return torch.where(above.any(dim=0), best, torch.full_like(best, MAIN))
