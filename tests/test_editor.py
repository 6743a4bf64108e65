from typing import Any

import pytest
import torch

from wise_edit import EditRequest, LifelongEditor
from wise_edit.hparams import HyperParams
from wise_edit.methods.base import EditMethod
from wise_edit.methods.ft_l import FTLHyperParams
from wise_edit.registry import register_method

SITE = "model.layers[2].mlp.down_proj.weight"


def ftl(**kw) -> FTLHyperParams:
    return FTLHyperParams.from_dict({"alg_name": "FT-L", "model_name": "tiny", "inner_params": [SITE],
                                     "edit_lr": 0.05, "n_iter": 40, **kw})


def test_ftl_edit_changes_answer_and_nonsequential_undo_is_bit_identical(model, tok, requests_):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    editor = LifelongEditor(ftl(), model=model, tok=tok)
    run = editor.edit_requests(requests_[:2], sequential_edit=False, progress=False)
    assert run["summary"]["rel"] > 0.9  # each edit scored right after it was applied
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # and undone afterwards, exactly


class Recorder(EditMethod):
    """A fake method that records when it is asked to edit and when the model is scored."""

    log: list = []

    def apply(self, requests: list[EditRequest]) -> dict[str, Any]:
        Recorder.log.append(("edit", requests[0].case_id))
        return {"losses": [0.0]}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        Recorder.log.append(("undo",))


class RecorderHyperParams(HyperParams):
    pass


register_method("TEST-RECORDER", RecorderHyperParams, Recorder)


def test_sequential_scores_all_requests_on_the_final_model(model, tok, requests_, monkeypatch):
    hp = RecorderHyperParams.from_dict({"alg_name": "TEST-RECORDER", "model_name": "tiny", "inner_params": [SITE]})
    editor = LifelongEditor(hp, model=model, tok=tok)
    real_score = editor.score

    def score(requests, *args, **kw):
        Recorder.log.append(("score", [r.case_id for r in requests]))
        return real_score(requests, *args, **kw)

    monkeypatch.setattr(editor, "score", score)
    Recorder.log = []
    editor.edit_requests(requests_, sequential_edit=True, progress=False)
    assert Recorder.log == [("edit", 0), ("edit", 1), ("edit", 2), ("edit", 3), ("score", [0, 1, 2, 3])]
    Recorder.log = []
    editor.edit_requests(requests_[:2], sequential_edit=False, progress=False)
    assert Recorder.log == [("edit", 0), ("score", [0]), ("undo",), ("edit", 1), ("score", [1]), ("undo",)]


def test_locality_is_measured_against_pre_edit_tokens(model, tok, requests_):
    editor = LifelongEditor(ftl(edit_lr=0.5, n_iter=30), model=model, tok=tok)
    run = editor.edit_requests(requests_, sequential_edit=True, progress=False)
    # FT-L rewrites a shared matrix with a large step: unrelated answers move, and Loc must show it
    assert run["summary"]["loc"] < 1.0
    assert all(0.0 <= r["locality"] <= 1.0 for r in run["requests"])
    assert run["summary"]["rel"] == pytest.approx(sum(r["rewrite_acc"] for r in run["requests"]) / 4)


def test_neighbourhood_locality_compares_unedited_questions_before_and_after_the_stream(model, tok, requests_):
    neighbours = (["Who wrote Emma?", "Where is Lima?", "Who founded Carthage?"], ["Austen", "Peru", "Dido"])
    quiet = LifelongEditor(ftl(edit_lr=1e-9, n_iter=1), model=tiny_llama_copy(model), tok=tok)
    run = quiet.edit_requests(requests_, progress=False, neighbourhood=neighbours)
    assert run["summary"]["nloc"] == 1.0  # a step too small to move anything leaves every neighbour as it was
    assert [n["prompt"] for n in run["neighbourhood"]] == neighbours[0]
    loud = LifelongEditor(ftl(edit_lr=0.5, n_iter=30), model=model, tok=tok)
    run = loud.edit_requests(requests_, progress=False, neighbourhood=neighbours)
    # FT-L rewrites a shared matrix with a large step: questions of the edits' form move, and nloc shows it
    assert run["summary"]["nloc"] < 1.0
    assert run["summary"]["nloc"] == pytest.approx(sum(n["nloc"] for n in run["neighbourhood"]) / 3)
    with pytest.raises(ValueError, match="sequential"):
        loud.edit_requests(requests_[:1], sequential_edit=False, progress=False, neighbourhood=neighbours)


def tiny_llama_copy(model):
    from conftest import tiny_llama

    copy = tiny_llama()
    copy.load_state_dict(model.state_dict())
    return copy


