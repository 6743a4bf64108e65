"""Protecting earlier edits from later ones that read the same inputs (beyond the papers; off at ``protect: 0``).

A memory shared by many edits (WISE's side memory, the columns MEMOIR's masks have in common) lets each new
edit move the output of every earlier edit whose keys it overlaps; on ZsRE's one-template prompts that is most
of them. We keep the second moment of the earlier edits' keys, ``G = sum_i K_i^T K_i / ||K_i||^2`` (each edit
weighs one, whatever its length; ``K_i`` masked by the edit's columns where the method has them), and use it
as one matrix, ``P = (I + protect * G)^-1`` (:meth:`KeyProtection.preconditioner`): directions earlier edits
read move ``1 + protect * g`` times slower and unused directions as fast as before -- the soft form of a
null-space projection; the new edit still goes where it must. Where it is applied depends on the optimiser:

- MEMOIR (SGD on whole columns) right-multiplies the gradient of its columns by ``P``.
- WISE (Adam, whose per-entry scaling would undo a preconditioned gradient) right-multiplies each optimiser
  *step* by ``P``. The step is then cut back to the shard's entry-wise mask, which breaks the projection: it
  is exact only with ``mask_ratio: 1``.
"""

from __future__ import annotations

import torch

from ..errors import EditStateError, check_shape

STATE_KEY = "protect_gram"


class KeyProtection:
    def __init__(self, d_in: int, strength: float, device: torch.device):
        self.strength = strength
        self.gram = torch.zeros(d_in, d_in, device=device) if strength > 0 else None

    def preconditioner(self, columns: torch.Tensor | None = None) -> torch.Tensor | None:
        """(c, c) matrix to right-multiply updates of the inputs ``columns`` (default all) with; None if off."""
        if self.gram is None:
            return None
        sub = self.gram if columns is None else self.gram[columns][:, columns]
        eye = torch.eye(sub.shape[0], device=sub.device, dtype=sub.dtype)
        return torch.linalg.inv(eye + self.strength * sub)

    def reset(self) -> None:
        """Forget every recorded edit (a new memory that none of them is served by)."""
        if self.gram is not None:
            self.gram.zero_()

    def add(self, keys: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Record one edit: ``keys`` (n_tokens, d_in) of its training rows, ``mask`` (d_in,) its columns."""
        if self.gram is None:
            return
        masked = keys if mask is None else keys * mask.to(keys.dtype)
        self.gram += masked.T @ masked / masked.pow(2).sum().clamp(min=1e-12)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.gram is None else {STATE_KEY: self.gram.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.gram is None:
            return
        if STATE_KEY not in state:
            raise EditStateError(f"these hparams protect earlier edits (protect > 0) but the saved state has no "
                             f"'{STATE_KEY}'; load it with the hparams it was saved with")
        check_shape("protection key moment", state[STATE_KEY], self.gram.shape)
        self.gram = state[STATE_KEY].clone().to(self.gram.device)
