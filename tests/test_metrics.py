
import pytest
import torch
from torch import nn

from wise_edit import EditRequest
from wise_edit.editor import make_requests
from wise_edit.evaluation import summarize
from wise_edit.metrics import locality, score_answers, token_accuracy


class EchoModel(nn.Module):
    """Predicts that the next token repeats the current one (so accuracies can be worked out by hand)."""

    device = torch.device("cpu")

    def forward(self, input_ids, attention_mask=None, **kwargs):
        logits = torch.nn.functional.one_hot(input_ids, 260).float() * 5.0
        return type("Out", (), {"logits": logits})()


def test_token_accuracy_by_hand():
    assert token_accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 0, 3, 0])) == 0.5
    assert locality([torch.tensor([5, 6])], [torch.tensor([5, 7])]) == [0.5]
    with pytest.raises(ValueError, match="empty answer"):
        token_accuracy(torch.tensor([]), torch.tensor([]))


def test_teacher_forcing_reads_the_preceding_position(tok):
    # prompt "x" + " aa" -> tokens [x, ' ', a, a]; echo predicts [x, ' ', a] for targets [' ', a, a] -> 1/3
    # prompt "b" + " b"  -> tokens [b, ' ', b]; echo predicts [b, ' '] for [' ', b] -> 0/2
    scores = score_answers(EchoModel(), tok, ["x", "b"], ["aa", "b"], batch_size=2)
    assert scores.accuracy == pytest.approx([1 / 3, 0.0])
    assert [t.numel() for t in scores.targets] == [3, 2]  # padding never counted as a target


def test_perplexity_of_uniform_logits(tok):
    class Uniform(EchoModel):
        def forward(self, input_ids, attention_mask=None, **kwargs):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 260)})()

    scores = score_answers(Uniform(), tok, ["hello"], ["world"])
    assert scores.perplexity[0] == pytest.approx(260.0, rel=1e-5)


def test_summary_means_and_avg():
    results = [{"rewrite_acc": 1.0, "rephrase_acc": 0.5, "locality": 1.0},
               {"rewrite_acc": 0.5, "rephrase_acc": 0.0, "locality": 0.5}]
    s = summarize(results)
    assert (s["rel"], s["gen"], s["loc"]) == (0.75, 0.25, 0.75)
    assert s["avg"] == pytest.approx((0.75 + 0.25 + 0.75) / 3)
    assert summarize(results, rephrase_name="ood")["ood"] == 0.25
    with_port = [dict(r, portability_acc=p) for r, p in zip(results, (0.0, 1.0))]
    assert summarize(with_port)["port"] == 0.5 and summarize(with_port)["avg"] == s["avg"]
    hallucination = [{"rewrite_acc": 1.0, "rewrite_ppl": 1.5, "locality": 1.0}]
    assert "avg" not in summarize(hallucination) and summarize(hallucination)["ppl"] == 1.5


def test_make_requests_easyedit_arguments():
    reqs = make_requests(["p1", "p2"], ["t1", "t2"], rephrase_prompts=["r1", "r2"],
                         locality_inputs={"neighborhood": {"prompt": ["l1", "l2"], "ground_truth": ["g1", "g2"]}},
                         loc_prompts=["i1", "i2"])
    assert reqs[1] == EditRequest(case_id=1, prompt="p2", target="t2", rephrase="r2", irrelevant_text="i2",
                                  locality_question="l2", locality_answer="g2")
    assert reqs[1].to_easyedit() == {"case_id": 1, "prompt": "p2", "target_new": "t2", "rephrase_prompt": "r2",
                                     "loc_prompt": "i2", "locality_prompt": "l2", "locality_ground_truth": "g2"}
    assert EditRequest.from_easyedit(reqs[1].to_easyedit()) == reqs[1]
    with pytest.raises(ValueError, match="2 prompts but 1 rephrase_prompt"):
        make_requests(["p1", "p2"], ["t1", "t2"], rephrase_prompts=["r1"])


def test_answers_are_normalised_before_they_are_compared():
    from wise_edit.metrics import answers_match, normalize_answer

    assert normalize_answer("  The  X-Files! ") == "xfiles"
    assert normalize_answer("An apple, a day") == "apple day"
    assert answers_match([" Perth.", "Perth Perth", "the perth"], ["Perth"] * 3) == [1.0, 0.0, 1.0]
