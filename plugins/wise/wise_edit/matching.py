"""Which held edit, if any, a query asks about: soft recall of the edit's distinctive tokens.

A router that scores a query by how strongly a memory reacts to it fires on every question of an edit's
form: the tokens of the question's template dominate its keys, and every ZsRE question shares them. What
tells "What is the capital of Australia?" from "What is the capital of France?" is a few tokens, so the
match is taken token by token:

- each query token of a held edit gets a weight ``(1 - c)^2``, ``c`` its largest cosine with any token of a
  *pool* of unedited questions of the same form: template tokens weigh about 0, the subject's about 1;
- a query matches the edit by the weighted mean, over the edit's tokens, of the best cosine any of the
  query's tokens reaches (recall of the edit's distinctive tokens, wherever and however the query words them).

Dev stream (ZsRE train records 0-99 as edits, pool of 300 questions from records 100-399, neighbours from
400-499, SmolLM2 layer 25): at a radius that lets 1 of 100 neighbours match any edit, 93 of 100 rephrasings
match their own edit (88 with the plain weight ``1 - c``; 44 with a pool of 10 questions, so the pool is
given as a fixed set, not drawn from the stream).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import check_shape


def token_weights(keys: torch.Tensor, pool: torch.Tensor | None) -> torch.Tensor:
    """(S,) weight of each of one edit's query-token keys (S, d): how unlike every pool token it is.

    Without a pool (or when every token is in it, e.g. an edit that repeats a pool question) all weigh 1.
    """
    if pool is None or not pool.numel():
        return keys.new_ones(keys.shape[0])
    closest = (F.normalize(keys, dim=-1) @ pool.T).amax(-1)
    weights = (1 - closest).clamp(min=0) ** 2
    return weights if float(weights.sum()) > 1e-6 else torch.ones_like(weights)


class TokenIndex:
    """The query-token keys of the edits one memory holds, with their weights, searched in one product."""

    def __init__(self, d_in: int, device: torch.device):
        self.tokens = torch.zeros(0, d_in, device=device)  # unit vectors
        self.weights = torch.zeros(0, device=device)
        self.owner = torch.zeros(0, dtype=torch.long, device=device)  # which edit each token belongs to
        self.totals = torch.zeros(0, device=device)  # sum of each edit's weights
        self.count = 0

    def add(self, keys: torch.Tensor, weights: torch.Tensor) -> None:
        """Index one edit's query-token keys (S, d) with their :func:`token_weights`."""
        check_shape("edit keys", keys, (keys.shape[0], self.tokens.shape[1]))
        self.tokens = torch.cat([self.tokens, F.normalize(keys, dim=-1)])
        self.weights = torch.cat([self.weights, weights])
        self.owner = torch.cat([self.owner, self.owner.new_full((keys.shape[0],), self.count)])
        self.totals = torch.cat([self.totals, weights.sum()[None]])
        self.count += 1

    def match(self, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, count) how well each row of ``keys`` (B, S, d), on its ``mask`` (B, S) tokens, recalls each edit."""
        cosines = F.normalize(keys, dim=-1) @ self.tokens.T  # (B, S, N)
        best = cosines.masked_fill(~mask.bool()[..., None], -1.0).amax(1)  # (B, N)
        sums = best.new_zeros(best.shape[0], self.count).index_add_(1, self.owner, best * self.weights)
        return sums / self.totals.clamp(min=1e-12)
