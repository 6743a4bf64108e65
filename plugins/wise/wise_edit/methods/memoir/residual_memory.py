"""MEMOIR's residual memory: ``W a + W_m (M ⊙ a)`` where ``M`` is the stored mask the query matches best.

``W_m`` starts at zero and each edit writes only its own mask's columns. A query whose mask overlaps no
stored mask by ``irr_threshold`` skips the memory, so its output is exactly the original model's. With a subject
gate, the gate chooses among the stored masks the query overlaps (``admitted``) instead of the best overlap.
"""

from __future__ import annotations

import torch

from ...errors import check_shape
from ...routing import MAIN
from ...training.protection import KeyProtection
from .mask_db import MaskDatabase
from .tophash import TopHash


class ResidualMemory:
    def __init__(self, shape: torch.Size, device: torch.device, top_k: int, irr_threshold: float, seed: int,
                 protect: float = 0.0):
        self.weight = torch.zeros(shape, device=device)  # W_m (d_out, d_in)
        self.hash = TopHash(shape[1], top_k, seed, device)
        self.db = MaskDatabase(shape[1], device)
        self.protection = KeyProtection(shape[1], protect, device)
        self.irr_threshold = irr_threshold

    def route(self, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if len(self.db) == 0:
            return torch.full(keys.shape[:1], MAIN, dtype=torch.long, device=keys.device)
        index, overlap = self.db.best(self.hash.masks(keys, mask))
        fires = overlap.float() / self.hash.top_k >= self.irr_threshold
        return torch.where(fires, index, torch.full_like(index, MAIN))

    def admitted(self, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(N, B): which stored edits' masks each row's mask overlaps by ``irr_threshold``.

        The best-overlapping mask is often another edit's once many edits of one question form are stored, so a
        subject gate chooses among all of them (:class:`~wise_edit.routing.Admitting`)."""
        overlaps = self.db.overlaps(self.hash.masks(keys, mask))  # (B, N)
        return (overlaps.float() / self.hash.top_k >= self.irr_threshold).T

    def delta(self, keys: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        gate = self.db.unpack(route.clamp(min=0)) & (route != MAIN)[:, None]
        return (keys * gate[:, None, :].to(keys.dtype)) @ self.weight.T

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"weight": self.weight.clone(), "masks": self.db.words.clone(),
                 "permutation": self.hash.permutation.clone(), "background": self.hash.background.clone()}
        return {**state, **self.protection.state_dict()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        check_shape("MEMOIR residual memory", state["weight"], self.weight.shape)
        check_shape("MEMOIR mask database", state["masks"], (state["masks"].shape[0], self.db.words.shape[1]))
        for name, tensor in (("permutation", self.hash.permutation), ("background", self.hash.background)):
            check_shape(f"MEMOIR TopHash {name}", state[name], tensor.shape)
        self.weight = state["weight"].clone().to(self.weight.device)
        self.db.words = state["masks"].clone().to(self.weight.device)
        self.hash.permutation = state["permutation"].clone().to(self.weight.device)
        self.hash.background = state["background"].clone().to(self.weight.device)
        self.protection.load_state_dict(state)
