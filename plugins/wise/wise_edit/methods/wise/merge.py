"""Merging shard deltas into one side memory with TIES (trim, elect sign, disjoint mean)."""

from __future__ import annotations

import torch
from peft.utils.merge_utils import ties


def ties_merge(deltas: list[torch.Tensor], density: float) -> torch.Tensor:
    """TIES merge of the shards' changes to the side memory, each shard weighted equally."""
    if not deltas:
        raise ValueError("nothing to merge")
    weights = torch.ones(len(deltas), dtype=deltas[0].dtype, device=deltas[0].device)
    return ties(deltas, weights, density=density, majority_sign_method="total")
