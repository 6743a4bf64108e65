"""Error types shared across the package, at the bottom of the import graph so every module can raise them."""

from __future__ import annotations

from typing import Sequence

import torch


class EditStateError(ValueError):
    """An edit state does not fit: saved edits for another base model, a malformed or partial state, or an
    operation the method's current state cannot serve."""


def check_shape(what: str, saved: torch.Tensor, expected: Sequence[int]) -> None:
    """Raise :class:`EditStateError` naming ``what`` unless ``saved`` has the ``expected`` shape."""
    if tuple(saved.shape) != tuple(expected):
        raise EditStateError(f"saved {what} has shape {tuple(saved.shape)}, this model needs {tuple(expected)}")


class RequestError(ValueError):
    """Edit requests given to the API are malformed (names the request and the field)."""


class RunError(ValueError):
    """A run cannot start or go on as configured (output directory in use, bad run setting, device missing)."""


class NonFiniteError(ArithmeticError):
    """A loss or a trained state became NaN or infinite (names the request and the step)."""
