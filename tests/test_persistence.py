"""Saved edits: new-process round trips with identical logits and generations, refusals, kill-and-resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from wise_edit import EditStateError, HyperParams, LifelongEditor, load_edits, save_edits
from wise_edit.tokens import encode_batch

from conftest import DATA, REQUESTS, ROOT, byte_tokenizer, tiny_llama

SITE = "model.layers[2].mlp.down_proj.weight"
COMMON = {"model_name": None, "inner_params": [SITE], "n_prefixes": 2, "prefix_length": 4, "stop_loss": 0.0}
METHODS = {
    "WISE-Merge": {"alg_name": "WISE", "edit_lr": 0.1, "optimizer": "adam", "n_iter": 10,
                   "act_margin": [0.5, 3.0, 2.0], "act_ratio": 0.8, "save_freq": 2, "merge_freq": 4,
                   "protect": 1.0},
    "WISE-Retrieve": {"alg_name": "WISE", "edit_lr": 0.1, "optimizer": "adam", "n_iter": 10,
                      "act_margin": [0.5, 3.0, 2.0], "act_ratio": 0.8, "save_freq": 1, "merge_freq": 2,
                      "retrieve": True},
    "MEMOIR": {"alg_name": "MEMOIR", "edit_lr": 5.0, "n_iter": 10, "top_k": 32, "irr_threshold": 0.6,
               "protect": 1.0},
    "GRACE": {"alg_name": "GRACE", "eps": 0.5, "edit_lr": 0.5, "n_iter": 10, "n_prefixes": 0},
}
PROBES = [REQUESTS[0]["prompt"], REQUESTS[1]["rephrase_prompt"], "nq question: capital of Peru",
          REQUESTS[3]["prompt"], "An unrelated sentence about the weather"]

# computes logits and generations of the saved edits in a fresh process
PROBE_SCRIPT = """
import sys, torch
from wise_edit import load_edits
from wise_edit.tokens import encode_batch
editor = load_edits(sys.argv[1])
prompts = {probes!r}
batch = encode_batch(editor.tok, prompts, [None] * len(prompts), side="left")
with torch.no_grad():
    logits = editor.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    greedy = editor.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                   max_new_tokens=4, do_sample=False, pad_token_id=editor.tok.pad_token_id)
    torch.manual_seed(7)
    sampled = editor.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                    max_new_tokens=4, do_sample=True, pad_token_id=editor.tok.pad_token_id)
