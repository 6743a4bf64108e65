"""bfloat16 for the frozen layers above the edited matrix: same losses up to bf16 rounding, edits still hold."""

import pytest
import torch

from wise_edit import LifelongEditor
from wise_edit.hparams import HyperParamsError
from wise_edit.training.runner import resolve_dtype

from conftest import REQUESTS, tiny_llama
from test_wise import wise_hp


def test_bfloat16_upper_layers_track_the_float32_loss_and_the_edit_holds(tok):
    curves, rel = {}, {}
    for dtype in ("float32", "bfloat16"):
        editor = LifelongEditor(wise_hp(upper_dtype=dtype, n_iter=10), model=tiny_llama(), tok=tok)
        curves[dtype] = editor.apply(REQUESTS[:1])["losses"]
        rel[dtype] = editor.score(REQUESTS[:1], [None])[0]["rewrite_acc"]
        assert editor.method.memory.live.dtype == torch.float32  # the trained change stays float32
    assert curves["bfloat16"][0] == pytest.approx(curves["float32"][0], rel=0.02)
    assert curves["bfloat16"] != curves["float32"]  # the option does reach the loop
    assert rel["bfloat16"] == rel["float32"]


def test_auto_is_bfloat16_only_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False, raising=False)
    assert resolve_dtype("auto") == torch.float32
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    assert resolve_dtype("auto") == torch.bfloat16


def test_an_unknown_dtype_is_refused_naming_the_key():
    with pytest.raises(HyperParamsError, match="upper_dtype"):
        wise_hp(upper_dtype="float16")


def test_bfloat16_steps_leave_the_model_float32_and_unchanged(tok):
    """The upper layers and the head run on bfloat16 copies of their weights: the model keeps its own float32
    weights, unchanged, and its tied head."""
    model = tiny_llama()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    editor = LifelongEditor(wise_hp(upper_dtype="bfloat16", n_iter=5), model=model, tok=tok)
    editor.apply(REQUESTS[:1])
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32, name
        if name in before:
            assert torch.equal(p, before[name]), name
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
