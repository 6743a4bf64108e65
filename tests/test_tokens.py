"""Tokenisation of prompt/target pairs: one tokenisation of the joined text, nothing cut when scoring."""

import logging

import pytest
import torch

from conftest import sentencepiece_tokenizer, tiny_llama
from wise_edit import LifelongEditor
from wise_edit.methods.ft_l import FTLHyperParams
from wise_edit.metrics import score_answers
from wise_edit.tokens import cap_length, encode_pair
from wise_edit.training.batch import edit_batch
from wise_edit.request import as_requests

SITE = "model.layers[2].mlp.down_proj.weight"


def test_sentencepiece_targets_have_no_stray_space_token():
    tok = sentencepiece_tokenizer()
    alone = tok.convert_ids_to_tokens(tok(" Zola", add_special_tokens=False)["input_ids"])
    assert alone[0] == "▁"  # the tokenizer really has the SentencePiece behaviour this guards against
    prompt_ids, target_ids = encode_pair(tok, "Who wrote Hamlet?", "Zola")
    joined = tok("Who wrote Hamlet? Zola")["input_ids"]
    assert prompt_ids + target_ids == joined
    assert tok.convert_ids_to_tokens(target_ids) == ["▁Zola"]
    assert tok.convert_ids_to_tokens(prompt_ids)[0] == "<s>"


def test_scoring_a_sentencepiece_model_scores_the_answer_tokens_only():
    tok = sentencepiece_tokenizer()
    model = tiny_llama()
    scores = score_answers(model, tok, ["Who wrote Hamlet?", "Where is Kyoto?"], ["Zola", "Chile"])
    assert [tok.convert_ids_to_tokens(t.tolist()) for t in scores.targets] == [["▁Zola"], ["▁Ch", "ile"]]


def test_byte_level_split_equals_separate_tokenisation(tok):
    # byte-level BPE (SmolLM2, Llama-3): the joined text splits exactly where the separate encodings meet
    for prompt, target in [("Who wrote Hamlet?", "Zola"), ("Year of birth", "1986"), ("a", "b c")]:
        prompt_ids, target_ids = encode_pair(tok, prompt, target)
        assert prompt_ids == tok(prompt)["input_ids"]
        assert target_ids == tok(" " + target, add_special_tokens=False)["input_ids"]


def test_scoring_sees_every_prompt_token_whatever_max_length(tok):
    model = tiny_llama()
    hparams = FTLHyperParams.from_dict({"alg_name": "FT-L", "model_name": "tiny", "inner_params": [SITE],
                                        "max_length": 16})
    editor = LifelongEditor(hparams, model=model, tok=tok)
    prompt = "nq question: " + "which river flows through the old town and past the cathedral " * 2
    answer = "the Rhine"
    ids = tok(prompt + " " + answer)["input_ids"]
    assert len(ids) > 16 * 5
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    n = len(tok(" " + answer, add_special_tokens=False)["input_ids"])
    expected = logits[len(ids) - n - 1:-1].argmax(-1)
    tokens = editor.answer_tokens([prompt], [answer])
    assert torch.equal(tokens[0], expected)


def test_training_rows_are_capped_with_a_warning_naming_the_request(tok, caplog):
    request = {"case_id": 7, "prompt": "x" * 40, "target_new": "yes"}
    with caplog.at_level(logging.WARNING, logger="wise_edit"):
        batch, _ = edit_batch(tok, as_requests([request]), [], include_loc=False, max_length=16)
    assert batch.input_ids.shape[1] == 16
    assert "request 7" in caplog.text and "max_length=16" in caplog.text
    assert cap_length([1, 2], [3], 16, "x") == ([1, 2], [3])


@pytest.mark.parametrize("target", ["", None])
def test_a_pair_without_target_is_the_prompt_alone(tok, target):
    assert encode_pair(tok, "abc", target) == (tok("abc")["input_ids"], [])