torch.save({{"logits": logits, "greedy": greedy, "sampled": sampled}}, sys.argv[2])
"""


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "tiny"
    tiny_llama().save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def probe(editor):
    batch = encode_batch(editor.tok, PROBES, [None] * len(PROBES), side="left")
    with torch.no_grad():
        logits = editor.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        greedy = editor.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                       max_new_tokens=4, do_sample=False, pad_token_id=editor.tok.pad_token_id)
        torch.manual_seed(7)
        sampled = editor.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                        max_new_tokens=4, do_sample=True, pad_token_id=editor.tok.pad_token_id)
    return {"logits": logits, "greedy": greedy, "sampled": sampled}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_saved_edits_give_identical_logits_and_generations_in_a_new_process(name, base_dir, tmp_path):
    hp = HyperParams.from_dict({**COMMON, **METHODS[name], "model_name": str(base_dir)})
    editor = LifelongEditor(hp)
    editor.edit_requests(REQUESTS, sequential_edit=True, progress=False)
    here = probe(editor)
    unedited = LifelongEditor(hp)
    assert not torch.equal(here["logits"], probe(unedited)["logits"])  # the edits do change something
    save_edits(editor, tmp_path / "edits")
    assert not list((tmp_path / "edits").glob("*.bin")) and (tmp_path / "edits" / "edits.safetensors").is_file()
    script = PROBE_SCRIPT.format(probes=PROBES)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "edits"), str(tmp_path / "out.pt")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    there = torch.load(tmp_path / "out.pt")
    for key in ("logits", "greedy", "sampled"):
        assert torch.equal(here[key], there[key]), key
    meta = json.loads((tmp_path / "edits" / "edits.json").read_text())
    assert [e["prompt"] for e in meta["edit_log"]] == [r["prompt"] for r in REQUESTS]


def test_saved_state_holds_no_base_weights(base_dir, tmp_path):
    hp = HyperParams.from_dict({**COMMON, **METHODS["MEMOIR"], "model_name": str(base_dir)})
    editor = LifelongEditor(hp)
    editor.edit_requests(REQUESTS[:1], sequential_edit=True, progress=False)
    save_edits(editor, tmp_path / "edits")
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "edits" / "edits.safetensors"))
    base = {tuple(v.shape) for v in editor.model.state_dict().values() if v.ndim == 2}
    weight_like = [k for k, v in saved.items() if tuple(v.shape) in base]
    assert weight_like == ["weight"]  # only the residual memory (zeros outside the edit), nothing frozen


def test_loading_onto_another_base_model_fails_with_the_reason(base_dir, tmp_path):
    hp = HyperParams.from_dict({**COMMON, **METHODS["GRACE"], "model_name": str(base_dir)})
    editor = LifelongEditor(hp)
    editor.edit_requests(REQUESTS[:1], sequential_edit=True, progress=False)
    save_edits(editor, tmp_path / "edits")
    tok = byte_tokenizer()
    with pytest.raises(EditStateError, match=r"model.layers\[2\].mlp.down_proj.weight differs from the base"):
        load_edits(tmp_path / "edits", model=tiny_llama(seed=1), tok=tok)
    with pytest.raises(EditStateError, match=r"had shape \[64, 128\] when saved, this model's is \[64, 96\]"):
        load_edits(tmp_path / "edits", model=tiny_llama(intermediate=96), tok=tok)
    with pytest.raises(EditStateError, match="not a saved edit state"):
        load_edits(tmp_path, model=tiny_llama(), tok=tok)


def test_resuming_a_different_stream_is_refused(base_dir, tmp_path):
    hp = HyperParams.from_dict({**COMMON, **METHODS["GRACE"], "model_name": str(base_dir)})
    LifelongEditor(hp).edit_requests(REQUESTS[:2], progress=False, checkpoint_dir=tmp_path / "ckpt",
                                     checkpoint_every=1)
    with pytest.raises(EditStateError, match="different request stream"):
        LifelongEditor(hp).edit_requests(REQUESTS[2:], progress=False, checkpoint_dir=tmp_path / "ckpt",
                                         checkpoint_every=1)


def _cli(out, hparams_file, alg, *extra):
    return [sys.executable, str(ROOT / "scripts" / "run_lifelong_editing.py"), f"alg_name={alg}", "data=zsre",
            "ds_size=8", f"hparams_file={hparams_file}", f"output_dir={out}", "progress=false",
            "eval_generation=false", f"data_root={DATA}", *extra]


@pytest.mark.parametrize("name", ["MEMOIR", "WISE-Merge"])
def test_a_killed_stream_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(base_dir, tmp_path, name):
    # WISE: the resumed run must train on the context prefixes of the uninterrupted one (saved with the state),
    # not on prefixes generated again by the already edited model
    hparams_file = tmp_path / "method.yaml"
    hparams_file.write_text(json.dumps({**COMMON, **METHODS[name], "model_name": str(base_dir), "n_iter": 40}))
    alg = METHODS[name]["alg_name"]
    straight = subprocess.run(_cli(tmp_path / "straight", hparams_file, alg), capture_output=True, text=True,
                              cwd=ROOT, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = tmp_path / "killed"
    command = _cli(out, hparams_file, alg, "checkpoint_every=1")
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    meta, deadline = out / "checkpoint" / "edits.json", time.time() + 300
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if meta.exists():
            try:
                done = len(json.loads(meta.read_text())["edit_log"])
            except (json.JSONDecodeError, FileNotFoundError):  # being replaced right now
                continue
            if done >= 2:
                break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= done < 8, f"kill landed after {done} edits"
    assert not (out / "results.json").exists()
    resumed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = json.loads((tmp_path / "straight" / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    assert a["summary"] == b["summary"]
    assert a["requests"] == b["requests"]  # per-request metrics and loss curves
    assert f"resuming after {done} edits" in resumed.stdout + resumed.stderr
    timing = b["timing"]  # the restored edit seconds count in the total, so evaluation time stays positive
    assert timing["resumed_edits"] == done and timing["total_seconds"] > timing["edit_seconds"]
    assert timing["eval_seconds"] > 0
    assert len(json.loads((out / "edits" / "edits.json").read_text())["edit_log"]) == 8


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_state_of_the_wrong_shape_is_an_edit_state_error_naming_the_entry(name, base_dir, tmp_path):
    hp = HyperParams.from_dict({**COMMON, **METHODS[name], "model_name": str(base_dir), "n_iter": 2})
    editor = LifelongEditor(hp)
    editor.edit_requests(REQUESTS[:2], progress=False)
    state = editor.method.state_dict()
    bad = max((k for k, v in state.items() if v.dim() >= 1 and v.numel() > 1), key=lambda k: state[k].numel())
    broken = dict(state, **{bad: state[bad][..., :-1].clone()})  # one column short
    with pytest.raises(EditStateError, match="shape"):
        LifelongEditor(hp).method.load_state_dict(broken)
    # and through load_edits, with the file named
    directory = save_edits(editor, tmp_path / "edits")
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in broken.items()}, str(directory / "edits.safetensors"))
    with pytest.raises(EditStateError, match=r"edits\.safetensors.*shape"):
        load_edits(directory)
    save_file({k: v.contiguous() for k, v in state.items() if k != bad}, str(directory / "edits.safetensors"))
    with pytest.raises(EditStateError, match=r"has no (entry|'protect_gram')"):
        load_edits(directory)
