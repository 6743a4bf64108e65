import pytest
import torch

from wise_edit import LifelongEditor
from wise_edit.methods.wise import WISEHyperParams
from wise_edit.methods.wise import method as wise_method
from wise_edit.methods.wise.merge import ties_merge
from wise_edit.methods.wise.router import activation_scores, select
from wise_edit.methods.wise.shards import shard_mask
from wise_edit.methods.wise.side_memory import SideMemory
from wise_edit.routing import MAIN, query_span
from wise_edit.tokens import pad_pairs
from wise_edit.request import as_requests

from wise_edit.training.runner import _ADDITIVE

from conftest import REQUESTS, routes, tiny_gemma3, tiny_llama

SITE = "model.layers[2].mlp.down_proj.weight"


def wise_hp(**kw) -> WISEHyperParams:
    base = {"alg_name": "WISE", "model_name": "tiny", "inner_params": [SITE], "edit_lr": 0.1, "optimizer": "adam",
            "n_iter": 40, "act_margin": [0.5, 3.0, 2.0], "act_ratio": 0.8, "n_prefixes": 2, "prefix_length": 4,
            "save_freq": 2, "merge_freq": 4, "merge_alg": "sum", "stop_loss": 0.0}
    return WISEHyperParams.from_dict({**base, **kw})


@pytest.fixture(scope="module")
def edited():
    from conftest import REQUESTS, byte_tokenizer

    editor = LifelongEditor(wise_hp(), model=tiny_llama(), tok=byte_tokenizer())
    first = editor.edit_requests(REQUESTS[:2], sequential_edit=True, progress=False)
    second = editor.edit_requests(REQUESTS[2:], sequential_edit=True, progress=False)
    return editor, first, second


def test_edits_accumulate_in_one_side_memory_across_calls(edited):
    editor, first, second = edited
    side = editor.method.memory
    assert editor.method.edits == 4 and len(side.memories) == 1
    assert editor.method.layer.memory is side  # the same side memory the first call wrote into
    # the first call's edits are still held (their keys calibrate the threshold) and still routed to it
    assert len(side.active.edit_keys) == 4
    from conftest import REQUESTS

    assert routes(editor, [REQUESTS[0]["prompt"]]) == [0]


def test_each_edit_takes_effect(tok, requests_):
    editor = LifelongEditor(wise_hp(), model=tiny_llama(), tok=tok)
    pre = editor.score(requests_, [None] * 4)
    run = editor.edit_requests(requests_, sequential_edit=False, progress=False)
    assert max(r["rewrite_acc"] for r in pre) < 0.5
    assert run["summary"]["rel"] >= 0.9


def test_router_sends_edits_to_side_memory_and_unrelated_to_main(edited):
    editor, _, _ = edited
    from conftest import REQUESTS

    assert routes(editor, [r["prompt"] for r in REQUESTS]) == [0, 0, 0, 0]
    assert routes(editor, [r["locality_prompt"] for r in REQUESTS]) == [MAIN] * 4


def test_unrelated_prompt_output_is_bit_identical_to_the_original(edited, tok):
    editor, _, _ = edited
    original = tiny_llama()
    ids = tok(["nq question: capital of Peru Lima"], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(editor.model(input_ids=ids).logits, original(input_ids=ids).logits)


def test_padded_batch_routes_each_row_alone(edited):
    editor, _, _ = edited
    from conftest import REQUESTS

    prompts = [REQUESTS[0]["prompt"], REQUESTS[0]["locality_prompt"], "x", REQUESTS[3]["prompt"]]
    alone = [routes(editor, [p])[0] for p in prompts]
    assert routes(editor, prompts) == alone
    pairs = [(editor.tok(p).input_ids, []) for p in prompts]
    for side in ("left", "right"):
        batch = pad_pairs(pairs, editor.tok.pad_token_id, side)
        with torch.no_grad():
            logits = editor.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        assert editor.method.layer.last_route.tolist() == alone
        for row, (ids, _) in enumerate(pairs):
            with torch.no_grad():
                ref = editor.model(input_ids=torch.tensor([ids])).logits[0]
            real = batch.attention_mask[row].bool()
            assert torch.allclose(logits[row][real], ref, atol=1e-4)


def test_generate_forward_and_teacher_forcing_agree(edited):
    editor, _, _ = edited
    from conftest import REQUESTS

    tok, model = editor.tok, editor.model
    for prompt in [REQUESTS[1]["prompt"], REQUESTS[1]["locality_prompt"]]:
        ids = torch.tensor([tok(prompt).input_ids])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                             do_sample=False, use_cache=True, pad_token_id=tok.pad_token_id)
        cached_route = editor.method.layer.last_route.tolist()
        # the same continuation by full forwards without a cache, routing decided on the prompt only
        seq = ids
        for _ in range(5):
            with torch.no_grad(), query_span(torch.tensor([ids.shape[1]])):
                nxt = model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
            assert editor.method.layer.last_route.tolist() == cached_route
            seq = torch.cat([seq, nxt], dim=1)
        assert torch.equal(out, seq)
        assert routes(editor, [prompt]) == cached_route


