"""Saved edits: what a saved state holds, refusals, kill-and-resume (new-process round trips: test_contract.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from wise_edit import EditStateError, HyperParams, LifelongEditor, load_edits, save_edits
from wise_edit.errors import NonFiniteError

from conftest import CASES, COMMON, DATA, REQUESTS, ROOT, byte_tokenizer, tiny_llama

METHODS = {name: CASES[name] for name in ("WISE-Merge", "WISE-Retrieve", "MEMOIR", "GRACE")}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "tiny"
    tiny_llama().save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


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


def test_states_are_written_and_read_without_an_editor(tmp_path):
    """persistence is file-level (peft's split): a record and tensors go in, the same come out; a NaN state is
    refused and leaves the previous state in place; another base is refused with the matrix named."""
    from wise_edit.persistence import check_base, read_record, read_tensors, write_state

    base = {"model.layers[0].mlp.down_proj.weight": {"shape": [4, 8], "sha256": "a" * 64}}
    record = {"alg_name": "X", "hparams": {"k": 1}, "base_fingerprint": base, "edit_log": [{"case_id": 0}]}
    tensors = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3)}
    directory = write_state(tmp_path / "s", tensors, record)
    assert read_record(directory) == record
    back = read_tensors(directory)
    assert torch.equal(back["w"], tensors["w"]) and int(back["n"]) == 3
    with pytest.raises(NonFiniteError, match=r"\['w'\]"):
        write_state(directory, {"w": torch.tensor([float("nan")])}, record)
    assert torch.equal(read_tensors(directory)["w"], tensors["w"])  # the earlier state is untouched
    check_base(record, base, directory)
    other = {"model.layers[0].mlp.down_proj.weight": {"shape": [4, 8], "sha256": "b" * 64}}
    with pytest.raises(EditStateError, match=r"down_proj\.weight differs"):
        check_base(record, other, directory)
    with pytest.raises(ValueError, match="edit_log"):
        write_state(tmp_path / "t", tensors, {"alg_name": "X", "hparams": {}, "base_fingerprint": base})
