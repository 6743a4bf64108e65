from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...request import EditRequest
from ...routing import query_mask
from ...timing import phase
from ...training.background import background_texts, token_keys
from ...training.batch import edit_batch, plain_rows
from ...training.loop import batch_clip, optimise
from ...training.protection import KeyProtection
from ..routed import RoutedEditMethod
from .config import WISEHyperParams
from .loss import margin_loss, separated
from .merge import ties_merge
from .router import activation_scores
from .shards import shard_mask
from .side_memory import SideMemory


class WISE(RoutedEditMethod):
    """Edits go to a side memory next to the configured FFN matrix; the main memory never changes.

    Every edit lands in the same side memory for the life of this object (and its saved state): it is
    created once, at construction, never per edit.
    """

    hparams: WISEHyperParams
    memory: SideMemory

    def __init__(self, model, tok, hparams: WISEHyperParams):
        super().__init__(model, tok, hparams)
        weight = self.site.linear.weight
        self.edits = 0  # edits applied so far; decides shard saves and merges
        self.protection = KeyProtection(weight.shape[1], hparams.protect, weight.device)
        self._centered = not hparams.center_keys  # True once the side memory's center is settled

    def build_memory(self, linear: nn.Linear) -> SideMemory:
        hp = self.hparams
        side = SideMemory(linear.weight.shape, linear.weight.device, hp.act_ratio, hp.relative_scores,
                          hp.match_radius, serve_pending=hp.merge_alg == "sum")
        side.open()
        return side

    def prepare(self, requests: list[EditRequest], same_form: Sequence[str] = (),
                same_subject: Sequence[tuple[str, str]] = ()) -> None:
        """With ``center_keys``: the background key of the stream's irrelevant prompts (as MEMOIR's TopHash).
        With ``match_radius``: the match gate's pool, the first ``match_texts`` of ``same_form`` (or, without
        them, of the stream's ``negative_prompt`` questions)."""
        hp = self.hparams
        self.prepare_gate(requests, same_form, same_subject)
        if not self._centered:
            self.memory.center = self.background_key(requests)
            self._centered = True
        if hp.match_radius is not None and self.memory.pool is None:
            texts = list(dict.fromkeys(same_form))[:hp.match_texts] or background_texts(
                requests, hp.match_texts, self.model, self.tok, hp.prefix_length, "negative_prompt")
            self.memory.set_pool(token_keys(self.model, self.tok, self.site, self.layer.base.weight, texts,
                                            hp.max_length))

    def _mask(self) -> torch.Tensor:
        hp = self.hparams
        weight = self.layer.base.weight
        return shard_mask(weight.shape, hp.mask_ratio, hp.seed, self.edits // hp.save_freq, weight.device)

    def apply(self, requests: list[EditRequest]) -> dict[str, Any]:
        hp = self.hparams
        subjects = self.filings(requests)  # before any state changes: a request it refuses changes nothing
        self.prepare(requests)
        alpha, beta, gamma = hp.act_margin
        with phase("capture"):
            batch, irrelevant = edit_batch(self.tok, requests, self.prefixes, include_loc=True,
                                           max_length=hp.max_length, negatives=hp.neighbour_negatives,
                                           target_eos=hp.target_eos)
            runner = self.runner(batch)
        weight = self.layer.base.weight
        side = self.memory
        fixed = side.active.change()
        mask = self._mask()
        live = (side.live.clone() if side.live is not None else torch.zeros_like(weight)).requires_grad_(True)
        irrelevant = irrelevant.to(weight.device)
        # edit rows decide on their prompt; irrelevant rows on all their tokens (they have no target). The margins
        # are in units of the paper's absolute score, so the loss uses it even when routing uses the relative one
        scored = query_mask(runner.batch.attention_mask, runner.batch.query_lengths)
        routing_loss: list[torch.Tensor] = []
        routed = [False]  # the edits' scores reach beta and lead every irrelevant row's by gamma (stop_margin)

        def ffn(keys: torch.Tensor) -> torch.Tensor:
            change = fixed + live * mask
            scores = activation_scores(side.read(keys), change, scored)
            routing_loss.append(margin_loss(scores[~irrelevant], scores[irrelevant], alpha, beta, gamma))
            if hp.stop_margin is not None:
                routed[0] = separated(scores.detach()[~irrelevant], scores.detach()[irrelevant], beta, gamma)
            return F.linear(keys, weight + change) - F.linear(side.center, change)

        def loss() -> torch.Tensor:
            routing_loss.clear()
            return runner.cross_entropy(ffn, 1 + len(self.prefixes)) + routing_loss[0]

        with phase("protection"):
            project = self.protection.preconditioner()  # applied to Adam's step, not its gradient (protection.py)
        previous = live.detach().clone()

        def constrain() -> None:
            if project is not None:
                live.copy_(previous + (live - previous) @ project)
            live.mul_(mask).clamp_(-hp.norm_constraint, hp.norm_constraint)
            previous.copy_(live)

        n = len(requests)
        with phase("steps"):
            losses = optimise([live], loss, n_iter=hp.n_iter, lr=hp.edit_lr, optimizer=hp.optimizer,
                              grad_clip=batch_clip(hp.grad_clip, n),
                              stop_loss=None if hp.stop_loss is None else hp.stop_loss * n, after_step=constrain,
                              done=None if hp.stop_margin is None
                              else lambda: runner.lead >= hp.stop_margin and routed[0])
        side.live = live.detach()
        with phase("hold"):
            for row in plain_rows(len(requests), len(self.prefixes), weight.device).tolist():
                length = int(runner.batch.query_lengths[row])
                side.hold(runner.keys[row, :length].detach().clone())
                rows = slice(row, row + 1 + len(self.prefixes))
                self.protection.add(side.read(runner.keys[rows][runner.batch.attention_mask[rows].bool()]))
            self.hold_subjects(subjects, [len(side.memories) - 1] * len(requests))
        with phase("calibrate"):
            before, self.edits = self.edits, self.edits + len(requests)
            self._close_shards(before)
            side.refresh()
            side.calibrate(len(side.memories) - 1)
        return {"losses": losses}

    def _close_shards(self, before: int) -> None:
        """At a shard boundary store the live shard; at a merge boundary merge the stored shards.

        A boundary counts once the edit counter passes it (a batch of edits may step over it).

        The caller refreshes and calibrates the active memory afterwards; only a memory that retrieve mode
        closes is calibrated here, before the new one opens.
        """
        hp, side = self.hparams, self.memory
        if self.edits // hp.save_freq == before // hp.save_freq or side.live is None:
            return
        active = side.active
        active.pending.append(side.live)
        active.live_from = len(active.edit_keys)
        side.live = None
        if self.edits // hp.merge_freq == before // hp.merge_freq:
            return
        merged = sum(active.pending) if hp.merge_alg == "sum" else ties_merge(active.pending, hp.densities)
        active.merged = active.merged + merged
        active.pending = []
        active.merged_edits = len(active.edit_keys)
        if hp.retrieve:
            side.refresh()
            side.calibrate(len(side.memories) - 1)
            side.open()
            # protection keeps a memory's later edits off its earlier ones; the new memory holds none of those
            # (each is answered by its own memory), so their keys no longer hold its training back
            self.protection.reset()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**super().state_dict(), **self.protection.state_dict(), "edits": torch.tensor(self.edits)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        self.edits = int(state.pop("edits"))
        self.protection.load_state_dict(state)
        super().load_state_dict(state)
        self._centered = True  # the center is part of the state
