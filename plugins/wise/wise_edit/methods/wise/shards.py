"""Knowledge shards: each shard of edits trains inside its own random subspace of the side memory."""

from __future__ import annotations

import torch


def shard_mask(shape: torch.Size, ratio: float, seed: int, shard_index: int, device: torch.device) -> torch.Tensor:
    """A Bernoulli(``ratio``) 0/1 mask; the same (seed, shard) always gives the same subspace."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + shard_index)
    return torch.bernoulli(torch.full(tuple(shape), ratio), generator=gen).to(device)
