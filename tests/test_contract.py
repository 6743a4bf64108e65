"""What every registered method promises the editor, checked the same way for each (peft's common tester).

A new method joins by adding a tiny configuration to ``CASES`` in ``conftest.py``; the first test fails until
it does.
"""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wise_edit import HyperParams, LifelongEditor, get_method, load_edits, registered_methods
from wise_edit.metrics import score_answers
from wise_edit.tokens import encode_batch

from conftest import CASES, COMMON, CORPUS, REQUESTS, byte_tokenizer, tiny_llama

PROBES = [REQUESTS[0]["prompt"], REQUESTS[1]["rephrase_prompt"], "nq question: capital of Peru",
          REQUESTS[3]["prompt"], "An unrelated sentence about the weather"]

# the same probe, on the saved edits, in a fresh process
PROBE_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_contract import probe
from wise_edit import load_edits
torch.save(probe(load_edits(sys.argv[1])), sys.argv[2])
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved tiny base model, a local corpus for ROME/MEMIT's key statistics and a cache of their own."""
    root = tmp_path_factory.mktemp("contract")
    tiny_llama().save_pretrained(root / "tiny")
    byte_tokenizer().save_pretrained(root / "tiny")
    (root / "corpus.txt").write_text(CORPUS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WISE_EDIT_CACHE", str(root / "cache"))  # the subprocesses inherit it
        yield root


def hparams(name: str, root) -> HyperParams:
    extra = {"mom2_dataset": str(root / "corpus.txt")} if CASES[name]["alg_name"] in ("ROME", "MEMIT") else {}
    return HyperParams.from_dict({**COMMON, **CASES[name], **extra, "model_name": str(root / "tiny")})


def probe(editor: LifelongEditor) -> dict[str, torch.Tensor]:
    batch = encode_batch(editor.tok, PROBES, [None] * len(PROBES), side="left")
    with torch.no_grad():
        logits = editor.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        greedy = editor.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                       max_new_tokens=4, do_sample=False, pad_token_id=editor.tok.pad_token_id)
        torch.manual_seed(7)
        sampled = editor.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                        max_new_tokens=4, do_sample=True, pad_token_id=editor.tok.pad_token_id)
    return {"logits": logits, "greedy": greedy, "sampled": sampled}


def targets_nll(editor: LifelongEditor) -> float:
    """Mean negative log-likelihood of the new targets (a tiny random model rarely puts them first, but every
    edit must make them likelier)."""
    scores = score_answers(editor.model, editor.tok, [r["prompt"] for r in REQUESTS],
                           [r["target_new"] for r in REQUESTS])
    return sum(scores.nll) / len(REQUESTS)


def test_every_registered_method_is_in_the_contract():
    # the package's own methods (other test modules register toy ones)
    shipped = {n for n in registered_methods() if get_method(n).method_cls.__module__.startswith("wise_edit.methods.")}
    assert {case["alg_name"] for case in CASES.values()} == shipped and len(shipped) >= 6


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_at_a_time_editing_changes_answers_then_undoes_each_edit_exactly(name, setup):
    editor = LifelongEditor(hparams(name, setup))
    editor.prepare(REQUESTS)  # calibrations over the stream happen once, before the first edit, and stay
    before, state = probe(editor), editor.method.state_dict()
    unedited = targets_nll(editor)
    run = editor.edit_requests(REQUESTS, sequential_edit=False, progress=False, rel_metric="perplexity")
    edited = [math.log(r["rewrite_ppl"]) for r in run["requests"]]
    assert sum(edited) / len(edited) < unedited  # each edit took while it was in place
    assert torch.equal(probe(editor)["logits"], before["logits"])
    after = editor.method.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    assert editor.edit_log == []  # undone edits are not part of the editor's history


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_state_round_trip_reproduces_the_edited_model(name, setup):
    editor = LifelongEditor(hparams(name, setup))
    editor.edit_requests(REQUESTS, sequential_edit=True, progress=False)
    edited = probe(editor)
    assert targets_nll(editor) < targets_nll(LifelongEditor(hparams(name, setup)))
    other = LifelongEditor(hparams(name, setup))
    other.method.load_state_dict(editor.method.state_dict())
    assert torch.equal(probe(other)["logits"], edited["logits"])
    again = other.method.state_dict()
    assert all(torch.equal(again[k], v) for k, v in editor.method.state_dict().items())


@pytest.mark.parametrize("name", sorted(CASES))
def test_saved_edits_give_identical_logits_and_generations_in_a_new_process(name, setup, tmp_path):
    editor = LifelongEditor(hparams(name, setup))
    editor.edit_requests(REQUESTS, sequential_edit=True, progress=False)
    here = probe(editor)
    assert not torch.equal(here["logits"], probe(LifelongEditor(hparams(name, setup)))["logits"])
    editor.save(tmp_path / "edits")
    script = PROBE_SCRIPT.format(tests=str(Path(__file__).parent))
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "edits"), str(tmp_path / "out.pt")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    there = torch.load(tmp_path / "out.pt")
    for key in ("logits", "greedy", "sampled"):
        assert torch.equal(here[key], there[key]), key
    assert load_edits(tmp_path / "edits").edit_log == editor.edit_log


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_prompt_scores_the_same_in_a_batch_as_alone(name, setup):
    """Routing and every metric are per row: padding and batch neighbours must not change a row's answer."""
    editor = LifelongEditor(hparams(name, setup))
    editor.edit_requests(REQUESTS, sequential_edit=True, progress=False)
    prompts = [r["prompt"] for r in REQUESTS] + PROBES
    answers = [r["target_new"] for r in REQUESTS] + ["Lima"] * len(PROBES)
    together = score_answers(editor.model, editor.tok, prompts, answers)
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        alone = score_answers(editor.model, editor.tok, [prompt], [answer])
        assert torch.equal(alone.predictions[0], together.predictions[i]), prompt
        assert alone.nll[0] == pytest.approx(together.nll[i], abs=1e-4), prompt


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_stream_stopped_after_two_edits_resumes_and_ends_as_an_uninterrupted_one(name, setup, tmp_path):
    straight = LifelongEditor(hparams(name, setup)).edit_requests(REQUESTS, progress=False)
    stopped = LifelongEditor(hparams(name, setup))
    apply, calls = stopped.apply, []

    def apply_twice(chunk, record=True):
        if len(calls) == 2:
            raise Interrupted
        calls.append(chunk)
        return apply(chunk, record)

    stopped.apply = apply_twice
    with pytest.raises(Interrupted):
        stopped.edit_requests(REQUESTS, progress=False, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=1)
    torch.manual_seed(123)  # the checkpoint restores the random state the stream had
    resumed = LifelongEditor(hparams(name, setup)).edit_requests(
        REQUESTS, progress=False, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=1)
    assert resumed["timing"]["resumed_edits"] == 2
    assert resumed["requests"] == straight["requests"]  # per-request metrics and loss curves
    assert resumed["summary"] == straight["summary"]
