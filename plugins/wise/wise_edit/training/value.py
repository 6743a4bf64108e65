"""Optimising the vector that, added to an edited matrix's output at the subject, makes the model say the target.

ROME and MEMIT write this vector into the weights in closed form afterwards. The loss is the target's
cross-entropy, plus a KL term that keeps the "{subject} is a" distribution where it was, plus a weight decay
relative to a reference size; the vector's norm is clamped to ``clamp_norm_factor`` times that size. The size is
the caller's: ROME's is the edited matrix's own output at the subject, MEMIT's the residual stream there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .loop import optimise
from .runner import SiteRunner
from .subject import SubjectBatch


def subject_outputs(runner: SiteRunner, rows: SubjectBatch) -> torch.Tensor:
    """(B, d_out) the edited matrix's original output at each row's subject position."""
    keys = runner.keys[torch.arange(rows.positions.numel()), rows.positions.to(runner.keys.device)]
    return F.linear(keys, runner.site.linear.weight)


def optimise_values(runner: SiteRunner, rows: SubjectBatch, n_requests: int, scale: torch.Tensor, *, n_iter: int,
                    lr: float, optimizer: str, kl_factor: float, weight_decay: float, clamp_norm_factor: float,
                    grad_clip: float | None, stop_loss: float | None, stop_margin: float | None = None
                    ) -> tuple[torch.Tensor, list[float]]:
    """One vector per request (R, d_out) and the loss curve; requests do not interact (each row gets its own).

    ``scale`` (R,) is each request's reference size for the weight decay and the norm clamp.
    """
    weight = runner.site.linear.weight
    device = weight.device
    owner = rows.request.to(device)
    at_subject = torch.zeros(runner.keys.shape[:2], dtype=weight.dtype, device=device)
    at_subject[torch.arange(owner.numel(), device=device), rows.positions.to(device)] = 1
    delta = torch.zeros(n_requests, weight.shape[0], device=device, requires_grad=True)

    def ffn(keys: torch.Tensor) -> torch.Tensor:
        return F.linear(keys, weight) + at_subject[..., None] * delta[owner][:, None, :]

    kl_logits = rows.is_kl.to(device)[runner.logit_rows]
    with torch.no_grad():
        reference = F.log_softmax(runner.logits(ffn)[kl_logits].float(), dim=-1)

    def loss() -> torch.Tensor:
        logits = runner.logits(ffn).float()
        total = F.cross_entropy(logits[~kl_logits], runner.targets[~kl_logits])
        runner.record(logits[~kl_logits], runner.targets[~kl_logits])
        if kl_factor:
            current = F.log_softmax(logits[kl_logits], dim=-1)
            total = total + kl_factor * F.kl_div(current, reference, log_target=True, reduction="batchmean")
        return total + weight_decay * (delta.norm(dim=-1) ** 2 / scale**2).mean()

    def clamp() -> None:
        limit = (clamp_norm_factor * scale)[:, None]
        delta.mul_(torch.clamp(limit / delta.norm(dim=-1, keepdim=True).clamp(min=1e-12), max=1.0))

    losses = optimise([delta], loss, n_iter=n_iter, lr=lr, optimizer=optimizer, grad_clip=grad_clip,
                      stop_loss=stop_loss, after_step=clamp, done=runner.holds(stop_margin))
    return delta.detach(), losses


def request_means(values: torch.Tensor, rows: SubjectBatch, n_requests: int) -> torch.Tensor:
    """(R, d) the mean of ``values`` (B, d) over each request's prompt rows (the KL rows left out)."""
    keep = ~rows.is_kl.to(values.device)
    owner = rows.request.to(values.device)[keep]
    sums = values.new_zeros(n_requests, values.shape[1]).index_add_(0, owner, values[keep])
    counts = torch.bincount(owner, minlength=n_requests).to(values.dtype)
    return sums / counts[:, None]
