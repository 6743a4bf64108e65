"""A routed memory answers a query only if the query names the subject of the edit that would answer it.

The routers (WISE's activation score, MEMOIR's mask overlap, WISE's token match) read the edited matrix's keys.
Late in the model a question's template dominates them: at SmolLM2's layer 25 every token key of "What is the
capital of France?" has cosine > 0.95 with the same token of the edited "What is the capital of Australia?",
so the edit answers both. Early layers still see which words were written: at layer 4 the two country tokens
have cosine 0.29, while "Australia" in the rephrasing "Which city is Australia's capital?" stays close to it.

:class:`SubjectGate` wraps a memory. For each edit it keeps the keys of an early matrix (``subject_params``) at
the tokens of the edit's subject; a query is let through to the edit the memory chose only if its tokens
recall that subject: the mean, over the subject's tokens, of the best cosine any query token reaches is at
least ``subject_radius``. Otherwise the row goes to the unedited model.

Dev stream (ZsRE train records 0-99 as edits, their rephrasings, neighbours from records 400-499; SmolLM2,
layer 4's ``down_proj`` input): every rephrasing recalls its own subject at least 0.56 (median 0.92), and no
neighbour recalls any of the 100 subjects above 0.40 (median 0.31).

A text's first token is never read: at SmolLM2's layer 4 its key is the same whatever the word (cosine
0.86-0.93 between the first tokens of unrelated texts, 0.05 between "Tesla" first and "Tesla" later; an attention
sink), so a subject that opens its prompt (every Temporal edit does) was recalled at ~0.8 by any text, and 57 of
Temporal's 75 irrelevant texts went to a side memory. A subject is read from its second token on; a row's first
token is left out of its recall.

Several edits can name one subject (ZsRE's edit file asks about one subject up to five times, often with
different targets; Hallucination corrects several passages of one person, each prompt the previous one
continued). Their subject keys are alike -- identical when the prompts share the text before the subject -- so
subject recall cannot tell which of them a query asks about. Among the edits a row recalls within
``subject_tie`` of its best, the gate takes the one whose whole prompt agrees best with the row's query
(:func:`agreement`: both texts' tokens recalled by the other, at the same early matrix).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .errors import EditStateError, check_shape
from .matching import TokenIndex
from .request import EditRequest
from .routing import MAIN, Admitting, Memory, unrouted
from .sites import resolve_site, run_through
from .tokens import subject_span


class SubjectError(ValueError):
    """An edit cannot be gated on its subject (none given, or not in its prompt)."""


@dataclass(frozen=True)
class Filing:
    """What the gate keeps of one edit: the early keys (S, d) at its subject's tokens and at all its prompt's."""

    subject: torch.Tensor
    prompt: torch.Tensor


def agreement(query: torch.Tensor, prompts: list[torch.Tensor]) -> torch.Tensor:
    """(E,) how well a query's unit keys (S, d) and each edit prompt's unit keys (S_e, d) agree: the smaller of
    the mean best cosine of the prompt's tokens in the query and of the query's tokens in the prompt.

    Both ways, so a query that is a held prompt continued (or cut short) prefers the prompt it equals."""
    scores = []
    for prompt in prompts:
        cosines = query @ prompt.T
        scores.append(torch.minimum(cosines.amax(0).mean(), cosines.amax(1).mean()))
    return torch.stack(scores)


class SubjectGate:
    """A :class:`~wise_edit.routing.Memory` that passes ``memory``'s decision on only for rows naming its subject.

    ``memory`` routes a row to a value (a memory for WISE, a stored edit for MEMOIR); every held edit is filed
    under the route value that serves it (:meth:`hold`), and a row keeps its route only if it recalls the
    subject of an edit filed under it. A memory that can tell which of its route values would answer a row
    (:class:`~wise_edit.routing.Admitting`: WISE's side memories, MEMOIR's stored masks) leaves the choice to the gate: of those, the
    one filing the subject the row recalls best. The early keys of a query are read by a hook during the same decoder
    call; a call of the edited layer outside a decoder call has none, and then the memory does not answer.
    """

    def __init__(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, subject_params: str, radius: float,
                 memory: Memory, tie: float = 0.0):
        self.model, self.tok, self.radius, self.memory, self.tie = model, tok, radius, memory, tie
        self._admitting = isinstance(memory, Admitting)  # decided once: the memory is fixed for the gate's life
        self.site = resolve_site(model, subject_params)
        weight = self.site.linear.weight
        self.index = TokenIndex(weight.shape[1], weight.device)
        self.keys: list[torch.Tensor] = []  # (S_i, d) subject keys of each held edit, as read (the index normalises)
        self.prompts: list[torch.Tensor] = []  # (P_i, d) keys of each held edit's prompt, first token aside
        self.groups = torch.zeros(0, dtype=torch.long, device=weight.device)  # the route value serving each edit
        self._seen: torch.Tensor | None = None
        self.site.linear.register_forward_pre_hook(self._see)
        model.get_decoder().register_forward_hook(self._forget, always_call=True)

    def _see(self, module: nn.Module, args: tuple) -> None:
        self._seen = args[0].detach()

    def _forget(self, module: nn.Module, args: tuple, out: object) -> None:
        self._seen = None

    def check(self, request: EditRequest) -> tuple[int, int]:
        """The token span of ``request``'s subject in its prompt, its first token aside; raises if it has none."""
        where = f"request {request.case_id}"
        if not request.subject:
            raise SubjectError(f"{where}: subject_params gates on the edit's subject, and this request has none "
                               "(give each request its subject: subject=[...] or a 'subject' field in the data; "
                               "or set subject_params: null)")
        start, end = subject_span(self.tok, request.prompt, request.subject, where)
        if max(start, 1) >= end:
            raise SubjectError(f"{where}: subject {request.subject!r} is only the first token of its prompt, whose "
                               "early key is the same for any text; put a word before it (or set "
                               "subject_params: null)")
        return max(start, 1), end

    def filing(self, request: EditRequest) -> Filing:
        """The early keys of ``request``'s prompt, at its subject's tokens and at all of them."""
        start, end = self.check(request)
        keys = self.prompt_keys(request.prompt)
        return Filing(subject=keys[start:end].clone(), prompt=keys[1:].clone())

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
        """File one edit under the route value ``group`` that serves it."""
        self.keys.append(filing.subject)
        self.prompts.append(filing.prompt)
        self.index.add(filing.subject, filing.subject.new_ones(filing.subject.shape[0]))
        self.groups = torch.cat([self.groups, self.groups.new_tensor([group])])

    @property
    def lacks_prompts(self) -> bool:
        """The held edits' prompt keys are not known (a state saved before the gate kept them)."""
        return len(self.prompts) != len(self.keys)

    def file_prompts(self, prompts: list[str]) -> None:
        """Read the prompt keys of the held edits from their prompts (in the order held), for a state saved
        before the gate kept them."""
        if len(prompts) != len(self.keys):
            raise EditStateError(f"the subject gate holds {len(self.keys)} edits and the edit log {len(prompts)}")
        self.prompts = [self.prompt_keys(prompt)[1:] for prompt in prompts]

    # --- RoutedLinear's Memory protocol ---------------------------------------------------------------
    def route(self, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        seen = self._seen
        if seen is None or seen.shape[:2] != mask.shape or not self.index.count:
            return torch.full(keys.shape[:1], MAIN, dtype=torch.long, device=keys.device)
        read = mask.bool() & (mask.long().cumsum(1) > 1)  # a row's first token is a sink, the same in any text
        recall = self.index.match(seen.float(), read)  # (B, edits)
        if self._admitting:
            return self._pick(recall, self.memory.admitted(keys, mask), seen, read)
        route = self.memory.route(keys, mask)
        best = recall.masked_fill(self.groups[None, :] != route[:, None], -1.0).amax(1)
        return torch.where(best >= self.radius, route, torch.full_like(route, MAIN))

    def _pick(self, recall: torch.Tensor, admitted: torch.Tensor, seen: torch.Tensor,
              mask: torch.Tensor) -> torch.Tensor:
        """(B,) among the route values that would answer a row (``admitted``, (G, B)), the one filing the edit
        whose subject the row recalls best, if by ``radius``; else ``MAIN``. Edits recalled within ``tie`` of the
        best (one subject asked about more than once) are told apart by :func:`agreement` of their prompts.

        With several memories (WISE-Retrieve) the memory whose activation score is highest is often not the one
        that holds the edit: the scores of a memory of 100 similar questions say little about which of them is
        asked. The subject says it."""
        allowed = admitted.T[:, self.groups] & (recall >= self.radius)  # (B, edits)
        recall = recall.masked_fill(~allowed, -1.0)
        best, edit = recall.max(1)
        route = torch.where(best >= self.radius, self.groups[edit], torch.full_like(edit, MAIN))
        if self.lacks_prompts:  # recall alone decides
            return route
        close = allowed & (recall >= best[:, None] - self.tie)
        for row in (close.sum(1) > 1).nonzero()[:, 0].tolist():
            candidates = close[row].nonzero()[:, 0]
            if bool((self.groups[candidates] == self.groups[candidates[0]]).all()):
                continue  # one route value serves them all
            query = F.normalize(seen[row, mask[row].bool()].float(), dim=-1)
            scores = agreement(query, [F.normalize(self.prompts[k], dim=-1) for k in candidates.tolist()])
            route[row] = self.groups[candidates[int(scores.argmax())]]
        return route

    def delta(self, keys: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        return self.memory.delta(keys, route)

    # --- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"subject.keys.{k}": keys.clone() for k, keys in enumerate(self.keys)}
        state.update({f"subject.prompt_keys.{k}": keys.clone() for k, keys in enumerate(self.prompts)})
        return {**state, "subject.groups": self.groups.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "subject.groups" not in state:
            raise EditStateError("the saved state has no subject gate (it was made with subject_params: null)")
        weight = self.site.linear.weight
        self.index, self.keys, self.prompts = TokenIndex(weight.shape[1], weight.device), [], []
        self.groups = torch.zeros(0, dtype=torch.long, device=weight.device)
        for k, group in enumerate(state["subject.groups"].tolist()):
            subject = state[f"subject.keys.{k}"]
            prompt = state.get(f"subject.prompt_keys.{k}", subject.new_zeros(0, subject.shape[-1]))
            for name, keys in (("keys", subject), ("prompt keys", prompt)):
                check_shape(f"subject gate {name} of edit {k}", keys, (keys.shape[0], weight.shape[1]))
            self.hold(Filing(subject.clone().to(weight.device), prompt.clone().to(weight.device)), group)
        if "subject.prompt_keys.0" not in state:  # saved before the gate kept them: file_prompts reads them
            self.prompts = []