def test_blocks_split_the_stream_by_position_into_tenths():
    from wise_edit.evaluation import by_block

    results = [{"rewrite_acc": float(i < 50), "locality": 1.0} for i in range(100)]
    blocks = by_block(results)
    assert [(b["first"], b["last"], b["n"]) for b in blocks] == [(10 * i, 10 * i + 9, 10) for i in range(10)]
    assert [b["rel"] for b in blocks] == [1.0] * 5 + [0.0] * 5
    assert [b["n"] for b in by_block(results[:13])] == [1, 2, 1, 1, 1, 2, 1, 1, 2, 1]  # edges round(13 i / 10)



def test_portability_is_scored_on_the_final_model_and_stays_out_of_avg(model, tok, requests_):
    editor = LifelongEditor(ftl(edit_lr=0.5, n_iter=30), model=model, tok=tok)
    port = {"one_hop": {"prompt": [r["prompt"] + " Really?" for r in requests_],
                        "ground_truth": [r["target_new"] for r in requests_]}}
    results, _, summary = editor.edit([r["prompt"] for r in requests_], [r["target_new"] for r in requests_],
                                      portability_inputs=port, sequential_edit=True, progress=False)
    expected = editor.answer_tokens(port["one_hop"]["prompt"], port["one_hop"]["ground_truth"])
    targets = [tok(" " + r["target_new"], add_special_tokens=False).input_ids for r in requests_]
    assert [r["portability_acc"] for r in results] == pytest.approx(
        [(e == torch.tensor(t)).float().mean().item() for e, t in zip(expected, targets)])
    assert summary["port"] == pytest.approx(sum(r["portability_acc"] for r in results) / len(results))
    assert summary["avg"] == pytest.approx(summary["rel"])  # no rephrase, no locality: avg is Rel alone


def test_target_eos_trains_the_answer_to_stop_and_generation_metrics_read_free_answers(tok, requests_):
    from conftest import tiny_llama
    from wise_edit.tokens import encode_pair, training_pair

    prompt, target = requests_[0]["prompt"], requests_[0]["target_new"]
    assert training_pair(tok, prompt, target, target_eos=True) == (
        encode_pair(tok, prompt, target)[0], encode_pair(tok, prompt, target)[1] + [tok.eos_token_id])
    runs = {}
    for eos in (False, True):
        model = tiny_llama()
        with torch.no_grad():  # the tiny config's pad id is its eos id, whose (tied) embedding starts at zero
            model.model.embed_tokens.weight[tok.eos_token_id].normal_(
                0, 0.1, generator=torch.Generator().manual_seed(1))
        editor = LifelongEditor(ftl(edit_lr=0.5, n_iter=60, target_eos=eos), model=model, tok=tok)
        runs[eos] = editor.edit_requests(requests_[:1], sequential_edit=True, progress=False, eval_generation=True)
    stopped, rambling = runs[True]["requests"][0], runs[False]["requests"][0]
    assert stopped["rewrite_acc"] == rambling["rewrite_acc"] == 1.0  # teacher forcing cannot tell them apart
    assert stopped["gen_rewrite_text"] == " " + target and stopped["gen_rewrite"] == 1.0
    assert rambling["gen_rewrite_text"].startswith(" " + target) and rambling["gen_rewrite"] == 0.0
    assert runs[True]["summary"]["gen_rel"] == 1.0 and "gen_loc" in runs[True]["summary"]


def test_generated_locality_compares_free_answers_before_and_after(model, tok, requests_):
    hp = RecorderHyperParams.from_dict({"alg_name": "TEST-RECORDER", "model_name": "tiny", "inner_params": [SITE]})
    editor = LifelongEditor(hp, model=model, tok=tok)  # a method that changes nothing: every answer is kept
    run = editor.edit_requests(requests_, sequential_edit=True, progress=False, eval_generation=True,
                               neighbourhood=([r["prompt"] for r in requests_], [r["target_new"] for r in requests_]))
    assert run["summary"]["gen_loc"] == 1.0 and run["summary"]["gen_nloc"] == 1.0
    assert all("gen_locality_text" in r for r in run["requests"] if "locality" in r)
    changed = LifelongEditor(ftl(edit_lr=2.0, n_iter=40), model=model, tok=tok)  # FT-L with a huge step
    run = changed.edit_requests(requests_, sequential_edit=True, progress=False, eval_generation=True)
    assert run["summary"]["gen_loc"] < 1.0


