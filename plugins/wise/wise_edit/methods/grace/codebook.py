"""GRACE's codebook: keys, trained values, radii and the answer each entry was written for.

A row whose key (the layer input at its last query token) lies within an entry's radius is answered by that
entry's value at every token of the row (the layer output is replaced), also while it is being decoded;
other rows pass unchanged. Answers are kept as hashes so the whole state is tensors (saved with safetensors).
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import check_shape
from ...routing import MAIN


def answer_id(text: str) -> int:
    """A stable 63-bit id of an answer string (equal answers, equal ids)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def last_query_keys(keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, d_in) each row's key at its last query token."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, torch.full_like(positions, -1)).max(dim=1).values.clamp(min=0)
    return keys[torch.arange(keys.shape[0], device=keys.device), last]


class Codebook:
    def __init__(self, base: nn.Linear):
        weight = base.weight
        self.base = base
        self.keys = weight.new_zeros(0, weight.shape[1])
        self.values = weight.new_zeros(0, weight.shape[0])
        self.radii = weight.new_zeros(0)
        self.answers = torch.zeros(0, dtype=torch.long, device=weight.device)

    def __len__(self) -> int:
        return self.keys.shape[0]

    def nearest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Index and distance of the closest entry for each query (B, d_in)."""
        distance, index = torch.cdist(queries, self.keys).min(dim=1)
        return index, distance

    def add(self, key: torch.Tensor, value: torch.Tensor, radius: float, answer: int) -> None:
        self.keys = torch.cat([self.keys, key[None]])
        self.values = torch.cat([self.values, value[None]])
        self.radii = torch.cat([self.radii, self.radii.new_tensor([radius])])
        self.answers = torch.cat([self.answers, self.answers.new_tensor([answer])])

    # --- RoutedLinear's Memory protocol ---------------------------------------------------------------
    def route(self, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if len(self) == 0:
            return torch.full(keys.shape[:1], MAIN, dtype=torch.long, device=keys.device)
        index, distance = self.nearest(last_query_keys(keys, mask))
        return torch.where(distance <= self.radii[index], index, torch.full_like(index, MAIN))

    def delta(self, keys: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        hit = route != MAIN
        out = keys.new_zeros(*keys.shape[:-1], self.values.shape[1])
        out[hit] = self.values[route[hit]][:, None, :] - F.linear(keys[hit], self.base.weight)
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys.clone(), "values": self.values.clone(), "radii": self.radii.clone(),
                "answers": self.answers.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        n = state["keys"].shape[0]
        for name, width in (("keys", self.keys.shape[1:]), ("values", self.values.shape[1:])):
            check_shape(f"GRACE codebook {name}", state[name], (n, *width))
        for name in ("radii", "answers"):
            check_shape(f"GRACE codebook {name}", state[name], (n,))
        device = self.keys.device
        self.keys, self.values, self.radii, self.answers = (state[k].clone().to(device)
                                                            for k in ("keys", "values", "radii", "answers"))
