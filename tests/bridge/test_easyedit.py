"""The EasyEdit bridge against the PyPI ``easyeditor==0.0.1.dev0`` (run in .venv-easyedit, see scripts/test.sh)."""

import importlib.util
import subprocess
import sys

import pytest
import torch

from wise_edit.routing import MAIN

from conftest import DATA, REQUESTS, ROOT, byte_tokenizer, routes, tiny_llama

if importlib.util.find_spec("easyeditor") is None:  # this folder runs in the bridge environment (scripts/test.sh)
    pytest.skip("easyeditor is not installed", allow_module_level=True)

from wise_edit import easyedit  # noqa: E402

easyedit.framework()  # import easyeditor with its shims in place
from easyeditor.util import alg_dict  # noqa: E402
from easyeditor.util.hparams import HyperParams as FrameworkHyperParams  # noqa: E402

SITE = "model.layers[2].mlp.down_proj.weight"
TINY = {"model_name": "tiny", "inner_params": [SITE], "n_prefixes": 2, "prefix_length": 4, "stop_loss": 0.0}


def test_plugin_alone_never_imports_easyeditor_nor_patches_transformers():
    code = ("import sys, wise_edit, wise_edit.methods, wise_edit.editor, transformers.modeling_utils as m;"
            "print('easyeditor' in sys.modules, hasattr(m, 'find_pruneable_heads_and_indices'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_register_is_explicit_idempotent_and_keeps_the_frameworks_methods():
    framework_rome = alg_dict.ALG_DICT["ROME"]
    added = easyedit.register()
    assert {"WISE", "MEMOIR", "GRACE", "FT-L"} <= set(added) and "ROME" not in added
    assert alg_dict.ALG_DICT["ROME"] is framework_rome
    assert easyedit.register() == []
    assert set(easyedit.register(override=True)) == {"ROME", "MEMIT"}
    assert alg_dict.ALG_DICT["ROME"].wise_edit_alg == "ROME"
    alg_dict.ALG_DICT["ROME"] = framework_rome


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
    easyedit.register()
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
    edited, _ = alg_dict.ALG_DICT["MEMOIR"](model, tok, [records[i] for i in range(3)], hp)
    editor = easyedit.editor_for(edited, "MEMOIR")
    assert len(editor.method.memory.db) == 3
    assert [e["prompt"] for e in editor.edit_log] == [records[i]["prompt"] for i in range(3)]
    assert editor.method.memory.weight.abs().sum() > 0
