"""Merging shard deltas into one side memory with TIES (trim, elect sign, disjoint mean)."""

from __future__ import annotations

import torch
from peft.utils.merge_utils import ties


def ties_merge(deltas: list[torch.Tensor], density: float) -> torch.Tensor:
    """TIES merge of the shards' changes to the side memory, each shard weighted equally.

    A single shard is kept whole: TIES resolves interference between shards, and one shard has none. (peft's
    trim keeps the top ``density`` of *all* entries, so upstream's single-shard merge changes nothing at
    ``mask_ratio <= density`` but would cut half of a dense shard, ``mask_ratio: 1``, at density 0.53.)
    """
    if not deltas:
        raise ValueError("nothing to merge")
    if len(deltas) == 1:
        return deltas[0].clone()
    weights = torch.ones(len(deltas), dtype=deltas[0].dtype, device=deltas[0].device)
    return ties(deltas, weights, density=density, majority_sign_method="total")
