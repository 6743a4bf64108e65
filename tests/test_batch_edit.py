"""Batch editing (batch_size > 1): several edits trained together, same protocol and scoring."""

import torch

from wise_edit import LifelongEditor
from wise_edit.methods.memoir import MEMOIRHyperParams
from wise_edit.methods.wise import WISEHyperParams
from wise_edit.request import as_requests

from conftest import REQUESTS, routes

SITE = "model.layers[2].mlp.down_proj.weight"
TINY = {"model_name": "tiny", "inner_params": [SITE], "n_prefixes": 2, "prefix_length": 4, "stop_loss": 0.0}


class Counting:
    """Wraps a method's ``apply`` to record the batches the editor hands it."""

    def __init__(self, method):
        self.method, self.batches = method, []
        self.inner = method.apply
        method.apply = self

    def __call__(self, requests):
        self.batches.append([r.case_id for r in requests])
        return self.inner(requests)


def test_memoir_batch_trains_each_edit_on_its_own_mask(model, tok):
    hp = MEMOIRHyperParams.from_dict({**TINY, "alg_name": "MEMOIR", "edit_lr": 5.0, "n_iter": 30, "top_k": 32,
                                      "irr_threshold": 0.6, "batch_size": 2})
    editor = LifelongEditor(hp, model=model, tok=tok)
    calls = Counting(editor.method)
    pre = editor.score(REQUESTS, [None] * 4)
    run = editor.edit_requests(REQUESTS, sequential_edit=True, progress=False)
    assert calls.batches == [[0, 1], [2, 3]]
    assert len(editor.method.memory.db) == 4
    assert routes(editor, [r["prompt"] for r in REQUESTS]) == [0, 1, 2, 3]
    assert all(a["rewrite_acc"] > b["rewrite_acc"] for a, b in zip(run["requests"], pre))
    assert [r["train_steps"] for r in run["requests"]] == [30] * 4  # each request reports its batch's curve


def test_wise_batches_cross_shard_boundaries(model, tok):
    # save_freq 3 with batches of 2: the counter goes 2 -> 4 and passes the boundary at 3 without landing on it
    hp = WISEHyperParams.from_dict({**TINY, "alg_name": "WISE", "edit_lr": 0.1, "optimizer": "adam", "n_iter": 20,
                                    "act_margin": [0.5, 3.0, 2.0], "act_ratio": 0.8, "save_freq": 3,
                                    "merge_freq": 99, "batch_size": 2})
    editor = LifelongEditor(hp, model=model, tok=tok)
    editor.edit_requests(REQUESTS, sequential_edit=True, progress=False)
    side = editor.method.memory
    assert editor.method.edits == 4 and len(side.active.pending) == 1 and side.live is None
    assert len(side.active.edit_keys) == 4
    assert torch.count_nonzero(side.active.pending[0]) > 0


def test_batch_loss_is_the_sum_of_each_requests_mean(model, tok):
    from wise_edit.training.batch import edit_batch
    from wise_edit.training.runner import SiteRunner
    from wise_edit.sites import resolve_site

    site = resolve_site(model, SITE)
    prefixes = ["Well. ", "So. "]

    def loss(requests, per_request):
        batch, _ = edit_batch(tok, as_requests(requests), prefixes, include_loc=False, max_length=64)
        runner = SiteRunner(model, site, batch)
        return runner.cross_entropy(site.linear, len(prefixes) + 1 if per_request else None)

    together = loss(REQUESTS[:2], per_request=True)
    alone = [loss([r], per_request=False) for r in REQUESTS[:2]]
    assert torch.allclose(together, alone[0] + alone[1], rtol=1e-5)
    assert not torch.allclose(loss(REQUESTS[:2], per_request=False), together, rtol=1e-3)
