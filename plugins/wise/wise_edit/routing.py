"""Routing an edited linear layer per input row, the same way in every entry point.

A memory-based editor (WISE, MEMOIR, ...) keeps the original linear map and adds a memory that answers only
for inputs it recognises. The decision is taken once per sequence, on its *query* tokens (the prompt), and is
kept for every later decoding step, so teacher-forced scoring, a plain ``model(...)`` call and
``model.generate`` with a KV cache treat the same prompt identically. Each row of a padded batch is decided on
its own, padding ignored.

- :func:`query_span` tells the wrapped layers how many leading tokens of each row are the query (scoring code
  uses it so the target tokens fed for teacher forcing do not influence the decision).
- :class:`RoutedLinear` wraps the configured linear map and asks its :class:`Memory` for a decision and an
  additive output.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator, Protocol

import torch
from torch import nn

_QUERY_LENGTHS: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("query_lengths", default=None)

#: route value of a row that the memory does not answer
MAIN = -1


@contextlib.contextmanager
def query_span(lengths: torch.Tensor | None) -> Iterator[None]:
    """Within this block, routing decides on the first ``lengths[i]`` real tokens of row ``i``."""
    token = _QUERY_LENGTHS.set(lengths)
    try:
        yield
    finally:
        _QUERY_LENGTHS.reset(token)


def query_mask(attention_mask: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """(B, S) bool: real tokens, limited to the first ``lengths`` real tokens of each row when given."""
    real = attention_mask.bool()
    if lengths is None:
        return real
    position = real.long().cumsum(dim=1)
    return real & (position <= lengths.to(attention_mask.device)[:, None])


class Memory(Protocol):
    """What a routed editor plugs into :class:`RoutedLinear`."""

    def route(self, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B,) long: which memory answers each row (``MAIN`` for none), from its query keys (B, S, d_in)."""

    def delta(self, keys: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        """(B, S, d_out) added to the original output; rows routed to ``MAIN`` must get exact zeros."""


@dataclass
class _CallState:
    attention_mask: torch.Tensor | None = None
    prefill: bool = True


class RoutedLinear(nn.Module):
    """The original linear map plus a routed memory; with no memory answering, output is bit-identical."""

    def __init__(self, base: nn.Linear, memory: Memory):
        super().__init__()
        self.base = base
        self.memory = memory
        self._state = _CallState()
        self._route: torch.Tensor | None = None

    @property
    def weight(self) -> torch.Tensor:
        """The original matrix, so code that reads ``<inner_params path>.weight`` keeps working."""
        return self.base.weight

    def watch(self, model: nn.Module) -> None:
        """Observe the model's calls to learn each call's padding and whether it starts a new sequence."""
        model.register_forward_pre_hook(self._observe_call, with_kwargs=True)

    def _observe_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        cache = kwargs.get("past_key_values")
        seen = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        self._state = _CallState(attention_mask=kwargs.get("attention_mask"), prefill=seen == 0)

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        out = self.base(keys)
        state = self._state
        if state.prefill or self._route is None or self._route.shape[0] != keys.shape[0]:
            mask = state.attention_mask
            if mask is None or mask.shape != keys.shape[:2]:
                mask = torch.ones(keys.shape[:2], dtype=torch.long, device=keys.device)
            self._route = self.memory.route(keys, query_mask(mask, _QUERY_LENGTHS.get()))
            state.prefill = False  # a later call without the hook (decoding) keeps this decision
        if bool((self._route == MAIN).all()):
            return out
        return out + self.memory.delta(keys, self._route)

    @property
    def last_route(self) -> torch.Tensor | None:
        """Per-row decision of the last call (for tests and diagnostics)."""
        return self._route
