import pytest
import torch

from wise_edit import LifelongEditor
from wise_edit.methods.memoir import MEMOIRHyperParams
from wise_edit.methods.memoir.mask_db import MaskDatabase, pack, popcount
from wise_edit.methods.memoir.tophash import TopHash
from wise_edit.routing import MAIN
from wise_edit.tokens import pad_pairs
from wise_edit.request import as_requests

from conftest import REQUESTS, byte_tokenizer, routes, tiny_llama

SITE = "model.layers[2].mlp.down_proj.weight"


def memoir_hp(**kw) -> MEMOIRHyperParams:
    base = {"alg_name": "MEMOIR", "model_name": "tiny", "inner_params": [SITE], "edit_lr": 5.0, "n_iter": 30,
            "top_k": 32, "irr_threshold": 0.6, "n_prefixes": 2, "prefix_length": 4, "stop_loss": 0.0}
    return MEMOIRHyperParams.from_dict({**base, **kw})


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    import os

    os.environ["WISE_EDIT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    editor = LifelongEditor(memoir_hp(), model=tiny_llama(), tok=byte_tokenizer())
    pre = editor.score(REQUESTS, [None] * len(REQUESTS))
    run = editor.edit_requests(REQUESTS, sequential_edit=True, progress=False)
    return editor, run, pre


def test_edits_score_on_the_final_model_and_route_to_their_own_mask(edited):
    editor, run, pre = edited
    # a random 128-wide FFN gives heavily overlapping masks, so later edits erode earlier ones here;
    # what must hold: every edit moved its answer far from the unedited model's, the last one fully
    assert max(r["rewrite_acc"] for r in pre) <= 0.25
    assert run["summary"]["rel"] >= 0.6 and run["requests"][-1]["rewrite_acc"] == 1.0
    assert min(r["rewrite_acc"] for r in run["requests"]) >= 0.4
    assert run["summary"]["loc"] == 1.0
    assert routes(editor, [r["prompt"] for r in REQUESTS]) == [0, 1, 2, 3]
    assert routes(editor, [r["locality_prompt"] for r in REQUESTS]) == [MAIN] * 4


def test_unmatched_prompt_is_bit_identical_to_the_original(edited):
    editor, _, _ = edited
    ids = editor.tok(["nq question: capital of Peru Lima"], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(editor.model(input_ids=ids).logits, tiny_llama()(input_ids=ids).logits)


def test_an_edit_changes_only_its_own_mask_columns(model, tok):
    editor = LifelongEditor(memoir_hp(), model=model, tok=tok)
    editor.apply(REQUESTS[:1])
    before = editor.method.memory.weight.clone()
    editor.apply(REQUESTS[1:2])
    after = editor.method.memory.weight
    mask = editor.method.memory.db.unpack(torch.tensor([1]))[0]
    changed = (after != before).any(dim=0)
    assert changed.any()
    assert not changed[~mask].any()  # columns outside the new edit's mask are untouched, bit for bit
    assert int(mask.sum()) == 32


def test_padded_batch_and_generate_route_per_row(edited):
    editor, _, _ = edited
    prompts = [REQUESTS[2]["prompt"], REQUESTS[0]["locality_prompt"], REQUESTS[1]["prompt"]]
    alone = [routes(editor, [p])[0] for p in prompts]
    assert alone == [2, MAIN, 1]
    batch = pad_pairs([(editor.tok(p).input_ids, []) for p in prompts], editor.tok.pad_token_id, "left")
    out = editor.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=4,
                                do_sample=False, pad_token_id=editor.tok.pad_token_id)
    assert editor.method.layer.last_route.tolist() == alone
    for row, prompt in enumerate(prompts):
        ids = torch.tensor([editor.tok(prompt).input_ids])
        single = editor.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                                       do_sample=False, pad_token_id=editor.tok.pad_token_id)
        assert out[row, -4:].tolist() == single[0, -4:].tolist()


