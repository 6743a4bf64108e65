"""The optimisation loop every trained edit uses."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from ..errors import NonFiniteError


def optimise(params: Iterable[torch.Tensor], loss_fn: Callable[[], torch.Tensor], *, n_iter: int, lr: float,
             optimizer: str = "sgd", grad_clip: float | None = None, stop_loss: float | None = None,
             after_step: Callable[[], None] | None = None, done: Callable[[], bool] | None = None) -> list[float]:
    """Minimise ``loss_fn`` for at most ``n_iter`` steps; stop early once the loss is <= ``stop_loss`` or,
    right after a loss evaluation, ``done()`` says the edit holds (e.g. every target token leads by a margin).

    ``after_step`` runs after each update (projections such as norm constraints). Returns the loss curve.
    A NaN or infinite loss, or trained values that end non-finite, raise :class:`NonFiniteError`.
    """
    params = list(params)
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r} (sgd or adam)")
    losses: list[float] = []
    for step in range(n_iter):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise NonFiniteError(f"the loss is {losses[-1]} at step {step}")
        if (stop_loss is not None and losses[-1] <= stop_loss) or (done is not None and done()):
            break
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        if after_step is not None:
            with torch.no_grad():
                after_step()
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise NonFiniteError(f"the trained values are not finite after step {len(losses) - 1}")
    return losses


def batch_clip(grad_clip: float | None, n_requests: int) -> float | None:
    """Gradient-norm limit for ``n_requests`` edits trained together (losses summed).

    The summed gradient of k independent edits has about sqrt(k) times the norm of one, so the limit grows
    with it and each edit keeps the step it would get alone.
    """
    return None if grad_clip is None else grad_clip * math.sqrt(n_requests)
