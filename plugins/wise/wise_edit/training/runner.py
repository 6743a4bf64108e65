"""Re-evaluating one batch many times when only the output of the edited linear map changes.

During an edit, every weight below the edited matrix is frozen and so is the matrix's input (its *keys*).
:class:`SiteRunner` therefore runs the model once, keeps the keys and what the frozen part gives, and on each
optimisation step re-runs only what the edited matrix's output reaches, for the rows that carry labels, and
the output head at the label positions. ``fast=False`` is the plain reference: a full forward every step with
the edited matrix's output replaced, full logits; both give the same loss up to float rounding.

Where the edited matrix's output is added straight to the residual stream (the layer's output is
``residual + W a``: Llama, Mistral, Qwen, GPT-2), only the layers above it are re-run. Where it is not (Gemma 3
normalises the MLP's output before adding it), the edited layer is re-run too, from its recorded input. Which
one holds is measured once per layer (:func:`adds_to_residual`), not read from the architecture's name.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import PreTrainedModel

from ..routing import unrouted
from ..sites import EditSite, hidden_of, run_through
from ..tokens import TokenBatch

FFNFunction = Callable[[torch.Tensor], torch.Tensor]


def _with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class _Replay(nn.Module):
    """Stands in for a decoder layer and returns a precomputed output."""

    def __init__(self, make: Callable[[], Any]):
        super().__init__()
        self.make = make

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.make()


class SiteRunner:
    def __init__(self, model: PreTrainedModel, site: EditSite, batch: TokenBatch, fast: bool = True,
                 upper_dtype: torch.dtype = torch.float32):
        self.model, self.site, self.fast = model, site, fast
        self.upper_dtype = upper_dtype
        self.batch = batch.to(model.device)
        labels = self.batch.labels
        self.label_rows = (labels != -100).any(dim=1).nonzero().squeeze(-1)
        # logits at position p - 1 predict the label at p
        rows, cols = (labels[:, 1:] != -100).nonzero(as_tuple=True)
        self._rows, self._cols = rows, cols
        self.targets = labels[:, 1:][rows, cols]
        self._keys = self._capture()
        self._low: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None  # see _low_weights
        self._scored: tuple[torch.Tensor, torch.Tensor] | None = None  # last loss evaluation's logits, targets

    @torch.no_grad()
    def _capture(self) -> torch.Tensor:
        """One pass up to the edited layer recording the keys and the outputs needed to replay the frozen part:
        the layer's output minus the edited matrix's (so a routed memory need not decide) where that output
        adds to the residual stream, else the output of the layer below."""
        seen: dict[str, Any] = {}
        hooks = [self.site.linear.register_forward_hook(
            lambda m, args, out: seen.update(keys=args[0].detach(), linear_out=out.detach()))]
        if self.site.layer_index > 0:
            hooks.append(self.site.layers[self.site.layer_index - 1].register_forward_hook(
                lambda m, args, out: seen.update(below=out)))
        try:
            with unrouted():
                layer_out = run_through(self.model, self.site.layer, input_ids=self.batch.input_ids,
                                        attention_mask=self.batch.attention_mask)
        finally:
            for hook in hooks:
                hook.remove()
        self._replayed: Any = None  # what the layers below the first re-run one give (None: none below)
        if self.fast:
            self._additive = adds_to_residual(self.model, self.site, self.batch, layer_out, seen["linear_out"])
            if self._additive:
                self._replayed = _with_hidden(layer_out, (hidden_of(layer_out) - seen["linear_out"])[self.label_rows])
            elif "below" in seen:
                self._replayed = _with_hidden(seen["below"], hidden_of(seen["below"])[self.label_rows])
        return seen["keys"]

    @property
    def logit_rows(self) -> torch.Tensor:
        """(N,) the batch row of each row of :meth:`logits` (to weigh or split the label positions by row)."""
        return self._rows

    @property
    def keys(self) -> torch.Tensor:
        """(B, S, d_in) input of the edited matrix for every row of the batch."""
        return self._keys

    def logits(self, ffn: FFNFunction) -> torch.Tensor:
        """(N, V) logits at the label positions when the edited matrix computes ``ffn(keys)``."""
        return self._fast_logits(ffn) if self.fast else self._naive_logits(ffn)

    def _low_weights(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The frozen matrices above the edited layer (by their name in the decoder) and the output head's, cast
        to ``upper_dtype`` once per runner: autocast would cast them again on every step (it caches no frozen
        weight), about 0.04 s of a 0.1 s step on the bundled model. The same rounding, so the same loss."""
        if self._low is None:
            layers, first = self.site.layers, self._first_rerun
            upper = {id(p) for layer in list(layers)[first:] for p in layer.parameters()}
            matrices = {name: p.detach().to(self.upper_dtype)
                        for name, p in self.model.get_decoder().named_parameters() if id(p) in upper and p.dim() >= 2}
            self._low = matrices, self.model.get_output_embeddings().weight.detach().to(self.upper_dtype)
        return self._low

    @property
    def _first_rerun(self) -> int:
        """The first decoder layer each step re-runs: the one above the edited matrix, or its own."""
        return self.site.layer_index + (1 if self._additive else 0)

    def _fast_logits(self, ffn: FFNFunction) -> torch.Tensor:
        rows = self.label_rows
        site, layers = self.site, self.site.layers
        out = ffn(self._keys)[rows]  # in float32, whatever upper_dtype
        if self._additive:
            patched = _with_hidden(self._replayed, hidden_of(self._replayed) + out)
            replace = contextlib.nullcontext()
        else:  # the edited layer runs again, its matrix's output replaced
            patched = self._replayed
            replace = _replaced_output(site.linear, lambda keys: out)
        originals = [layers[i] for i in range(self._first_rerun)]
        low = self.upper_dtype != torch.float32
        head = self.model.get_output_embeddings()
        weights, head_weight = self._low_weights() if low else ({}, head.weight)
        # on the CPU the fused attention kernel is slow in bfloat16: 4.0 ms per call (forward and backward, 6 rows
        # of 24 tokens) against 1.5 ms for the plain one (0.7 ms for the fused one in float32)
        attention = sdpa_kernel(SDPBackend.MATH) if low and self.model.device.type == "cpu" else contextlib.nullcontext()
        try:
            for i in range(self._first_rerun):  # the frozen layers below are not re-run
                layers[i] = _Replay(lambda: patched)
            with torch.autocast(self.model.device.type, dtype=self.upper_dtype, enabled=low), attention, replace, \
                    (contextlib.nullcontext() if self._additive else unrouted()):
                hidden = functional_call(self.model.get_decoder(), weights, args=(),
                                         kwargs={"input_ids": self.batch.input_ids[rows],
                                                 "attention_mask": self.batch.attention_mask[rows],
                                                 "use_cache": False}).last_hidden_state
                # map batch rows to their place among the label rows
                place = torch.empty(self.batch.labels.shape[0], dtype=torch.long, device=hidden.device)
                place[rows] = torch.arange(rows.numel(), device=hidden.device)
                logits = F.linear(hidden[place[self._rows], self._cols], head_weight, head.bias)
        finally:
            for i, module in enumerate(originals):
                layers[i] = module
        return logits.float()

    def _naive_logits(self, ffn: FFNFunction) -> torch.Tensor:
        with _replaced_output(self.site.linear, ffn):
            logits = self.model(input_ids=self.batch.input_ids, attention_mask=self.batch.attention_mask,
                                use_cache=False).logits
        return logits[self._rows, self._cols]

    def record(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Keep a loss evaluation's logits (N, V) and targets (N,) for :attr:`lead` (read only when asked)."""
        self._scored = (logits.detach(), targets)

    @property
    def lead(self) -> float:
        """Smallest lead of a target token's logit over the best other token at the last loss evaluation."""
        return -float("inf") if self._scored is None else token_lead(*self._scored)

    def holds(self, margin: float | None) -> Callable[[], bool] | None:
        """A ``done`` test for :func:`~wise_edit.training.loop.optimise`: every target token leads by ``margin``
        at the last loss evaluation (None: no such test)."""
        return None if margin is None else (lambda: self.lead >= margin)

    def cross_entropy(self, ffn: FFNFunction, rows_per_request: int | None = None) -> torch.Tensor:
        """Mean cross-entropy of the label tokens; with ``rows_per_request``, the sum of each request's mean.

        Summing per request keeps a batch of edits as strong as the same edits one at a time (a plain mean
        would give each of k edits 1/k of its gradient). Records the logits for :attr:`lead`.
        """
        logits = self.logits(ffn).float()
        self.record(logits, self.targets)
        losses = nn.functional.cross_entropy(logits, self.targets, reduction="none")
        if rows_per_request is None:
            return losses.mean()
        request = self._rows // rows_per_request
        n = int(request.max()) + 1
        sums = torch.zeros(n, device=losses.device).index_add_(0, request, losses)
        counts = torch.zeros(n, device=losses.device).index_add_(0, request, torch.ones_like(losses))
        return (sums / counts).sum()


@contextlib.contextmanager
def _replaced_output(linear: nn.Module, ffn: FFNFunction) -> Iterator[None]:
    """Within this block ``linear`` returns ``ffn(its input)``."""
    hook = linear.register_forward_hook(lambda m, args, out: ffn(args[0]))
    try:
        yield
    finally:
        hook.remove()


#: per decoder layer, whether its edited matrix's output adds straight to the residual stream (measured once)
_ADDITIVE: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def adds_to_residual(model: PreTrainedModel, site: EditSite, batch: TokenBatch, layer_out: Any,
                     linear_out: torch.Tensor) -> bool:
    """Whether doubling the edited matrix's output moves the layer's output by exactly that output: then the
    layer is ``residual + W a`` and the upper layers can start from ``residual + ffn(a)``. Measured on the
    first batch a layer sees and remembered for it."""
    if site.layer not in _ADDITIVE:
        with unrouted(), _replaced_output(site.linear, lambda a: 2 * linear_out):
            doubled = run_through(model, site.layer, input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        moved = hidden_of(doubled) - hidden_of(layer_out)
        scale = float(linear_out.abs().max()) or 1.0
        _ADDITIVE[site.layer] = bool(torch.allclose(moved, linear_out, rtol=1e-3, atol=1e-4 * scale))
    return _ADDITIVE[site.layer]


@torch.no_grad()
def token_lead(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Smallest lead, over the rows of ``logits`` (N, V), of the target's logit over the best other token's."""
    target = logits.gather(1, targets[:, None])[:, 0]
    return float((target - logits.scatter(1, targets[:, None], -float("inf")).amax(1)).min())


def resolve_dtype(name: str) -> torch.dtype:
    """``upper_dtype`` as a torch dtype; ``auto`` is bfloat16 only where the CPU has native bfloat16 units."""
    if name == "auto":
        native = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()
        return torch.bfloat16 if native else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]
