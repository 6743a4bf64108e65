"""When an edit's training stops: once the loss is small, or once every target token leads by a margin."""

import pytest
import torch

from wise_edit import LifelongEditor
from wise_edit.methods.wise.loss import separated
from wise_edit.training.loop import optimise
from wise_edit.training.runner import token_lead

from conftest import REQUESTS, tiny_llama
from test_wise import wise_hp


def test_token_lead_is_the_smallest_margin_of_a_target_over_the_best_other_token():
    logits = torch.tensor([[3.0, 1.0, 0.5], [0.0, 2.0, 2.5]])
    assert token_lead(logits, torch.tensor([0, 1])) == pytest.approx(-0.5)  # row 2: 2.0 vs 2.5
    assert token_lead(logits, torch.tensor([0, 2])) == pytest.approx(0.5)


def test_optimise_stops_at_the_first_loss_after_which_done_holds():
    x = torch.tensor([4.0], requires_grad=True)
    calls = []

    def loss():
        calls.append(float(x.detach()))
        return (x ** 2).sum()

    losses = optimise([x], loss, n_iter=50, lr=0.25, done=lambda: calls[-1] < 1.0)
    # x halves each step: 4, 2, 1, 0.5 -> the 4th evaluation is done, and no step follows it
    assert calls == [4.0, 2.0, 1.0, 0.5] and len(losses) == 4 and float(x.detach()) == 0.5


def test_wise_routing_margins_decide_separation():
    assert separated(torch.tensor([25.0, 30.0]), torch.tensor([4.0, 14.0]), beta=20.0, gamma=10.0)
    assert not separated(torch.tensor([25.0, 30.0]), torch.tensor([16.0]), beta=20.0, gamma=10.0)  # gap 9
    assert not separated(torch.tensor([19.0]), torch.tensor([]), beta=20.0, gamma=10.0)  # below beta
    assert separated(torch.tensor([21.0]), torch.tensor([]), beta=20.0, gamma=10.0)


@pytest.mark.parametrize("alg", ["WISE", "MEMOIR", "FT-L"])
def test_stop_margin_stops_edits_earlier_and_they_still_hold(tok, alg):
    from test_memoir import memoir_hp

    make = {"WISE": lambda **kw: wise_hp(**kw), "MEMOIR": lambda **kw: memoir_hp(**kw),
            "FT-L": lambda **kw: _ftl_hp(**kw)}[alg]
    steps, rel = {}, {}
    for margin in (None, 1.0):
        editor = LifelongEditor(make(stop_margin=margin, stop_loss=0.0), model=tiny_llama(), tok=tok)
        run = editor.edit_requests(REQUESTS[:2], sequential_edit=False, progress=False)
        steps[margin] = [r["train_steps"] for r in run["requests"]]
        rel[margin] = run["summary"]["rel"]
    assert sum(steps[1.0]) < sum(steps[None])
    assert rel[1.0] == 1.0


def _ftl_hp(**kw):
    from wise_edit.methods.ft_l import FTLHyperParams

    base = {"alg_name": "FT-L", "model_name": "tiny", "inner_params": ["model.layers[2].mlp.down_proj.weight"],
            "edit_lr": 0.05, "optimizer": "adam", "n_iter": 40, "n_prefixes": 0}
    return FTLHyperParams.from_dict({**base, **kw})
