"""The EasyEdit bridge, run in .venv-easyedit against the PyPI ``easyeditor==0.0.1.dev0`` and again against
upstream EasyEdit 14cea82 (scripts/test.sh)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wise_edit import registered_methods
from wise_edit.hparams import HyperParamsError
from wise_edit.routing import MAIN

from conftest import DATA, REQUESTS, ROOT, byte_tokenizer, routes, tiny_llama

if importlib.util.find_spec("easyeditor") is None:  # this folder runs in the bridge environment (scripts/test.sh)
    pytest.skip("easyeditor is not installed", allow_module_level=True)

from wise_edit import easyedit  # noqa: E402

easyedit.framework()  # import easyeditor with its shims in place
from easyeditor.util import alg_dict  # noqa: E402
from easyeditor.util.hparams import HyperParams as FrameworkHyperParams  # noqa: E402

SITE = "model.layers[2].mlp.down_proj.weight"
TINY = {"model_name": "tiny", "inner_params": [SITE], "n_prefixes": 2, "prefix_length": 4, "stop_loss": 0.0,
        "gate_params": None}


def test_plugin_alone_never_imports_easyeditor_nor_patches_transformers():
    code = ("import sys, wise_edit, wise_edit.methods, wise_edit.editor, transformers.modeling_utils as m;"
            "print('easyeditor' in sys.modules, hasattr(m, 'find_pruneable_heads_and_indices'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


FRAMEWORK_OWN = {name for name in alg_dict.ALG_DICT if name in registered_methods()}


@pytest.fixture(autouse=True)
def restore_alg_dict():
    saved = dict(alg_dict.ALG_DICT)
    yield
    alg_dict.ALG_DICT.clear()
    alg_dict.ALG_DICT.update(saved)


def test_register_is_explicit_idempotent_and_keeps_the_frameworks_methods():
    assert {"ROME", "MEMIT"} <= FRAMEWORK_OWN  # both releases; upstream also has WISE and GRACE
    framework_rome = alg_dict.ALG_DICT["ROME"]
    added = easyedit.register()
    assert set(added) == set(registered_methods()) - FRAMEWORK_OWN and "MEMOIR" in added
    assert alg_dict.ALG_DICT["ROME"] is framework_rome
    assert easyedit.register() == []
    assert set(easyedit.register(override=True)) == FRAMEWORK_OWN
    assert alg_dict.ALG_DICT["ROME"].wise_edit_alg == "ROME"


def test_hparams_file_loads_through_a_framework_derived_class(tmp_path):
    cls = easyedit.hparams_class("WISE")
    hp = cls.from_hparams(ROOT / "hparams" / "WISE" / "smollm2-135m.yaml")
    assert isinstance(hp, FrameworkHyperParams) and hp.alg_name == "WISE" and hp.act_margin == [5.0, 20.0, 10.0]
    upstream = tmp_path / "upstream.yaml"  # upstream EasyEdit keys the plugin does not use are accepted
    upstream.write_text((ROOT / "hparams" / "WISE" / "smollm2-135m.yaml").read_text()
                        + "merge_alg: ties\nobjective_optimization: only_label\nmodel_parallel: false\n")
    assert cls.from_hparams(upstream).act_margin == hp.act_margin
    with pytest.raises(ValueError, match="unknown key"):
        upstream.write_text(upstream.read_text() + "edit_lrr: 1.0\n")
        cls.from_hparams(upstream)


@pytest.mark.parametrize("alg, extra", [
    ("WISE", {"edit_lr": 0.1, "optimizer": "adam", "n_iter": 40, "act_margin": [0.5, 3.0, 2.0], "act_ratio": 0.8}),
    ("MEMOIR", {"edit_lr": 5.0, "n_iter": 30, "top_k": 32, "irr_threshold": 0.6}),
])
def test_edit_through_alg_dict_takes_effect_and_accumulates(alg, extra):
    easyedit.register(override=True)
    hp = easyedit.hparams_class(alg).from_hparams(ROOT / "hparams" / alg / "smollm2-135m.yaml").replace(
        **TINY, **extra)
    model, tok = tiny_llama(), byte_tokenizer()
    apply = alg_dict.ALG_DICT[alg]
    ids = tok([REQUESTS[0]["prompt"] + " " + REQUESTS[0]["target_new"]], return_tensors="pt").input_ids
    with torch.no_grad():
        before = model(input_ids=ids).logits
    edited, weights_copy = apply(model, tok, [dict(REQUESTS[0])], hp, copy=False, return_orig_weights=True,
                                 keep_original_weight=False)
    editor = easyedit.editor_for(edited, alg)
    assert editor.score(REQUESTS[:1], [None])[0]["rewrite_acc"] == 1.0
    with torch.no_grad():
        assert not torch.equal(edited(input_ids=ids).logits, before)
    edited, _ = apply(edited, tok, [dict(REQUESTS[1])], hp)
    assert easyedit.editor_for(edited, alg) is editor  # one editor for both calls: edits accumulate
    assert [e["case_id"] for e in editor.edit_log] == [0, 1]
    assert editor.score(REQUESTS[1:2], [None])[0]["rewrite_acc"] == 1.0
    assert MAIN not in routes(editor, [REQUESTS[0]["prompt"], REQUESTS[1]["prompt"]])
    assert routes(editor, ["nq question: largest ocean"]) == [MAIN]


def test_zsre_dataset_records_are_accepted_as_they_are():
    easyedit.register()
    from easyeditor.dataset import ZsreDataset

    records = ZsreDataset(str(DATA / "zsre" / "zsre_mend_edit.json"), size=3)
    assert "subject" not in records[0] and "loc_prompt" not in records[0]
    hp = easyedit.hparams_class("MEMOIR").from_hparams(ROOT / "hparams" / "MEMOIR" / "smollm2-135m.yaml").replace(
        **TINY, edit_lr=5.0, n_iter=20, top_k=32, irr_threshold=0.6)
    model, tok = tiny_llama(), byte_tokenizer()
    gated = hp.replace(gate_params="model.layers[0].mlp.down_proj.weight")  # the shipped file's fact gate
    edited, _ = alg_dict.ALG_DICT["MEMOIR"](model, tok, [records[i] for i in range(3)], gated)
    editor = easyedit.editor_for(edited, "MEMOIR")
    assert len(editor.method.gate.filed) == 3 and editor.method.gate.radius is not None  # no subject needed
    assert len(editor.method.memory.db) == 3
    assert [e["prompt"] for e in editor.edit_log] == [records[i]["prompt"] for i in range(3)]
    assert editor.method.memory.weight.abs().sum() > 0


def test_hparams_carry_the_frameworks_settings_and_a_model_name_its_loader_knows(tmp_path, monkeypatch):
    monkeypatch.setenv("WISE_EDIT_CACHE", str(tmp_path / "cache"))
    model_dir = tmp_path / "smollm2-135m"  # a local model whose directory name selects no framework loader
    tiny_llama().save_pretrained(model_dir)
    yaml = tmp_path / "wise.yaml"
    yaml.write_text((ROOT / "hparams" / "WISE" / "smollm2-135m.yaml").read_text().replace(
        "model_name: smollm2-135m", f"model_name: {model_dir}") + "model_parallel: false\nfp16: false\n")
    hp = easyedit.hparams_class("WISE").from_hparams(yaml)
    assert (hp.model_parallel, hp.fp16, hp.use_chat_template, hp.evaluation_type) == (False, False, False, None)
    assert "llama" in hp.model_name.lower() and "gpt" not in hp.model_name.lower()
    assert (Path(hp.model_name) / "config.json").exists()
    assert Path(hp.model_name).resolve() == model_dir.resolve()
    again = hp.replace(edit_lr=0.5)
    assert again.model_name == hp.model_name and again.model_parallel is False and again.edit_lr == 0.5
    yaml.write_text(yaml.read_text() + "use_chat_template: true\n")  # the bridge then edits in the template
    assert easyedit.hparams_class("WISE").from_hparams(yaml).use_chat_template is True


def test_a_model_type_without_a_framework_loader_is_a_clear_error(tmp_path):
    (tmp_path / "opt-ish").mkdir()
    (tmp_path / "opt-ish" / "config.json").write_text('{"model_type": "opt"}')
    with pytest.raises(HyperParamsError, match="no loader for model_type 'opt'"):
        easyedit.framework_model_path(str(tmp_path / "opt-ish"))


def test_the_frameworks_own_method_reading_plugin_hparams_says_what_to_do():
    easyedit.register()  # keeps the framework's own ROME
    hp = easyedit.hparams_class("ROME").from_hparams(ROOT / "hparams" / "ROME" / "smollm2-135m.yaml")
    with pytest.raises(AttributeError, match=r"EasyEdit's own ROME.*register\(override=True\)"):
        hp.v_num_grad_steps  # noqa: B018  (what the framework's ROME reads)
    assert not hasattr(hp, "v_num_grad_steps")