def test_tophash_uses_prompt_mean_background_and_permutation():
    hasher = TopHash(8, 2, seed=0, device=torch.device("cpu"))
    hasher.permutation = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0])
    hasher.background = torch.tensor([0, 0, 0, 5.0, 0, 0, 0, 0])
    keys = torch.tensor([[[1.0, 0, 0, 5, 0, 0, 9, 0], [3.0, 0, 0, 5, 0, 0, 100, 0]]])
    # only the first token is the query: mean = key 0; minus background -> |.| top-2 at inputs 6 and 0
    mask = hasher.masks(keys, torch.tensor([[1, 0]]))
    assert mask[0].nonzero().squeeze(-1).tolist() == [1, 7]  # permuted: 6 -> 1, 0 -> 7


def test_packed_overlap_matches_boolean_overlap():
    gen = torch.Generator().manual_seed(0)
    stored = torch.rand(50, 200, generator=gen) < 0.3
    query = torch.rand(3, 200, generator=gen) < 0.3
    db = MaskDatabase(200, torch.device("cpu"))
    db.add(stored)
    assert torch.equal(db.overlaps(query), query.long() @ stored.long().T)
    assert torch.equal(db.unpack(torch.arange(50)), stored)
    assert popcount(pack(torch.ones(1, 64, dtype=torch.bool))).item() == 64
    index, value = db.best(stored[7:8])
    assert index.item() == 7 and value.item() == int(stored[7].sum())


def _memory_output(editor, request: dict, index: int) -> torch.Tensor:
    """What the residual memory adds on ``request``'s prompt when it fires with stored mask ``index``."""
    from wise_edit.training.batch import edit_batch

    method = editor.method
    batch, _ = edit_batch(editor.tok, as_requests([request]), method.prefixes, include_loc=False, max_length=64)
    keys = method.runner(batch).keys
    mask = method.memory.db.unpack(torch.tensor([index]))[0].to(keys.dtype)
    return (keys * mask) @ method.memory.weight.T


def test_protection_slows_the_drift_of_earlier_edits(tok):
    drift, last = {}, {}
    for protect in (0.0, 100.0):
        editor = LifelongEditor(memoir_hp(protect=protect), model=tiny_llama(), tok=tok)
        editor.apply(REQUESTS[:1])
        first = _memory_output(editor, REQUESTS[0], 0)
        losses = editor.apply(REQUESTS[1:2])["losses"]
        drift[protect] = float((_memory_output(editor, REQUESTS[0], 0) - first).norm() / first.norm())
        last[protect] = losses[-1] / losses[0]
    gram = editor.method.memory.protection.gram
    assert torch.allclose(gram.trace(), torch.tensor(2.0))  # each edit weighs one
    # masks of a tiny random model overlap heavily: unprotected, the second edit moves the first one's output
    assert drift[0.0] > 0.5 and drift[100.0] < 0.5 * drift[0.0]
    assert last[100.0] < 0.5  # and the second edit is still learnt


def test_protection_state_round_trips_and_must_match(tok):
    editor = LifelongEditor(memoir_hp(protect=10.0), model=tiny_llama(), tok=tok)
    editor.apply(REQUESTS[:1])
    state = editor.method.state_dict()
    other = LifelongEditor(memoir_hp(protect=10.0), model=tiny_llama(), tok=tok)
    other.method.load_state_dict(state)
    assert torch.equal(other.method.memory.protection.gram, state["protect_gram"])
    state.pop("protect_gram")
    with pytest.raises(ValueError, match="protect_gram"):
        other.method.load_state_dict(state)


def test_background_from_same_form_questions(tok, tmp_path, monkeypatch):
    from wise_edit.training.background import background_mean

    monkeypatch.setenv("WISE_EDIT_CACHE", str(tmp_path))
    negatives = ["Who wrote Emma?", "Where is Lima?", "Who founded Carthage?", "Where is Lima?"]
    requests = [dict(r, negative_prompt=n) for r, n in zip(REQUESTS, negatives)]
    editor = LifelongEditor(memoir_hp(background_from="negative_prompt"), model=tiny_llama(), tok=tok)
    editor.prepare(requests)
    method = editor.method
    expected = background_mean(method.model, tok, method.site, method.layer.base.weight, negatives[:3], 64)
    assert torch.equal(method.memory.hash.background, expected)  # distinct questions, in order
    with pytest.raises(Exception, match="background_from"):
        memoir_hp(background_from="nq")
