"""A routed memory answers a query only if the query asks the fact of an edit it would answer with.

The routers (WISE's activation score, MEMOIR's mask overlap) read the edited matrix's keys late in the model,
where a question's template and its subject both weigh: they fire on questions of an edit's form about other
subjects (at SmolLM2's layer 25 "What is the capital of France?" and "... of Australia?" have token cosines
> 0.95) and on other questions about the edited subject. Early layers still see which words were written, so
:class:`FactGate` keeps, for each edit, the keys of an early matrix (``gate_params``) at every token of its
prompt, and lets a row through to an edit only if two measures pass, each against the negatives it is made for
(:class:`PromptKeys`):

- the *weighted recall* of the edit's prompt by the row: the mean, over the edit's tokens, of the best cosine any
  row token reaches, each edit token weighing ``(1 - c)^2`` (``c`` its best cosine with a pool of unedited
  questions of the edits' form: :func:`~wise_edit.matching.token_weights`). Template words weigh ~0, so it asks "does the row name what this edit is
  about?" and keeps out same-form questions about other subjects (nloc, Loc), however the row words the rest;
- the *plain agreement* of the two prompts: each text's tokens recalled by the other (mean best cosine, both
  ways, the smaller of the two), every word weighing 1. The relation's words count as much as the subject's, so
  it asks "the same question?" and keeps out other relations of the edited subject (rloc).

"What currency does Australia use?" recalls "Australia" of the edited "What is the capital of Australia?" but
not "capital"; "France" recalls none of its subject; the rephrasing "Which city is Australia's capital?" recalls
both. No subject is needed: the whole prompt is the key.

Both radii come from the stream's dev data, not from constants (:meth:`FactGate.calibrate`): the recall radius
at the ``gate_quantiles[0]`` quantile of the best weighted recall an unedited same-form question reaches among
other such questions (held as if they were edits), the relation radius at the ``gate_quantiles[1]`` quantile of
the plain agreement of dev pairs of questions about one subject asking different relations (without such pairs:
no relation radius).

A subject, when a request gives one, may still help: with ``subject_radius`` the row must also recall the
subject's tokens (mean best cosine) by that much. A subject that is only its prompt's first token is not
read (see below) and the edit is gated on its prompt alone.

A text's first token is never read: at SmolLM2's layer 4 its key is the same whatever the word (cosine
0.86-0.93 between the first tokens of unrelated texts; an attention sink).

Among several edits a row may reach (one subject asked about more than once, with different answers), the gate
takes the one whose prompt agrees best with the row's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .errors import EditStateError, check_shape
from .matching import TokenIndex, token_weights
from .request import EditRequest
from .routing import MAIN, Admitting, Memory, unrouted
from .sites import resolve_site, run_through
from .tokens import TokenizationError, subject_span

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Filing:
    """What the gate keeps of one edit: the early keys (P, d) of its prompt, first token aside, and (S, d) at its
    subject's tokens ((0, d) when it has no readable subject)."""

    prompt: torch.Tensor
    subject: torch.Tensor