def test_training_stays_inside_the_shard_mask(model, tok, requests_):
    editor = LifelongEditor(wise_hp(save_freq=4, merge_freq=4), model=model, tok=tok)
    editor.edit_requests(requests_[:1], sequential_edit=True, progress=False)
    live = editor.method.memory.live
    mask = editor.method._mask()
    assert live.abs().sum() > 0
    assert torch.all(live[mask == 0] == 0)
    assert 0.15 < mask.mean().item() < 0.25  # mask_ratio 0.2


def test_shards_are_saved_and_merged_with_ties(model, tok, requests_):
    editor = LifelongEditor(wise_hp(save_freq=1, merge_freq=2, merge_alg="ties"), model=model, tok=tok)
    side = editor.method.memory
    editor.apply(requests_[:1])
    assert len(side.active.pending) == 1 and side.live is None
    shard0 = side.active.pending[0].clone()
    editor.apply(requests_[1:2])
    assert side.active.pending == []
    assert not torch.equal(editor.method._mask(), torch.zeros(1))
    # merged = TIES of the two shards (each trained in its own subspace)
    assert side.active.merged.abs().sum() > 0
    assert torch.count_nonzero(side.active.merged) >= torch.count_nonzero(shard0)


def test_ties_merge_matches_hand_computation():
    a = torch.tensor([[0.5, -0.1, 0.0], [0.3, 0.0, -0.4]])
    b = torch.tensor([[-0.2, -0.3, 0.0], [0.1, 0.6, 0.0]])
    merged = ties_merge([a, b], density=0.5)
    # trim: a keeps |.| top-3 {0.5, -0.4, 0.3}; b keeps {0.6, -0.3, -0.2}
    # elect: sign of the sum of trimmed values per entry; disjoint mean over the agreeing ones
    expected = torch.tensor([[0.5, -0.3, 0.0], [0.3, 0.6, -0.4]])
    assert torch.allclose(merged, expected)


def test_merging_a_single_dense_shard_keeps_it_whole():
    """A merge of one shard (merge_freq == save_freq): before the fix TIES cut half of a dense shard's entries."""
    dense = torch.randn(4, 6)
    assert torch.equal(ties_merge([dense], density=0.53), dense)


def test_sum_merge_changes_nothing_served_and_every_covered_edit_still_scores(tok):
    """merge_alg: sum. Shards train on top of each other and are all served, so a merge is their exact sum."""
    served = {}
    for merge_freq in (4, 8):  # 4 one-edit shards merged after the 4th edit / the same 4 shards still pending
        editor = LifelongEditor(wise_hp(save_freq=1, merge_freq=merge_freq, mask_ratio=1.0, merge_alg="sum"),
                                model=tiny_llama(), tok=tok)
        editor.edit_requests(REQUESTS[:4], sequential_edit=True, progress=False)
        side = editor.method.memory
        assert len(side.active.pending) == (0 if merge_freq == 4 else 4) and side.live is None
        served[merge_freq] = (side.change(0).clone(), side.active.threshold,
                              [r["rewrite_acc"] for r in editor.score(REQUESTS[:4], [None] * 4)])
    assert torch.allclose(served[4][0], served[8][0], atol=1e-6)
    assert served[4][1] == pytest.approx(served[8][1], rel=1e-5)
    assert served[4][2] == served[8][2] and served[4][2][-1] == 1.0  # the merge moved no score


@pytest.mark.parametrize("gate", [{}, {"gate_params": "model.layers[0].mlp.down_proj.weight",
                                         "fact_radius": 0.5}])
