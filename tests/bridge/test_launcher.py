"""``python -m wise_edit.easyedit SCRIPT``: the framework's own scripts and hyperparameter classes with the plugin
inside, run in the bridge environment against the PyPI easyeditor and upstream 14cea82 (scripts/test.sh)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import DATA, REQUESTS, ROOT, byte_tokenizer, tiny_llama

if importlib.util.find_spec("easyeditor") is None:
    pytest.skip("easyeditor is not installed", allow_module_level=True)

from wise_edit import easyedit  # noqa: E402
from wise_edit.hparams import HyperParamsError  # noqa: E402

easyedit.framework()
import easyeditor  # noqa: E402
from easyeditor.util import alg_dict  # noqa: E402

UPSTREAM = ROOT / ".vendor" / "easyedit-14cea82" / "EasyEdit"
IS_UPSTREAM = ".vendor/easyedit-14cea82" in easyeditor.__file__
TINY = {"model_name": "tiny", "inner_params": ["model.layers[2].mlp.down_proj.weight"], "n_prefixes": 2,
        "prefix_length": 4, "stop_loss": 0.0}


#: this process's framework for the scripts it starts (upstream is imported from PYTHONPATH)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p and "easyedit-14cea82" in p)}


def launch(tmp_path: Path, script: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``script`` through the launcher from ``tmp_path`` (where the framework writes ./logs and outputs)."""
    return subprocess.run([sys.executable, "-m", "wise_edit.easyedit", str(script), *args], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=900)