class PromptKeys(TokenIndex):
    """Every held prompt's unit early keys with their weights (:class:`~wise_edit.matching.TokenIndex`, whose
    :meth:`~wise_edit.matching.TokenIndex.match` is the weighted recall), plus the plain two-way agreement."""

    def agreement(self, keys: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, count) twice, for each row (its ``mask``ed tokens) and each held text: the plain agreement (the
        smaller of the mean best cosine of the held text's tokens in the row and of the row's tokens in the held
        text: the same question) and the weighted recall (:meth:`match`, from the same product: the held text's
        tokens only, each weighing its :func:`~wise_edit.matching.token_weights`: the same subject, however the
        row words the rest)."""
        mask = mask.bool()
        cosines = F.normalize(keys.float(), dim=-1) @ self.tokens.T  # (B, S, N)
        best = cosines.masked_fill(~mask[..., None], -1.0).amax(1)  # (B, N): held tokens in the row
        B, S, N = cosines.shape
        sizes = torch.bincount(self.owner, minlength=self.count).to(best.dtype)
        held_in_row, weighted = (best.new_zeros(B, self.count).index_add_(1, self.owner, best * w) / total.clamp(
            min=1e-12) for w, total in ((1.0, sizes), (self.weights, self.totals)))
        per_text = cosines.new_full((B, S, self.count), -1.0).scatter_reduce(
            2, self.owner.expand(B, S, N), cosines, reduce="amax")  # (B, S, count): row tokens in each held text
        row_in_held = (per_text * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        empty = (sizes[None, :] == 0) | ~mask.any(1)[:, None]
        return (torch.minimum(held_in_row, row_in_held).masked_fill(empty, -1.0),
                weighted.masked_fill(empty, -1.0))


def agreement(query: torch.Tensor, prompt: torch.Tensor) -> float:
    """The plain agreement of two texts' early keys (S, d) and (P, d): the smaller of the mean best cosine of the
    prompt's tokens in the query and of the query's tokens in the prompt."""
    index = PromptKeys(prompt.shape[-1], prompt.device)
    index.add(prompt, prompt.new_ones(prompt.shape[0]))
    return float(index.agreement(query[None], torch.ones(1, query.shape[0], dtype=torch.bool,
                                                         device=query.device))[0][0, 0])


@dataclass(frozen=True)
class Calibration:
    """The gate's radii and what they were derived from (recorded with the run)."""

    radius: float
    relation_radius: float | None
    n_pool: int
    n_same_form: int
    n_same_subject: int