def test_retrieve_serves_its_first_memory_as_merge_mode_serves_the_same_edits(tok, gate):
    """The shipped file moved from WISE-Merge to WISE-Retrieve with a memory per 25 edits; the README's T=1 and
    T=10 rows rely on both giving the same answers up to the first memory's end (the new, empty memory never answers),
    with the fact gate (which picks the memory in retrieve mode) and without."""
    outputs = {}
    for retrieve in (False, True):
        editor = LifelongEditor(wise_hp(retrieve=retrieve, save_freq=4, merge_freq=4 if retrieve else 8,
                                        mask_ratio=1.0, protect=10.0, **gate), model=tiny_llama(), tok=tok)
        editor.edit_requests(REQUESTS[:4], sequential_edit=True, progress=False)
        side = editor.method.memory
        scores = [r["rewrite_acc"] for r in editor.score(REQUESTS[:4], [None] * 4)]
        outputs[retrieve] = (side.change(0).clone(), scores, routes(editor, [r["prompt"] for r in REQUESTS[:4]]))
        assert len(side.memories) == (2 if retrieve else 1)
    assert torch.equal(outputs[True][0], outputs[False][0])
    assert outputs[True][1:] == outputs[False][1:] and set(outputs[True][2]) == {0}


def test_ties_shards_wait_unserved_and_train_on_the_merged_memory_alone(tok, monkeypatch):
    """merge_alg: ties (the paper's). A finished shard is not served before its merge, the next shard trains on
    the merged memory alone, and the threshold is calibrated on the edits the memory serves."""
    editor = LifelongEditor(wise_hp(save_freq=1, merge_freq=2, mask_ratio=0.5, merge_alg="ties"), model=tiny_llama(),
                            tok=tok)
    side, method = editor.method.memory, editor.method
    method.apply(as_requests(REQUESTS[:1]))
    shard0 = side.active.pending[0].clone()
    assert shard0.abs().sum() > 0 and torch.count_nonzero(side.change(0)) == 0  # waiting, not served
    side.settle()
    assert side.active.threshold == float("inf")  # no served edit: the memory answers nothing
    assert routes(editor, [REQUESTS[0]["prompt"]]) == [MAIN]
    merged_inputs = []
    monkeypatch.setattr(wise_method, "ties_merge", lambda shards, density: merged_inputs.append(
        [t.clone() for t in shards]) or ties_merge(shards, density))
    method.apply(as_requests(REQUESTS[1:2]))
    assert side.active.pending == [] and side.active.merged_edits == 2
    (first, second), = merged_inputs
    assert torch.equal(first, shard0)
    mask1 = shard_mask(second.shape, 0.5, method.hparams.seed, 1, second.device)
    assert torch.all(second[mask1 == 0] == 0)  # shard 1 in its own subspace, not on top of shard 0
    assert torch.equal(side.change(0), ties_merge([first, second], 0.53))
    side.settle()  # thresholds are computed when routing next needs them
    assert side.active.threshold < float("inf")


def test_retrieve_routes_to_the_memory_that_holds_the_edit():
    side = SideMemory(torch.Size([2, 3]), torch.device("cpu"), act_ratio=0.5)
    for axis in (0, 1):
        memory = side.open()
        memory.merged[:, axis] = 1.0  # memory m answers keys along axis m
        key = torch.zeros(1, 3)
        key[0, axis] = 2.0
        memory.edit_keys.append(key)
    side.refresh()
    side.calibrate(0)
    side.calibrate(1)
    keys = torch.tensor([[[2.0, 0.1, 0.0]], [[0.1, 2.0, 0.0]], [[0.0, 0.0, 3.0]]])
    assert side.route(keys, torch.ones(3, 1)).tolist() == [0, 1, MAIN]
    # row 0: memory 1 scores higher (6) but is below its own threshold (7), so memory 0 answers
    assert select(torch.tensor([[5.0, 1.0], [6.0, 9.0]]), torch.tensor([1.0, 7.0])).tolist() == [0, 1]
    assert select(torch.tensor([[5.0], [6.0]]), torch.tensor([1.0, 7.0])).tolist() == [0]


def test_activation_score_ignores_masked_tokens():
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    delta = torch.tensor([[2.0, 0.0]])
    assert activation_scores(keys, delta, torch.tensor([[1, 0]])).item() == 2.0
    assert activation_scores(keys, delta, torch.tensor([[1, 1]])).item() == 1.0