def test_an_unchanged_script_runs_as_main_with_its_arguments_and_the_plugin_registered(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text("import sys\nimport easyeditor\nfrom easyeditor.util.alg_dict import ALG_DICT\n"
                      "print(sys.argv[1:], __name__, getattr(ALG_DICT.get('MEMOIR'), 'wise_edit_alg', None))\n")
    launched = launch(tmp_path, script, "--x=1")
    assert launched.returncode == 0, launched.stderr
    assert launched.stdout.split("\n")[-2] == "['--x=1'] __main__ MEMOIR"


def test_the_launcher_names_a_missing_script(tmp_path):
    launched = launch(tmp_path, tmp_path / "nope.py")
    assert launched.returncode == 1 and "nope.py: no such script" in launched.stderr


@pytest.fixture
def framework_rome():
    """The framework's ROMEHyperParams (in both releases), its loader put back after the test."""
    from easyeditor import ROMEHyperParams

    saved, alg = ROMEHyperParams.__dict__["from_hparams"], dict(alg_dict.ALG_DICT)
    yield ROMEHyperParams
    ROMEHyperParams.from_hparams = saved
    alg_dict.ALG_DICT.clear()
    alg_dict.ALG_DICT.update(alg)


def test_a_framework_class_loads_a_plugin_file_as_the_plugins_and_its_own_file_as_before(framework_rome, tmp_path):
    heard = []
    easyedit.follow_alg_name(framework_rome, frozenset({"ROME", "MEMIT"}), on_load=lambda p, w: heard.append(w))
    plugin = framework_rome.from_hparams(str(ROOT / "hparams" / "ROME" / "smollm2-135m.yaml"))
    assert isinstance(plugin, easyedit.hparams_class("ROME")) and plugin.alg_name == "ROME"
    memoir = framework_rome.from_hparams(str(ROOT / "hparams" / "MEMOIR" / "smollm2-135m"))  # .yaml optional
    assert type(memoir).__name__ == "MEMOIRHyperParamsForEasyEdit"  # the class follows the file's alg_name
    own = tmp_path / "rome-upstream.yaml"  # an upstream ROME file: keys the plugin's ROME does not have
    own.write_text("alg_name: ROME\nmodel_name: gpt2\nstats_dir: data\ndevice: 0\nlayers: [5]\n"
                   "fact_token: subject_last\nv_num_grad_steps: 20\nv_lr: 0.5\nv_loss_layer: 11\n"
                   "v_weight_decay: 0.5\nclamp_norm_factor: 4\nkl_factor: 0.0625\nmom2_adjustment: false\n"
                   "context_template_length_params: [[5, 10], [10, 10]]\nrewrite_module_tmp: t\nlayer_module_tmp: t\n"
                   "mlp_module_tmp: t\nattn_module_tmp: t\nln_f_module: t\nlm_head_module: t\n"
                   "mom2_dataset: wikipedia\nmom2_n_samples: 100\nmom2_dtype: float32\n")
    try:
        framework_own = framework_rome.from_hparams(str(own))
    except Exception as exc:  # this release's ROMEHyperParams needs other keys: it still is what refuses
        assert not isinstance(exc, HyperParamsError) or "EasyEdit's ROMEHyperParams" in str(exc)
    else:
        assert type(framework_own) is framework_rome and framework_own.v_num_grad_steps == 20
    assert heard[:2] == ["the plugin's ROME", "the plugin's MEMOIR"]
    typo = tmp_path / "typo.yaml"
    typo.write_text((ROOT / "hparams" / "ROME" / "smollm2-135m.yaml").read_text() + "edit_lrr: 1.0\n")
    with pytest.raises(HyperParamsError, match=r"typo\.yaml: neither the plugin's ROME \(unknown key\(s\) "
                                               r"\['edit_lrr'\]\)"):
        framework_rome.from_hparams(str(typo))


def test_upstream_files_are_told_apart_by_their_keys():
    shipped = easyedit.hparams.read_mapping(ROOT / "hparams" / "WISE" / "smollm2-135m.yaml")
    assert easyedit.is_plugin_file(shipped, framework_has=True)
    assert easyedit.is_plugin_file({**shipped, "model_parallel": False}, framework_has=True)
    assert not easyedit.is_plugin_file({**shipped, "objective_optimization": "only_label"}, framework_has=True)
    assert easyedit.is_plugin_file({**shipped, "replay": False}, framework_has=False)  # its loader then refuses
    assert not easyedit.is_plugin_file({"alg_name": "KN", "model_name": "x"}, framework_has=True)
    if (UPSTREAM / "hparams").is_dir():
        for name in ("WISE/llama-7b.yaml", "GRACE/llama-7b.yaml", "ROME/llama-7b.yaml", "MEMIT/llama-7b.yaml"):
            assert not easyedit.is_plugin_file(easyedit.hparams.read_mapping(UPSTREAM / "hparams" / name), True)


@pytest.mark.parametrize("alg, extra", [
    ("WISE", {"edit_lr": 0.1, "optimizer": "adam", "n_iter": 40, "act_margin": [0.5, 3.0, 2.0], "act_ratio": 0.8,
              "gate_params": None}),
    ("FT-L", {"edit_lr": 1e-3, "n_iter": 5}),
])
def test_what_an_apply_call_returns_undoes_its_edits_both_ways_the_framework_restores(alg, extra):
    saved = dict(alg_dict.ALG_DICT)
    easyedit.register(override=True)
    try:
        hp = easyedit.hparams_class(alg).from_hparams(ROOT / "hparams" / alg / "smollm2-135m.yaml").replace(
            **TINY, **extra)
        model, tok = tiny_llama(), byte_tokenizer()
        ids = tok([REQUESTS[0]["prompt"] + " " + REQUESTS[0]["target_new"]], return_tensors="pt").input_ids
        with torch.no_grad():
            before = model(input_ids=ids).logits
        edited, restore = alg_dict.ALG_DICT[alg](model, tok, [dict(REQUESTS[0])], hp, copy=False,
                                                 return_orig_weights=True, keep_original_weight=False)
        editor = easyedit.editor_for(edited, alg)
        with torch.no_grad():
            assert not torch.allclose(edited(input_ids=ids).logits, before)
        written = {f"{s.module_path}.weight" for s in editor.method.sites}
        assert set(restore) == (written if alg == "FT-L" else set())  # the weights it wrote, to copy back
        restore()  # upstream's CALLABLE_RESTORE_ALGS way
        with torch.no_grad():
            assert torch.allclose(edited(input_ids=ids).logits, before, atol=1e-6)
        assert editor.edit_log == []
    finally:
        alg_dict.ALG_DICT.clear()
        alg_dict.ALG_DICT.update(saved)


# ---- upstream's examples/run_wise_editing.py, unchanged, on the bundled model (upstream BaseEditor runs on CPU)

needs_upstream = pytest.mark.skipif(not IS_UPSTREAM, reason="the PyPI easyeditor's BaseEditor runs on CUDA only")


@pytest.fixture(scope="module")
def zsre_dir(tmp_path_factory) -> Path:
    """A --data_dir as the script reads it: ZsRE/zsre_mend_edit.json and ZsRE/zsre_mend_train.json."""
    root = tmp_path_factory.mktemp("data")
    (root / "ZsRE").mkdir()
    (root / "ZsRE" / "zsre_mend_edit.json").symlink_to(DATA / "zsre" / "zsre_mend_edit.json")
    (root / "ZsRE" / "zsre_mend_train.json").symlink_to(DATA / "zsre" / "zsre_mend_train_1k.json")
    return root


def run_wise_editing(tmp_path: Path, data: Path, method: str, hparams: Path) -> tuple[list[dict], str]:
    """The framework's per-record metrics (its result file) and the launcher's stderr."""
    launched = launch(tmp_path, UPSTREAM / "examples" / "run_wise_editing.py", f"--editing_method={method}",
                      f"--hparams_dir={hparams}", f"--data_dir={data}", "--ds_size=3", "--data_type=ZsRE",
                      "--sequential_edit", f"--output_dir={tmp_path / 'out'}")
    assert launched.returncode == 0, launched.stderr[-3000:]
    (result,) = (tmp_path / "out").glob(f"*_{method}_N=3_Sequential=True.json")
    return json.loads(result.read_text()), launched.stderr


def post_rewrite(metrics: list[dict]) -> float:
    return sum(sum(m["post"]["rewrite_acc"]) / len(m["post"]["rewrite_acc"]) for m in metrics) / len(metrics)


@needs_upstream
@pytest.mark.parametrize("method, alg, least", [("WISE", "WISE", 0.9), ("GRACE", "GRACE", 0.5),
                                                ("WISE", "MEMOIR", 0.9)])
def test_run_wise_editing_edits_with_the_plugins_file(tmp_path, zsre_dir, method, alg, least):
    metrics, stderr = run_wise_editing(tmp_path, zsre_dir, method, ROOT / "hparams" / alg / "smollm2-135m.yaml")
    assert f"loads as the plugin's {alg}" in stderr
    assert len(metrics) == 3 and post_rewrite(metrics) >= least
    assert all(m["post"]["locality"]["neighborhood_acc"] for m in metrics)


@needs_upstream
def test_run_wise_editing_still_runs_upstreams_own_wise_file(tmp_path, zsre_dir):
    own = tmp_path / "wise-upstream.yaml"  # upstream's LLaMA file, pointed at the bundled model, fewer steps
    text = (UPSTREAM / "hparams" / "WISE" / "llama-7b.yaml").read_text()
    own.write_text(text.replace('"./hugging_cache/llama-2-7b"', f'"{easyedit.framework_model_path("smollm2-135m")}"')
                   .replace("device: 1", "device: cpu").replace("n_iter: 70", "n_iter: 5"))
    metrics, stderr = run_wise_editing(tmp_path, zsre_dir, "WISE", own)
    assert "loads as EasyEdit's WISEHyperParams" in stderr and "fact gate" not in stderr  # upstream's WISE edited
    assert len(metrics) == 3 and all("rewrite_acc" in m["post"] for m in metrics)