class FactGate:
    """A :class:`~wise_edit.routing.Memory` that passes ``memory``'s decision on only for rows asking one of its
    edits' facts.

    ``memory`` routes a row to a value (a memory for WISE, a stored edit for MEMOIR); every held edit is filed
    under the route value that serves it (:meth:`hold`), and a row keeps its route only if it agrees with the
    prompt of an edit filed under it. A memory that can tell which of its route values would answer a row
    (:class:`~wise_edit.routing.Admitting`: WISE's side memories, MEMOIR's stored masks) leaves the choice to the
    gate: of those, the one filing the edit the row agrees with best. The early keys of a query are read by a
    hook during the same decoder call; a call of the edited layer outside a decoder call has none, and then the
    memory does not answer.
    """

    def __init__(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, gate_params: str, memory: Memory,
                 radius: float | None = None, relation_radius: float | None = None,
                 subject_radius: float | None = None):
        self.model, self.tok, self.memory = model, tok, memory
        #: least weighted recall; None until :meth:`calibrate` sets it (or a saved state brings it)
        self.radius = radius
        #: least plain agreement (None: not required)
        self.relation_radius = relation_radius
        self._fixed = radius is not None
        self.subject_radius = subject_radius
        self.calibration: Calibration | None = None
        self._admitting = isinstance(memory, Admitting)  # decided once: the memory is fixed for the gate's life
        self.site = resolve_site(model, gate_params)
        weight = self.site.linear.weight
        #: unit early keys of the same-form pool the token weights are taken against
        self.pool = torch.zeros(0, weight.shape[1], device=weight.device)
        self._empty()
        self._seen: torch.Tensor | None = None
        self.site.linear.register_forward_pre_hook(self._see)
        model.get_decoder().register_forward_hook(self._forget, always_call=True)

    def _empty(self) -> None:
        weight = self.site.linear.weight
        self.prompts = PromptKeys(weight.shape[1], weight.device)
        self.subjects = TokenIndex(weight.shape[1], weight.device)  # weights 1: match is the plain recall
        self.filed: list[Filing] = []
        self.groups = torch.zeros(0, dtype=torch.long, device=weight.device)  # the route value serving each edit

    def _see(self, module: nn.Module, args: tuple) -> None:
        self._seen = args[0].detach()

    def _forget(self, module: nn.Module, args: tuple, out: object) -> None:
        self._seen = None

    def subject_tokens(self, request: EditRequest) -> tuple[int, int] | None:
        """The token span of ``request``'s subject in its prompt from its second token on, or None when the
        request has none or it is only the prompt's first token. Filed whether or not the gate reads subjects
        (``subject_radius``), so a saved stream can be scored both ways."""
        if not request.subject:
            return None
        start, end = subject_span(self.tok, request.prompt, request.subject, f"request {request.case_id}")
        return (max(start, 1), end) if max(start, 1) < end else None

    def check(self, request: EditRequest) -> None:
        """Raise (naming the request) if ``request`` cannot be filed: a subject given but not in its prompt."""
        self.subject_tokens(request)

    def filing(self, request: EditRequest) -> Filing:
        """The early keys of ``request``'s prompt (first token aside) and of its subject, if it gives one."""
        keys = self.prompt_keys(request.prompt)
        if keys.shape[0] < 2:
            raise TokenizationError(f"request {request.case_id}: prompt {request.prompt!r} has one token; the fact "
                                    "gate reads a prompt from its second token on")
        span = self.subject_tokens(request)
        subject = keys[span[0]:span[1]] if span else keys[:0]
        return Filing(prompt=keys[1:].clone(), subject=subject.clone())

    @torch.no_grad()
    def prompt_keys(self, prompt: str) -> torch.Tensor:
        """(S, d) the early keys at every token of ``prompt`` (the first one too: callers drop it)."""
        ids = self.tok(prompt, return_tensors="pt")["input_ids"].to(self.model.device)
        seen: dict[str, torch.Tensor] = {}
        hook = self.site.linear.register_forward_hook(lambda m, args, out: seen.update(keys=args[0].detach()))
        try:
            with unrouted():
                run_through(self.model, self.site.layer, input_ids=ids)
        finally:
            hook.remove()
        return seen["keys"][0].float().clone()

    def hold(self, filing: Filing, group: int) -> None:
        """File one edit under the route value ``group`` that serves it (its tokens weighed against the pool)."""
        self.filed.append(filing)
        self.prompts.add(filing.prompt, token_weights(filing.prompt, self.pool))
        self.subjects.add(filing.subject, filing.subject.new_ones(filing.subject.shape[0]))
        self.groups = torch.cat([self.groups, self.groups.new_tensor([group])])

    def set_pool(self, texts: Sequence[str]) -> None:
        """The same-form questions whose tokens make a word a template word (before the first edit is held)."""
        if self.prompts.count:
            raise EditStateError("the fact gate's pool is set before its first edit")
        keys = [self.prompt_keys(text)[1:] for text in texts]
        self.pool = F.normalize(torch.cat(keys), dim=-1) if keys else self.pool

    def calibrate(self, same_form: Sequence[str], same_subject: Sequence[tuple[str, str]],
                  quantiles: Sequence[float]) -> Calibration:
        """Set the pool and both radii from dev texts. The unedited same-form questions (``same_form``) are cut in
        three: a pool (half of them, the gate's pool from then on), questions held as if edited (a quarter) and
        questions that ask (a quarter); the radius sits at the ``quantiles[0]`` quantile of the best weighted
        recall an asking question reaches. The relation radius sits at the ``quantiles[1]`` quantile of the
        plain agreement of ``same_subject`` pairs (questions about one subject asking different relations)."""
        texts = list(dict.fromkeys(same_form))
        if len(texts) < 4:
            raise ValueError(f"the fact gate's radius is calibrated on unedited questions of the edits' form, and "
                             f"{len(texts)} were given (at least 4); pass same_form=[...] or set fact_radius")
        pool, held_texts, asking = texts[:len(texts) // 2], texts[len(texts) // 2:3 * len(texts) // 4], \
            texts[3 * len(texts) // 4:]
        self.set_pool(pool)
        held = PromptKeys(self.pool.shape[1], self.pool.device)
        for text in held_texts:
            keys = self.prompt_keys(text)[1:]
            held.add(keys, token_weights(keys, self.pool))
        bests = []
        for text in asking:
            keys = self.prompt_keys(text)
            read = _from_second(keys.shape[0], keys.device)
            bests.append(float(held.agreement(keys[None], read)[1].amax()))
        pairs = [agreement(self.prompt_keys(a)[1:], self.prompt_keys(b)[1:]) for a, b in same_subject]
        radius = _quantile(bests, quantiles[0]) + 1e-4
        relation = _quantile(pairs, quantiles[1]) + 1e-4 if pairs else None
        self.calibration = Calibration(radius, relation, len(pool), len(bests), len(pairs))
        self.radius, self.relation_radius = radius, relation
        log.info("fact gate: radius %.3f (q%.2f of %d same-form questions' best among %d), relation radius %s "
                 "(q%.2f of %d same-subject pairs)", radius, quantiles[0], len(bests), len(held_texts),
                 "none" if relation is None else f"{relation:.3f}", quantiles[1], len(pairs))
        return self.calibration

    # --- RoutedLinear's Memory protocol ---------------------------------------------------------------
    def route(self, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        seen = self._seen
        main = torch.full(keys.shape[:1], MAIN, dtype=torch.long, device=keys.device)
        if seen is None or seen.shape[:2] != mask.shape or not self.prompts.count or self.radius is None:
            return main
        read = mask.bool() & (mask.long().cumsum(1) > 1)  # a row's first token is a sink, the same in any text
        plain, weighted = self.prompts.agreement(seen, read)  # (B, edits)
        allowed = weighted >= self.radius
        if self.relation_radius is not None:
            allowed &= plain >= self.relation_radius
        if self.subject_radius is not None:
            has_subject = self.subjects.totals > 0
            allowed &= ~has_subject[None, :] | (self.subjects.match(seen, read) >= self.subject_radius)
        if self._admitting:
            allowed &= self.memory.admitted(keys, mask).T[:, self.groups]
        else:
            allowed &= self.groups[None, :] == self.memory.route(keys, mask)[:, None]
        best, edit = (plain + weighted).masked_fill(~allowed, -5.0).max(1)
        return torch.where(best > -5.0, self.groups[edit], main)

    def delta(self, keys: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        return self.memory.delta(keys, route)

    # --- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"gate.prompt_keys.{k}": f.prompt.clone() for k, f in enumerate(self.filed)}
        state.update({f"gate.subject_keys.{k}": f.subject.clone() for k, f in enumerate(self.filed)})
        radii = (self.radius, self.relation_radius)
        return {**state, "gate.groups": self.groups.clone(), "gate.pool": self.pool.clone(),
                "gate.radii": torch.tensor([0.0 if r is None else r for r in radii]),
                "gate.radii_set": torch.tensor([r is not None for r in radii])}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "gate.groups" not in state:
            raise EditStateError("the saved state has no fact gate (it was made with gate_params: null, or by a "
                                 "version before the fact gate)")
        weight = self.site.linear.weight
        check_shape("fact gate pool", state["gate.pool"], (state["gate.pool"].shape[0], weight.shape[1]))
        self._empty()
        self.pool = state["gate.pool"].clone().to(weight.device)
        for k, group in enumerate(state["gate.groups"].tolist()):
            prompt, subject = state[f"gate.prompt_keys.{k}"], state[f"gate.subject_keys.{k}"]
            for name, keys in (("prompt keys", prompt), ("subject keys", subject)):
                check_shape(f"fact gate {name} of edit {k}", keys, (keys.shape[0], weight.shape[1]))
            self.hold(Filing(prompt.clone().to(weight.device), subject.clone().to(weight.device)), group)
        if not self._fixed:  # radii set in the hyperparameters win over the ones the state was calibrated to
            radius, relation = (float(v) if given else None
                                for v, given in zip(state["gate.radii"], state["gate.radii_set"].tolist()))
            self.radius, self.relation_radius = radius, relation


def _from_second(length: int, device: torch.device) -> torch.Tensor:
    """(1, length) bool: every token but the first."""
    read = torch.ones(1, length, dtype=torch.bool, device=device)
    read[0, 0] = False
    return read


def _quantile(values: list[float], q: float) -> float:
    return float(torch.tensor(values).quantile(q))

