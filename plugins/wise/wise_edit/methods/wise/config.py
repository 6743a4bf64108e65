from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Union

from ...hparams import HyperParamsError, SharedMemoryHyperParams


@dataclass
class WISEHyperParams(SharedMemoryHyperParams):
    """WISE (Wang et al. 2024): side memory, activation router, knowledge shards merged with TIES."""

    SITES: ClassVar[Union[int, None]] = 1

    n_iter: int = 70
    #: margins (alpha, beta, gamma) of the routing loss: irrelevant < alpha, edits > beta, gap > gamma
    act_margin: list[float] = field(default_factory=lambda: [5.0, 20.0, 10.0])
    act_ratio: float = 0.88
    mask_ratio: float = 0.2
    norm_constraint: float = 1.0
    save_freq: int = 500
    merge_freq: int = 1000
    densities: float = 0.53
    #: how finished shards become part of the memory (the papers' "ties", or "sum"; see side_memory.py):
    #: "ties": each shard trains on the merged memory alone, in its own random subspace; finished shards wait,
    #: unserved, for the merge, which combines them with TIES (upstream EasyEdit and the paper);
    #: "sum": each shard trains on top of the merged memory and every finished shard (all are served), so the
    #: shards are residuals of one another and a merge adds them exactly: it changes nothing served
    merge_alg: str = "ties"
    retrieve: bool = False
    #: the side memory reads keys minus the background key (beyond the paper; off = the paper): what all
    #: prompts share then neither raises the routing score of unrelated prompts nor carries one edit into another
    center_keys: bool = False
    #: route and calibrate on the memory's gain ||D a|| / ||a|| instead of ||D a|| (beyond the paper; router.py);
    #: the margin loss keeps the absolute score its ``act_margin`` values are written for
    relative_scores: bool = False
    #: train each edit against the request's ``negative_prompt`` too (beyond the paper): an unedited question of
    #: the same form is an irrelevant row of the margin loss, so the memory learns to fire on what is asked
    #: about, not on the question's template
    neighbour_negatives: bool = False
    #: answer only queries that recall a held edit this well (beyond the paper; None = the paper's router alone):
    #: the weighted soft recall of the edit's distinctive tokens (``matching.py``), in [0, 1]
    match_radius: Union[float, None] = None
    #: unedited questions of the edits' form whose tokens make the match pool (``matching.py``)
    match_texts: int = 300

    def validate(self, source: str) -> None:
        super().validate(source)
        if len(self.act_margin) != 3:
            raise HyperParamsError(f"{source}: key 'act_margin' needs [alpha, beta, gamma], got {self.act_margin}")
        for name in ("mask_ratio", "act_ratio", "densities"):
            if not 0 < getattr(self, name) <= 1:
                raise HyperParamsError(f"{source}: key '{name}' must be in (0, 1], got {getattr(self, name)}")
        self._positive(source, "norm_constraint")
        if self.merge_alg not in ("ties", "sum"):
            raise HyperParamsError(f"{source}: key 'merge_alg' must be 'ties' or 'sum', got {self.merge_alg!r}")
        self._at_least(source, match_texts=1)
        if self.match_radius is not None and not 0 < self.match_radius <= 1:
            raise HyperParamsError(f"{source}: key 'match_radius' must be in (0, 1] or null, got {self.match_radius}")
        if self.save_freq < 1 or self.merge_freq % self.save_freq:
            raise HyperParamsError(f"{source}: key 'merge_freq' ({self.merge_freq}) must be a multiple of "
                                   f"'save_freq' ({self.save_freq})")