def test_chat_template_wraps_every_question_for_editing_and_scoring(model, tok, requests_, monkeypatch):
    hp = RecorderHyperParams.from_dict({"alg_name": "TEST-RECORDER", "model_name": "tiny", "inner_params": [SITE]})
    editor = LifelongEditor(hp, model=model, tok=tok)
    with pytest.raises(ValueError, match="has no chat template"):
        editor.edit_requests(requests_, progress=False, use_chat_template=True)
    tok.chat_template = ("{% for m in messages %}<u>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<a>{% endif %}")
    seen, scored = [], []
    monkeypatch.setattr(editor.method, "apply", lambda chunk: seen.extend(chunk) or {"losses": [0.0]})
    real_score = editor.score
    monkeypatch.setattr(editor, "score", lambda reqs, *a, **k: scored.extend(reqs) or real_score(reqs, *a, **k))
    run = editor.edit_requests(requests_, progress=False, use_chat_template=True,
                               neighbourhood=(["Who is Zola?"], ["a writer"]))
    assert [r.prompt for r in seen] == [f"<u>{r['prompt']}<a>" for r in requests_]
    assert all(r.locality_question.startswith("<u>") for r in scored if r.locality_question)
    assert all(r.rephrase.startswith("<u>") for r in scored if r.rephrase)
    assert all(not r.irrelevant_text.startswith("<u>") for r in seen)  # a text, not a question
    assert [r["prompt"] for r in run["requests"]] == [r["prompt"] for r in requests_]  # shown as given
    assert run["neighbourhood"][0]["prompt"] == "Who is Zola?"
    assert not requests_[0]["prompt"].startswith("<u>")  # the caller's requests are not changed


def test_named_probe_kinds_are_scored_by_family_and_reported_under_their_own_names(model, tok, requests_):
    from wise_edit.request import Probe

    kinds = (Probe("locality", "Relation_Specificity", "nq question: capital of Peru", "Lima"),
             Probe("locality", "Relation_Specificity", "nq question: largest ocean", "Pacific"),
             Probe("locality", "Forgetfulness", "Who wrote Hamlet? Not Zola but", "Shakespeare"),
             Probe("portability", "Reasoning", "Hamlet's author was born in", "Zola"))
    requests = [EditRequest(prompt=r["prompt"], target=r["target_new"], case_id=i, probes=kinds if i == 0 else ())
                for i, r in enumerate(requests_[:2])]
    editor = LifelongEditor(ftl(edit_lr=0.5, n_iter=30), model=model, tok=tok)
    local = [p for p in kinds if p.family == "locality"]
    before = editor.answer_tokens([p.question for p in local], [p.answer for p in local])
    run = editor.edit_requests(requests, sequential_edit=True, progress=False)
    after = editor.answer_tokens([p.question for p in local], [p.answer for p in local])
    unchanged = [(a == b).float().mean().item() for a, b in zip(after, before)]
    probes = run["requests"][0]["probes"]
    assert probes["Relation_Specificity"] == pytest.approx((unchanged[0] + unchanged[1]) / 2)
    assert probes["Forgetfulness"] == pytest.approx(unchanged[2])
    target = torch.tensor(tok(" Zola", add_special_tokens=False).input_ids)
    reached = editor.answer_tokens([kinds[3].question], [kinds[3].answer])[0]
    assert probes["Reasoning"] == pytest.approx((reached == target).float().mean().item())
    # a request without a locality / portability question of its own: the mean over its kinds, as EasyEdit's
    assert run["requests"][0]["locality"] == pytest.approx((probes["Relation_Specificity"] + probes["Forgetfulness"]) / 2)
    assert run["requests"][0]["portability_acc"] == pytest.approx(probes["Reasoning"])
    assert "probes" not in run["requests"][1] and "locality" not in run["requests"][1]
    summary = run["summary"]
    assert summary["Relation_Specificity"] == probes["Relation_Specificity"] and summary["n"] == 2
    assert summary["loc"] == run["requests"][0]["locality"]
    assert min(unchanged) < 1.0 or probes["Reasoning"] > 0  # the edit moved something the probes see


def test_easyedit_probe_dicts_round_trip_through_a_request():
    record = {"prompt": "p", "target_new": "t",
              "locality": {"Relation_Specificity": {"prompt": ["a", "b"], "ground_truth": ["x", "y"]}},
              "portability": {"Reasoning": {"prompt": "c", "ground_truth": "z"}}}
    request = EditRequest.from_easyedit(record, 0)
    assert [(p.family, p.kind, p.question, p.answer) for p in request.probes] == [
        ("locality", "Relation_Specificity", "a", "x"), ("locality", "Relation_Specificity", "b", "y"),
        ("portability", "Reasoning", "c", "z")]
    assert EditRequest.from_easyedit(request.to_easyedit()) == request
