"""WISE's side memories: copies of the edited FFN output matrix, stored as their change from it.

Memory ``m`` answers with ``W + D_m``. With ``serve_pending`` (``merge_alg: sum``) ``D_m = merged_m + sum(pending
shards of m)``: shards are trained one on top of the other, so their sum is what was trained, and a merge adds
them exactly. Without it (``merge_alg: ties``, the paper's) ``D_m = merged_m``: each shard trains on the merged
memory alone, and finished shards wait, unserved, for the TIES merge. The shard being trained (``live``) is
always served with the newest memory. WISE-Merge keeps one memory for the whole stream; WISE-Retrieve closes a
memory at every merge and opens a new one. The object
plugs into :class:`wise_edit.routing.RoutedLinear` (``route`` / ``delta``).

The memories read :meth:`SideMemory.read` of the keys: the keys themselves (the paper), or with ``center_keys``
the keys minus the background key, so a memory answers ``W a + D_m (a - center)`` and scores ``a - center``.

With ``match_radius`` (beyond the paper) a memory answers only a query that also recalls one of the edits it
holds (:mod:`wise_edit.matching`): the activation score says the memory would move this input, the match that
the input asks about something the memory was taught.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...errors import EditStateError, check_shape
from ...matching import TokenIndex, token_weights
from ...routing import MAIN
from .router import activation_scores, select, threshold, token_scores


@dataclass
class Memory:
    merged: torch.Tensor  # (d_out, d_in) change already merged
    pending: list[torch.Tensor] = field(default_factory=list)  # finished shards awaiting the next merge
    edit_keys: list[torch.Tensor] = field(default_factory=list)  # (S_i, d_in) query keys of each held edit
    threshold: float = float("inf")
    stale: bool = False  # the threshold is to be recomputed before the memory next routes (SideMemory.settle)
    index: TokenIndex | None = None  # the held edits' tokens, for the match gate
    serve_pending: bool = False  # finished shards answer before they are merged (merge_alg: sum)
    merged_edits: int = 0  # edit_keys[:merged_edits] are the merged shards' edits
    live_from: int = 0  # edit_keys[live_from:] are the live shard's (between them: the pending shards')

    def served_keys(self) -> list[torch.Tensor]:
        """The held edits whose shard the memory serves (a pending shard's wait for their merge)."""
        if self.serve_pending:
            return self.edit_keys
        return self.edit_keys[:self.merged_edits] + self.edit_keys[self.live_from:]

    def change(self) -> torch.Tensor:
        """What the memory serves (the live shard aside)."""
        return self.merged + sum(self.pending) if self.pending and self.serve_pending else self.merged


class SideMemory:
    def __init__(self, shape: torch.Size, device: torch.device, act_ratio: float, relative_scores: bool = False,
                 match_radius: float | None = None, serve_pending: bool = False):
        self.shape, self.device, self.act_ratio = shape, device, act_ratio
        self.serve_pending = serve_pending
        self.relative_scores = relative_scores  # route on the memory's gain (router.py), not its absolute output
        self.match_radius = match_radius
        #: (P, d_in) unit keys of every token of the same-form pool questions (None: not collected yet)
        self.pool: torch.Tensor | None = None
        self.memories: list[Memory] = []
        self._changes: torch.Tensor | None = None  # (M, d_out, d_in) cache of each memory's change
        self.live: torch.Tensor | None = None  # the shard being trained, added to the newest memory
        self.center = torch.zeros(shape[1], device=device)  # subtracted from keys before any memory reads them

    def read(self, keys: torch.Tensor) -> torch.Tensor:
        """What the memories see of ``keys`` (..., d_in)."""
        return keys - self.center

    def open(self) -> Memory:
        """Start a new (empty) memory: WISE-Merge does this once, WISE-Retrieve after every merge."""
        self.memories.append(Memory(merged=torch.zeros(self.shape, device=self.device),
                                    index=TokenIndex(self.shape[1], self.device), serve_pending=self.serve_pending))
        self.refresh()
        return self.memories[-1]

    def set_pool(self, keys: torch.Tensor) -> None:
        """The same-form pool's token keys (P, d_in); edits held from now on are weighed against it."""
        check_shape("WISE match pool", keys, (keys.shape[0], self.shape[1]))
        self.pool = torch.nn.functional.normalize(keys, dim=-1).to(self.device)

    def hold(self, keys: torch.Tensor) -> None:
        """The newest memory now holds the edit whose query tokens have these keys (S, d_in)."""
        memory = self.active
        memory.edit_keys.append(keys)
        memory.index.add(keys, token_weights(keys, self.pool))

    @property
    def active(self) -> Memory:
        return self.memories[-1]

    def refresh(self) -> None:
        """Recompute the cached changes (after any edit, shard save or merge)."""
        changes = [m.change() for m in self.memories]
        if changes and self.live is not None:
            changes[-1] = changes[-1] + self.live
        self._changes = torch.stack(changes) if changes else None

    def change(self, index: int) -> torch.Tensor:
        return self._cached()[index]

    def _cached(self) -> torch.Tensor:
        if self._changes is None:
            raise EditStateError("WISE side memory: no memory is open (open() one before editing or routing)")
        return self._changes

    def calibrate(self, index: int) -> None:
        """Recalibrate memory ``index`` from what it does *now* for every edit it holds, when it next routes.

        Only routing (and saving) reads a threshold, and computing one is a product over every held edit's
        tokens: done after every edit, each edit's cost grew with T. Marked here and computed by :meth:`settle`
        from the same state, the threshold is the one an immediate calibration would give.
        """
        self.memories[index].stale = True

    def settle(self) -> None:
        """Compute every threshold marked by :meth:`calibrate`."""
        for index, memory in enumerate(self.memories):
            if memory.stale:
                self._calibrate(index)
                memory.stale = False

    def _calibrate(self, index: int) -> None:
        memory = self.memories[index]
        held = memory.served_keys()
        if not held:
            memory.threshold = float("inf")
            return
        # every held edit's tokens in one product (the same numbers as scoring each edit alone, one call)
        keys = self.read(torch.cat(held))
        lengths = torch.tensor([k.shape[0] for k in held], device=keys.device)
        norms = token_scores(keys, self.change(index), self.relative_scores)
        owner = torch.repeat_interleave(torch.arange(len(lengths), device=keys.device), lengths)
        scores = norms.new_zeros(len(lengths)).index_add_(0, owner, norms) / lengths
        memory.threshold = threshold(scores, self.act_ratio)

    # --- RoutedLinear's Memory protocol ---------------------------------------------------------------
    def route(self, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scored = self._scores(keys, mask)
        if scored is None:
            return torch.full(keys.shape[:1], MAIN, dtype=torch.long, device=keys.device)
        return select(*scored)

    def admitted(self, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(M, B) bool: which memories would answer each row (score at or above threshold; match gate passed).

        The subject gate picks among them the memory holding the subject the row names
        (:class:`wise_edit.subject_gate.SubjectGate`)."""
        scored = self._scores(keys, mask)
        if scored is None:
            return torch.zeros(0, keys.shape[0], dtype=torch.bool, device=keys.device)
        scores, limits = scored
        return scores >= limits[:, None]

    def _scores(self, keys: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(M, B) each memory's activation score of each row (-inf where the match gate refuses) and (M,) the
        memories' thresholds; None while no memory is open."""
        self.settle()
        if self._changes is None:
            return None
        read = self.read(keys)
        scores = torch.stack([activation_scores(read, d, mask, self.relative_scores) for d in self._changes])
        limits = torch.tensor([m.threshold for m in self.memories], dtype=scores.dtype, device=scores.device)
        if self.match_radius is not None:
            scores = torch.where(self.matches(keys, mask) >= self.match_radius, scores, -float("inf"))
        return scores, limits

    def matches(self, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(M, B) how well each row recalls the best-recalled edit of each memory (-1 for an empty memory)."""
        return torch.stack([m.index.match(keys, mask).amax(-1) if m.index.count
                            else keys.new_full(keys.shape[:1], -1.0) for m in self.memories])

    def delta(self, keys: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        changes = self._cached()
        out = keys.new_zeros(*keys.shape[:-1], self.shape[0])
        read = self.read(keys)
        for index in route.unique().tolist():
            if index != MAIN:
                rows = route == index
                out[rows] = read[rows] @ changes[index].T
        return out

    # --- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        self.settle()
        state: dict[str, torch.Tensor] = {"num_memories": torch.tensor(len(self.memories)),
                                          "center": self.center.clone()}
        if self.pool is not None:
            state["match_pool"] = self.pool.clone()
        for m, memory in enumerate(self.memories):
            state[f"memory.{m}.merged"] = memory.merged.clone()
            if memory.threshold != float("inf"):  # a memory that holds no edit yet has none (never answers)
                state[f"memory.{m}.threshold"] = torch.tensor(memory.threshold)
            state[f"memory.{m}.num_pending"] = torch.tensor(len(memory.pending))
            state[f"memory.{m}.num_edits"] = torch.tensor(len(memory.edit_keys))
            state[f"memory.{m}.merged_edits"] = torch.tensor(memory.merged_edits)
            state[f"memory.{m}.live_from"] = torch.tensor(memory.live_from)
            for k, shard in enumerate(memory.pending):
                state[f"memory.{m}.pending.{k}"] = shard.clone()
            for k, keys in enumerate(memory.edit_keys):
                state[f"memory.{m}.edit_keys.{k}"] = keys.clone()
        if self.live is not None:
            state["live"] = self.live.clone()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, tensor in state.items():
            if name == "center":
                check_shape("WISE background key", tensor, self.shape[1:])
            elif name == "match_pool":
                check_shape("WISE match pool", tensor, (tensor.shape[0], self.shape[1]))
            elif name == "live" or name.endswith(".merged") or ".pending." in name:
                check_shape(f"WISE {name}", tensor, self.shape)
            elif ".edit_keys." in name:
                check_shape(f"WISE {name}", tensor, (tensor.shape[0], self.shape[1]))
        self.memories = []
        self.center = state["center"].clone().to(self.device)
        self.pool = state["match_pool"].clone().to(self.device) if "match_pool" in state else None
        for m in range(int(state["num_memories"])):
            self.open()
            memory = self.active
            memory.merged = state[f"memory.{m}.merged"].clone().to(self.device)
            memory.pending = [state[f"memory.{m}.pending.{k}"].clone().to(self.device)
                              for k in range(int(state[f"memory.{m}.num_pending"]))]
            for k in range(int(state[f"memory.{m}.num_edits"])):
                self.hold(state[f"memory.{m}.edit_keys.{k}"].clone().to(self.device))
            memory.threshold = float(state.get(f"memory.{m}.threshold", float("inf")))
            memory.merged_edits = int(state.get(f"memory.{m}.merged_edits", 0))
            memory.live_from = int(state.get(f"memory.{m}.live_from", 0))
        self.live = state["live"].clone().to(self.device) if "live" in state else None
        self.refresh()
