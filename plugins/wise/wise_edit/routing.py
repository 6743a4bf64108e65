"""Routing an edited linear layer per input row, the same way in every entry point.

A memory-based editor (WISE, MEMOIR, ...) keeps the original linear map and adds a memory that answers only
for inputs it recognises. The decision is taken once per sequence, on its *query* tokens (the prompt), and is
kept for every later decoding step, so teacher-forced scoring, a plain ``model(...)`` call and
``model.generate`` with or without a KV cache treat the same prompt identically. Each row of a padded batch is
decided on its own, padding ignored.

- :func:`query_span` tells the wrapped layers how many leading tokens of each row are the query (scoring code
  uses it so the target tokens fed for teacher forcing do not influence the decision).
- :class:`RoutedLinear` wraps the configured linear map and asks its :class:`Memory` for a decision and an
  additive output.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator, Protocol, runtime_checkable

import torch
from torch import nn

_QUERY_LENGTHS: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("query_lengths", default=None)
_UNROUTED: contextvars.ContextVar[bool] = contextvars.ContextVar("unrouted", default=False)

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


@contextlib.contextmanager
def unrouted() -> Iterator[None]:
    """Within this block a routed layer computes its original map alone and decides nothing.

    For passes that only read the layer's input (an edit's key capture): a routing decision costs work that
    grows with the edits held (the match gate, the threshold), and the edit being trained replaces the memory's
    output anyway.
    """
    token = _UNROUTED.set(True)
    try:
        yield
    finally:
        _UNROUTED.reset(token)


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


@runtime_checkable
class Admitting(Memory, Protocol):
    """A memory with several route values that can each answer a row (WISE-Retrieve's memories, MEMOIR's edits)."""

    def admitted(self, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(G, B) bool: which route values ``0..G-1`` would answer each row."""


class RoutedLinear(nn.Module):
    """The original linear map plus a routed memory; with no memory answering, output is bit-identical.

    A decision is made for one sequence and lives only as long as it: every call of the decoder starts afresh
    (including calls that bypass the model's own ``forward``, such as :func:`wise_edit.sites.run_through`),
    except a call that continues the previous one -- a decoding step with a KV cache, or, without a cache,
    the previous call's tokens plus one (``generate(..., use_cache=False)`` re-feeds the whole sequence, and
    the decision must stay the prompt's). A call of the layer outside any decoder call decides on its own keys.
    """

    def __init__(self, base: nn.Linear, memory: Memory):
        super().__init__()
        self.base = base
        self.memory = memory
        self._attention_mask: torch.Tensor | None = None
        self._in_call = False
        self._previous_ids: torch.Tensor | None = None
        self._route: torch.Tensor | None = None

    @property
    def weight(self) -> torch.Tensor:
        """The original matrix, so code that reads ``<inner_params path>.weight`` keeps working."""
        return self.base.weight

    def watch(self, decoder: nn.Module) -> None:
        """Observe ``decoder``'s calls to learn each call's padding and whether it continues the previous one."""
        decoder.register_forward_pre_hook(self._start_call, with_kwargs=True)
        decoder.register_forward_hook(self._end_call, always_call=True)  # also when a call stops early

    def _start_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        cache = kwargs.get("past_key_values")
        cached = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        ids = kwargs.get("input_ids", args[0] if args else None)
        previous, self._previous_ids = self._previous_ids, ids
        if not (cached > 0 or _extends_by_one(previous, ids)):
            self._route = None
        self._attention_mask = kwargs.get("attention_mask")
        self._in_call = True

    def _end_call(self, module: nn.Module, args: tuple, out: object) -> None:
        self._in_call = False

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        out = self.base(keys)
        if _UNROUTED.get():
            return out
        if not self._in_call or self._route is None or self._route.shape[0] != keys.shape[0]:
            mask = self._attention_mask if self._in_call else None
            if mask is None or mask.shape != keys.shape[:2]:
                mask = torch.ones(keys.shape[:2], dtype=torch.long, device=keys.device)
            self._route = self.memory.route(keys, query_mask(mask, _QUERY_LENGTHS.get()))
        if bool((self._route == MAIN).all()):
            return out
        return out + self.memory.delta(keys, self._route)

    @property
    def last_route(self) -> torch.Tensor | None:
        """Per-row decision of the last call (for tests and diagnostics)."""
        return self._route


def _extends_by_one(previous: torch.Tensor | None, ids: torch.Tensor | None) -> bool:
    """``ids`` is ``previous`` with one more token per row (a decoding step that re-feeds the sequence)."""
    return (previous is not None and ids is not None and ids.dim() == 2 and previous.shape[0] == ids.shape[0]
            and ids.shape[1] == previous.shape[1] + 1 and bool((ids[:, :-1] == previous).all()))