@pytest.mark.parametrize("make, additive", [(tiny_llama, True), (tiny_gemma3, False)])
def test_fast_loop_matches_naive_loop(tok, requests_, make, additive):
    """Llama's edited matrix adds to the residual stream (only the layers above re-run); Gemma 3 normalises the
    MLP's output first (the edited layer re-runs too): both give the plain loop's losses."""
    curves = {}
    for fast in (True, False):
        editor = LifelongEditor(wise_hp(fast_loop=fast, n_iter=8), model=make(), tok=tok)
        curves[fast] = editor.apply(requests_[:1])["losses"]
        assert editor.apply(requests_[1:2])["losses"]  # a second edit, through the routed memory
        if fast:
            assert _ADDITIVE[editor.method.site.layer] is additive
    assert len(curves[True]) == 8
    assert curves[True] == pytest.approx(curves[False], rel=1e-4, abs=1e-5)


def test_nonsequential_protocol_leaves_no_trace(tok, requests_):
    editor = LifelongEditor(wise_hp(), model=tiny_llama(), tok=tok)
    empty = editor.method.state_dict()
    editor.edit_requests(requests_[:2], sequential_edit=False, progress=False)
    after = editor.method.state_dict()
    assert after.keys() == empty.keys() and all(torch.equal(after[k], empty[k]) for k in empty)
    assert routes(editor, [requests_[0]["prompt"]]) == [MAIN]


def test_protection_keeps_earlier_edits_outputs(tok):
    from wise_edit.training.batch import edit_batch

    def side_output(editor, request):
        batch, _ = edit_batch(editor.tok, as_requests([request]), editor.method.prefixes, include_loc=False,
                              max_length=64)
        return editor.method.runner(batch).keys @ editor.method.memory.change(0).T

    drift, learnt = {}, {}
    for protect in (0.0, 100.0):
        # mask_ratio 1: the shard mask would cut the projected step back to its entries (see protection.py)
        editor = LifelongEditor(wise_hp(protect=protect, mask_ratio=1.0, n_iter=15, merge_alg="sum"),
                                model=tiny_llama(), tok=tok)
        editor.apply(REQUESTS[:1])
        first = side_output(editor, REQUESTS[0])
        losses = editor.apply(REQUESTS[1:2])["losses"]
        drift[protect] = float((side_output(editor, REQUESTS[0]) - first).norm() / first.norm())
        learnt[protect] = losses[-1] / losses[0]
    assert torch.allclose(editor.method.protection.gram.trace(), torch.tensor(2.0))
    # keys of a tiny random model are alike: unprotected, the second edit rewrites what the first one wrote;
    # protected, it moves the first edit's output less than half as much and still learns (loss more than halved)
    assert drift[0.0] > 0.5 and drift[100.0] < 0.5 * drift[0.0]
    assert learnt[100.0] < 0.6
    state = editor.method.state_dict()
    assert torch.equal(state["protect_gram"], editor.method.protection.gram)


def test_centered_side_memory_reads_keys_minus_the_background(tok):
    from wise_edit.training.background import background_texts

    editor = LifelongEditor(wise_hp(center_keys=True), model=tiny_llama(), tok=tok)
    pre = editor.score(REQUESTS[:2], [None] * 2)
    run = editor.edit_requests(REQUESTS[:2], sequential_edit=True, progress=False)
    side = editor.method.memory
    assert background_texts(as_requests(REQUESTS[:2]), 100, None, tok, 4) == [r["loc_prompt"] for r in REQUESTS[:2]]
    assert side.center.abs().sum() > 0
    # the background key itself is what every prompt shares: it scores 0 and the memory adds nothing for it
    keys = side.center.expand(1, 3, -1)
    assert side.route(keys, torch.ones(1, 3)).tolist() == [MAIN]
    assert side.delta(keys, torch.zeros(1, dtype=torch.long)).abs().max() == 0
    assert run["summary"]["rel"] > max(r["rewrite_acc"] for r in pre)
    assert routes(editor, [r["prompt"] for r in REQUESTS[:2]]) == [0, 0]
    assert routes(editor, [r["locality_prompt"] for r in REQUESTS[:2]]) == [MAIN, MAIN]
    other = LifelongEditor(wise_hp(center_keys=True), model=tiny_llama(), tok=tok)
    other.method.load_state_dict(editor.method.state_dict())
    assert torch.equal(other.method.memory.center, side.center)
    assert routes(other, [REQUESTS[0]["prompt"]]) == [0]


