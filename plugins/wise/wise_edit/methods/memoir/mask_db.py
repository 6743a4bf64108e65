"""The mask database: every stored edit mask as packed bits in one tensor, searched with one batched operation."""

from __future__ import annotations

import torch

_M1, _M2, _M4, _H01 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x0101010101010101


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def pack(masks: torch.Tensor) -> torch.Tensor:
    """(N, d) bool -> (N, ceil(d / 64)) int64 words."""
    n, d = masks.shape
    words = -(-d // 64)
    bits = torch.zeros(n, words * 64, dtype=torch.int64, device=masks.device)
    bits[:, :d] = masks.long()
    shifts = torch.arange(64, device=masks.device, dtype=torch.int64)
    return (bits.view(n, words, 64) << shifts).sum(-1)  # distinct bits: the sum is an OR


def popcount(words: torch.Tensor) -> torch.Tensor:
    """Set bits per int64 word (SWAR; torch has no popcount)."""
    x = words - ((words >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4
    return (x * _signed(_H01)) >> 56 & 0x7F


class MaskDatabase:
    def __init__(self, d: int, device: torch.device):
        self.d = d
        self.words = torch.zeros(0, -(-d // 64), dtype=torch.int64, device=device)

    def __len__(self) -> int:
        return self.words.shape[0]

    def add(self, masks: torch.Tensor) -> None:
        """Store (N, d) bool masks (they get the next indices)."""
        self.words = torch.cat([self.words, pack(masks)])

    def overlaps(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, N) number of shared set bits between each query mask and each stored mask."""
        query = pack(masks)
        return popcount(query[:, None, :] & self.words[None, :, :]).sum(-1)

    def best(self, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Index of the most overlapping stored mask per query, and that overlap (bits); needs a stored mask."""
        counts = self.overlaps(masks)
        value, index = counts.max(dim=1)
        return index, value

    def unpack(self, index: torch.Tensor) -> torch.Tensor:
        """(len(index), d) bool masks."""
        shifts = torch.arange(64, device=self.words.device, dtype=torch.int64)
        bits = (self.words[index][..., None] >> shifts) & 1
        return bits.flatten(-2)[..., : self.d].bool()
