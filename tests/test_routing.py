"""Routing decisions: the prompt's, with or without a KV cache, and never reused past their call or state."""

import pytest
import torch

from conftest import REQUESTS, byte_tokenizer, tiny_llama
from wise_edit import LifelongEditor
from wise_edit.methods.grace import GRACEHyperParams
from wise_edit.methods.memoir import MEMOIRHyperParams
from wise_edit.methods.wise import WISEHyperParams
from wise_edit.routing import MAIN

SITE = "model.layers[2].mlp.down_proj.weight"
BASE = {"model_name": "tiny", "inner_params": [SITE], "stop_loss": 0.0}
ROUTED = {
    "GRACE": lambda: GRACEHyperParams.from_dict({**BASE, "alg_name": "GRACE", "eps": 0.5, "edit_lr": 0.5,
                                                 "n_iter": 30}),
    "WISE": lambda: WISEHyperParams.from_dict({**BASE, "alg_name": "WISE", "edit_lr": 0.1, "optimizer": "adam",
                                               "n_iter": 20, "act_margin": [0.5, 3.0, 2.0], "act_ratio": 0.8,
                                               "n_prefixes": 2, "prefix_length": 4}),
    "MEMOIR": lambda: MEMOIRHyperParams.from_dict({**BASE, "alg_name": "MEMOIR", "edit_lr": 5.0, "n_iter": 20,
                                                   "top_k": 32, "irr_threshold": 0.6, "n_prefixes": 2,
                                                   "prefix_length": 4}),
}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WISE_EDIT_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("alg", sorted(ROUTED))
def test_generation_without_a_kv_cache_keeps_the_prompts_decision(alg):
    tok = byte_tokenizer()
    editor = LifelongEditor(ROUTED[alg](), model=tiny_llama(), tok=tok)
    editor.apply([REQUESTS[0]])
    ids = tok([REQUESTS[0]["prompt"]], return_tensors="pt").input_ids
    with torch.no_grad():
        cached = editor.model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, use_cache=True,
                                       pad_token_id=tok.pad_token_id)
        assert editor.method.layer.last_route.tolist() != [MAIN]  # the edited prompt is routed to the memory
        uncached = editor.model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, use_cache=False,
                                         pad_token_id=tok.pad_token_id)
    assert torch.equal(cached, uncached)
    assert editor.method.layer.last_route.tolist() != [MAIN]


def test_a_new_sequence_gets_a_new_decision_even_when_it_extends_the_last_by_more_than_one_token():
    tok = byte_tokenizer()
    editor = LifelongEditor(ROUTED["GRACE"](), model=tiny_llama(), tok=tok)
    editor.apply([REQUESTS[0]])
    edited = tok([REQUESTS[0]["prompt"]], return_tensors="pt").input_ids
    other = tok([REQUESTS[0]["prompt"] + " and then the whole story of Peru"], return_tensors="pt").input_ids
    with torch.no_grad():
        editor.model(input_ids=edited)
        assert editor.method.layer.last_route.tolist() == [0]
        editor.model(input_ids=other)
    assert editor.method.layer.last_route.tolist() == [MAIN]


@pytest.mark.parametrize("alg", sorted(ROUTED))
def test_one_at_a_time_protocol_over_several_records(alg):
    # edit, score, undo, for each record: a decision made before an undo must not be reused after it
    editor = LifelongEditor(ROUTED[alg](), model=tiny_llama(), tok=byte_tokenizer())
    editor.prepare(REQUESTS)
    reference = editor.method.state_dict()
    # with generation scored last, the last decision before each undo is the edited prompt's (routed)
    run = editor.edit_requests(REQUESTS, sequential_edit=False, progress=False, eval_generation=True)
    assert len(run["requests"]) == len(REQUESTS)
    assert all(0.0 <= r["rewrite_acc"] <= 1.0 for r in run["requests"])
    after = editor.method.state_dict()
    assert after.keys() == reference.keys()
    assert all(torch.equal(after[k], reference[k]) for k in reference)


def test_a_decoder_call_stopped_early_still_ends_its_decision():
    # run_through stops the decoder at a layer by raising; a later call of the layer on its own must decide anew
    from wise_edit.sites import run_through

    tok = byte_tokenizer()
    editor = LifelongEditor(ROUTED["GRACE"](), model=tiny_llama(), tok=tok)
    editor.apply([REQUESTS[0]])
    layer = editor.method.layer
    ids = tok([REQUESTS[0]["prompt"]], return_tensors="pt").input_ids
    with torch.no_grad():
        run_through(editor.model, editor.method.site.layer, input_ids=ids)
        assert layer.last_route.tolist() == [0]
        keys = torch.zeros(1, 3, layer.base.weight.shape[1])
        out = layer(keys)  # far from every codebook key: the original output, not the edit's value
    assert layer.last_route.tolist() == [MAIN] and torch.equal(out, layer.base(keys))
