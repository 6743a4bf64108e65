"""Methods that leave the model's matrix alone and route inputs to a memory beside it (WISE, MEMOIR, GRACE).

What they share: the edited matrix is wrapped once in a :class:`~wise_edit.routing.RoutedLinear` whose memory
answers the inputs it recognises, the memory's state is the method's state, and WISE and MEMOIR calibrate on the
same background key (the mean key of the stream's irrelevant texts) before their first edit.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Sequence

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..hparams import SharedMemoryHyperParams, TrainedEditHyperParams
from ..request import EditRequest
from ..routing import Memory, RoutedLinear
from ..fact_gate import FactGate, Filing
from ..training.background import background_mean, background_texts
from .base import EditMethod


class RoutedEditMethod(EditMethod):
    """An :class:`EditMethod` whose edits live in ``memory``, served through ``layer`` (attached once, for the
    object's life: never per edit)."""

    def __init__(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, hparams: TrainedEditHyperParams):
        super().__init__(model, tok, hparams)
        self.memory = self.build_memory(self.site.linear)
        gate_params = getattr(hparams, "gate_params", None)
        self.gate = None if gate_params is None else FactGate(model, tok, gate_params, self.memory,
                                                              hparams.fact_radius, hparams.relation_radius,
                                                              hparams.subject_radius)
        self.layer = RoutedLinear(self.site.linear, self.gate or self.memory)
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

    def prepare_gate(self, requests: list[EditRequest], same_form: Sequence[str],
                     same_subject: Sequence[tuple[str, str]]) -> None:
        """The fact gate's pool and (unless set in the hyperparameters) radii from the dev texts, before the first
        edit; without any same-form questions, from the stream's own ``negative_prompt`` questions or, without
        those either, from the model's own short texts (a weak stand-in: pass ``same_form``)."""
        if self.gate is None or self.gate.prompts.count or self.gate.pool.numel():
            return  # set once, before the first edit (or brought by a saved state)
        texts = list(dict.fromkeys(same_form)) or background_texts(requests, 400, self.model, self.tok,
                                                                   self.hparams.prefix_length, "negative_prompt")
        if self.gate.radius is None:
            self.gate.calibrate(texts, same_subject, self.hparams.gate_quantiles)
        else:
            self.gate.set_pool(texts[:len(texts) // 2])

    def extra_state(self) -> dict[str, Any]:
        calibration = self.gate.calibration if self.gate is not None else None
        return {**super().extra_state(), **({"gate_calibration": vars(calibration)} if calibration else {})}

    def check_requests(self, requests: list[EditRequest]) -> None:
        if self.gate is not None:
            for request in requests:
                self.gate.check(request)

    def filings(self, requests: list[EditRequest]) -> list[Filing]:
        """What the fact gate keeps of each request (nothing without a gate), read before training: a request
        the gate cannot file fails before its edit is made."""
        return [] if self.gate is None else [self.gate.filing(request) for request in requests]

    def hold_subjects(self, filings: list[Filing], groups: list[int]) -> None:
        """File each edit under the route value that now serves it."""
        if self.gate is not None:
            for filing, group in zip(filings, groups):
                self.gate.hold(filing, group)

    def state_dict(self) -> dict[str, torch.Tensor]:
        gate = self.gate.state_dict() if self.gate is not None else {}
        return {**self.memory.state_dict(), **gate}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.memory.load_state_dict(state)
        if self.gate is not None:
            self.gate.load_state_dict(state)
