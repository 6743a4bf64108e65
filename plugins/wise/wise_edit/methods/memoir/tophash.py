"""TopHash: a prompt's sparse mask over the FFN matrix's inputs.

Mean key over the prompt tokens, minus the background mean of irrelevant prompts, top-k inputs by magnitude,
mapped through one fixed random permutation (so edits with similar salient inputs still spread their writes
over different columns of the memory, and similar prompts map to similar masks).
"""

from __future__ import annotations

import torch


class TopHash:
    def __init__(self, d_in: int, top_k: int, seed: int, device: torch.device):
        if top_k > d_in:
            raise ValueError(f"top_k={top_k} exceeds the {d_in} inputs of the edited matrix")
        self.top_k = top_k
        self.permutation = torch.randperm(d_in, generator=torch.Generator().manual_seed(seed)).to(device)
        self.background = torch.zeros(d_in, device=device)

    def masks(self, keys: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """(B, d_in) bool masks of the rows of ``keys`` (B, S, d_in), averaged over ``token_mask`` tokens."""
        weights = token_mask.to(keys.dtype)
        mean = (keys * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp(min=1)
        top = (mean - self.background).abs().topk(self.top_k, dim=-1).indices
        out = torch.zeros(mean.shape, dtype=torch.bool, device=keys.device)
        return out.scatter_(1, self.permutation[top], True)
