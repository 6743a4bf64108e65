"""Methods that leave the model's matrix alone and route inputs to a memory beside it (WISE, MEMOIR, GRACE).

What they share: the edited matrix is wrapped once in a :class:`~wise_edit.routing.RoutedLinear` whose memory
answers the inputs it recognises, the memory's state is the method's state, and WISE and MEMOIR calibrate on the
same background key (the mean key of the stream's irrelevant texts) before their first edit.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..hparams import SharedMemoryHyperParams, TrainedEditHyperParams
from ..request import EditRequest
from ..routing import Memory, RoutedLinear
from ..training.background import background_mean, background_texts
from .base import EditMethod


class RoutedEditMethod(EditMethod):
    """An :class:`EditMethod` whose edits live in ``memory``, served through ``layer`` (attached once, for the
    object's life: never per edit)."""

    def __init__(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, hparams: TrainedEditHyperParams):
        super().__init__(model, tok, hparams)
        self.memory = self.build_memory(self.site.linear)
        self.layer = RoutedLinear(self.site.linear, self.memory)
        self.site.replace(self.layer)
        self.layer.watch(model.get_decoder())

    @abstractmethod
    def build_memory(self, linear: nn.Linear) -> Memory:
        """The method's empty memory beside ``linear`` (the configured matrix, still unwrapped)."""

    def background_key(self, requests: list[EditRequest]) -> torch.Tensor:
        """(d_in,) the mean key at the edited matrix of the stream's background texts (``background_from``;
        without any, the model's own prefixes), cached on disk per model and text set."""
        hp: SharedMemoryHyperParams = self.hparams  # type: ignore[assignment]
        texts = background_texts(requests, hp.n_background, self.model, self.tok, hp.prefix_length,
                                 hp.background_from)
        return background_mean(self.model, self.tok, self.site, self.layer.base.weight, texts, hp.max_length)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.memory.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.memory.load_state_dict(state)
