"""Where an edit's time goes: named phases, summed only while someone collects them.

Methods wrap their phases (``with phase("steps"): ...``); :func:`collect_phases` turns the timers on for a
block and returns the sums (``scripts/bench_edit_speed.py`` prints them per edit). Outside such a block a
phase costs one context-variable lookup.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from typing import Iterator

_SUMS: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("phase_sums", default=None)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the block's wall time to phase ``name`` of the enclosing :func:`collect_phases`, if any."""
    sums = _SUMS.get()
    if sums is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        sums[name] = sums.get(name, 0.0) + time.perf_counter() - start


@contextlib.contextmanager
def collect_phases() -> Iterator[dict[str, float]]:
    """Collect the seconds of every phase run inside the block into the yielded dict."""
    sums: dict[str, float] = {}
    token = _SUMS.set(sums)
    try:
        yield sums
    finally:
        _SUMS.reset(token)
