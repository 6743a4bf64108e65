"""What every editing method provides to the editor."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..hparams import HyperParams
from ..routing import Memory, RoutedLinear
from ..sites import EditSite, resolve_site
from ..tokens import TokenBatch
from ..training.batch import generate_prefixes
from ..training.runner import SiteRunner


class EditMethod(ABC):
    """An editor bound to one model: ``apply`` edits it in place, and the edits accumulate across calls.

    ``state_dict``/``load_state_dict`` hold everything the method changed, so the editor can undo an edit
    (non-sequential protocol) and the state can be saved next to an unchanged base model.
    """

    def __init__(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, hparams: HyperParams):
        self.model, self.tok, self.hparams = model, tok, hparams
        self.sites: list[EditSite] = [resolve_site(model, p) for p in hparams.inner_params]
        self._prefixes: list[str] | None = None

    @property
    def prefixes(self) -> list[str]:
        """Context prefixes for training rows, generated on first use (``n_prefixes`` of them)."""
        if self._prefixes is None:
            count, length = getattr(self.hparams, "n_prefixes", 0), getattr(self.hparams, "prefix_length", 8)
            self._prefixes = generate_prefixes(self.model, self.tok, count, length)
        return self._prefixes

    def attach_memory(self, memory: Memory) -> RoutedLinear:
        """Wrap the edited matrix so ``memory`` answers the inputs it recognises (once, for the object's life)."""
        layer = RoutedLinear(self.site.linear, memory)
        self.site.replace(layer)
        layer.watch(self.model)
        return layer

    @property
    def site(self) -> EditSite:
        return self.sites[0]

    def prepare(self, requests: list[dict[str, Any]]) -> None:
        """Called once with the whole request stream before the first edit (for calibrations); default: none."""

    @abstractmethod
    def apply(self, requests: list[dict[str, Any]]) -> dict[str, Any]:
        """Apply one batch of edits; returns training statistics (e.g. the loss curve)."""

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of everything the edits changed."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Return to a state from :meth:`state_dict`."""

    def runner(self, batch: TokenBatch, site: EditSite | None = None) -> SiteRunner:
        return SiteRunner(self.model, site or self.site, batch, fast=self.hparams.fast_loop)