def test_relative_scores_route_on_the_memorys_gain_not_on_loudness():
    change = torch.tensor([[4.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # amplifies axis 0 (the edit), barely reads axis 1
    keys = torch.tensor([[[3.0, 0.0, 0.0]], [[0.0, 10.0, 0.0]], [[0.0, 0.0, 0.0]]])  # edit, loud unrelated, silent
    decisions = {}
    for relative in (False, True):
        side = SideMemory(torch.Size([2, 3]), torch.device("cpu"), act_ratio=0.9, relative_scores=relative)
        memory = side.open()
        memory.merged = change.clone()
        memory.edit_keys.append(torch.tensor([[2.0, 0.0, 0.0]]))
        side.refresh()
        side.calibrate(0)
        routed = side.route(keys, torch.ones(3, 1)).tolist()  # routing settles the threshold first
        decisions[relative] = (memory.threshold, routed)
    # absolute: threshold 0.9 * 8; the loud key moves the output by 10 and is routed to the memory
    assert decisions[False] == (pytest.approx(7.2), [0, 0, MAIN])
    # relative: threshold 0.9 * 4 (gain of the edit's direction); the loud key's gain is 1, the silent key's 0
    assert decisions[True] == (pytest.approx(3.6), [0, MAIN, MAIN])
    scores = activation_scores(keys, change, torch.ones(3, 1), relative=True)
    assert scores.tolist() == [4.0, 1.0, 0.0]


def test_relative_scores_hparam_reaches_the_router(tok):
    editor = LifelongEditor(wise_hp(center_keys=True, relative_scores=True), model=tiny_llama(), tok=tok)
    editor.edit_requests(REQUESTS[:2], sequential_edit=True, progress=False)
    side = editor.method.memory
    gains = torch.stack([activation_scores(side.read(k)[None], side.change(0), torch.ones(1, k.shape[0]),
                                           relative=True)[0] for k in side.active.edit_keys])
    assert side.active.threshold == pytest.approx(0.8 * gains.min().item())
    assert routes(editor, [r["prompt"] for r in REQUESTS[:2]]) == [0, 0]
    assert routes(editor, [r["locality_prompt"] for r in REQUESTS[:2]]) == [MAIN, MAIN]


def test_neighbour_negatives_are_irrelevant_rows_and_stay_with_the_main_model(tok):
    from wise_edit.training.batch import edit_batch

    request = dict(REQUESTS[0], negative_prompt="Who wrote Emma?")
    batch, irrelevant = edit_batch(tok, as_requests([request]), ["Hi. "], include_loc=True, max_length=64,
                                   negatives=True)
    assert irrelevant.tolist() == [False, False, True, True]  # plain + prefixed rows, loc row, negative row
    assert tok.decode(batch.input_ids[3][batch.attention_mask[3].bool()]) == "Who wrote Emma?"
    editor = LifelongEditor(wise_hp(neighbour_negatives=True), model=tiny_llama(), tok=tok)
    editor.edit_requests([request], progress=False)
    assert routes(editor, [request["prompt"], "Who wrote Emma?"]) == [0, MAIN]
    with pytest.raises(ValueError, match="needs a 'same_form_negative'"):
        editor.apply([REQUESTS[1]])


def test_a_threshold_computed_when_routing_needs_it_equals_one_computed_after_each_edit(tok):
    """Calibration is deferred to the next routing decision (its cost grows with the edits held); the
    thresholds, routes and the saved state are those of calibrating right after every edit."""
    lazy = LifelongEditor(wise_hp(save_freq=2, merge_freq=4), model=tiny_llama(), tok=tok)
    eager = LifelongEditor(wise_hp(save_freq=2, merge_freq=4), model=tiny_llama(), tok=tok)
    for request in REQUESTS:
        lazy.apply([request])
        eager.apply([request])
        eager.method.memory.settle()
        assert lazy.method.memory.active.stale and not eager.method.memory.active.stale
    probes = [r["prompt"] for r in REQUESTS] + ["nq question: capital of Peru"]
    assert routes(lazy, probes) == routes(eager, probes)
    assert [m.threshold for m in lazy.method.memory.memories] == [m.threshold for m in eager.method.memory.memories]
    assert lazy.method.memory.active.threshold < float("inf")
    a, b = lazy.method.state_dict(), eager.method.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)
