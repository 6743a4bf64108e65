"""The match gate: a memory answers only queries that recall one of its edits' distinctive tokens."""

import pytest
import torch

from wise_edit import LifelongEditor
from wise_edit.hparams import HyperParamsError
from wise_edit.matching import TokenIndex, token_weights
from wise_edit.methods.wise.side_memory import SideMemory
from wise_edit.routing import MAIN

from conftest import REQUESTS, routes, tiny_llama
from test_wise import wise_hp

E = torch.eye(4)  # unit keys: 0, 1 template tokens; 2 the edit's subject; 3 another subject


def test_template_tokens_weigh_nothing_and_distinct_tokens_weigh_one():
    pool = torch.stack([E[0], E[1], E[3]])
    edit = torch.stack([E[0], E[1], E[2]])
    assert token_weights(edit, pool).tolist() == [0.0, 0.0, 1.0]
    # a token half-way to a pool token: (1 - cos)^2
    half = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    assert token_weights(half, pool).item() == pytest.approx((1 - 2 ** -0.5) ** 2)
    assert token_weights(edit, None).tolist() == [1.0, 1.0, 1.0]
    # an edit made only of pool tokens keeps plain weights instead of matching nothing
    assert token_weights(torch.stack([E[0], E[1]]), pool).tolist() == [1.0, 1.0]


def test_a_neighbour_sharing_the_template_does_not_recall_the_edit():
    pool = torch.stack([E[0], E[1]])
    index = TokenIndex(4, torch.device("cpu"))
    edit = torch.stack([E[0], E[1], E[2]])
    index.add(edit, token_weights(edit, pool))
    queries = torch.stack([torch.stack([E[1], E[2], E[0]]),   # rephrasing: same subject, words reordered
                           torch.stack([E[0], E[1], E[3]]),   # neighbour: same template, other subject
                           torch.stack([E[2], E[3], E[3]])])  # subject as the first token, padding after it
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 0, 0]])
    assert index.match(queries, mask)[:, 0].tolist() == pytest.approx([1.0, 0.0, 1.0])
    # the padding is not read: an edit made of the third row's padded token is not recalled (it would be, 1.0,
    # if the padding counted)
    index.add(torch.stack([E[3]]), torch.ones(1))
    assert index.match(queries, mask)[2].tolist() == pytest.approx([1.0, 0.0])
    assert index.match(queries, torch.ones(3, 3))[2].tolist() == pytest.approx([1.0, 1.0])


def test_the_gate_keeps_a_neighbour_the_activation_router_would_send_to_the_memory():
    side = SideMemory(torch.Size([2, 4]), torch.device("cpu"), act_ratio=0.9, match_radius=0.8)
    side.set_pool(torch.stack([E[0], E[1]]))
    memory = side.open()
    memory.merged = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])  # reacts to every direction
    side.hold(torch.stack([E[0], E[1], E[2]]))
    side.refresh()
    side.calibrate(0)
    keys = torch.stack([torch.stack([E[0], E[1], E[2]]), torch.stack([E[0], E[1], E[3]])])
    mask = torch.ones(2, 3)
    assert side.route(keys, mask).tolist() == [0, MAIN]
    side.match_radius = None  # the paper's router alone: both rows move the memory alike
    assert side.route(keys, mask).tolist() == [0, 0]


def test_the_pool_and_the_gate_survive_a_state_round_trip(tok):
    same_form = ["What is the capital of Peru?", "Who wrote Emma?", "Where is Kyoto?"]
    hp = wise_hp(match_radius=0.5, match_texts=2)
    editor = LifelongEditor(hp, model=tiny_llama(), tok=tok)
    editor.edit_requests(REQUESTS[:2], sequential_edit=True, progress=False, same_form=same_form)
    side = editor.method.memory
    assert side.pool is not None and side.pool.shape[0] == sum(len(tok(t)["input_ids"]) for t in same_form[:2])
    assert routes(editor, [REQUESTS[0]["prompt"], REQUESTS[1]["prompt"]]) == [0, 0]
    other = LifelongEditor(hp, model=tiny_llama(), tok=tok)
    other.method.load_state_dict(editor.method.state_dict())
    assert torch.equal(other.method.memory.pool, side.pool)
    assert torch.equal(other.method.memory.active.index.weights, side.active.index.weights)
    probe = torch.randn(3, 7, side.shape[1])
    mask = torch.ones(3, 7)
    assert torch.equal(other.method.memory.matches(probe, mask), side.matches(probe, mask))


def test_without_same_form_texts_the_pool_comes_from_the_streams_negatives(tok):
    requests = [dict(r, negative_prompt=q) for r, q in zip(REQUESTS[:2], ["Who wrote Emma?", "Where is Kyoto?"])]
    editor = LifelongEditor(wise_hp(match_radius=0.5), model=tiny_llama(), tok=tok)
    editor.edit_requests(requests, sequential_edit=True, progress=False)
    assert editor.method.memory.pool.shape[0] == len(tok("Who wrote Emma?")["input_ids"]) + len(
        tok("Where is Kyoto?")["input_ids"])


@pytest.mark.parametrize("value", [0.0, 1.5, -0.2])
def test_a_radius_outside_0_1_is_refused_naming_the_key(value):
    with pytest.raises(HyperParamsError, match="match_radius"):
        wise_hp(match_radius=value)
