"""Checks on the bundled Gemma-3-270M (joined from its chunk packages and converted once into the local cache)."""

import json
from pathlib import Path

import pytest

from wise_edit.models import load_model, load_tokenizer, resolve_model_path
from wise_edit.sites import resolve_site
from wise_edit.tokens import pad_pairs, training_pair
from wise_edit.training.runner import SiteRunner, _ADDITIVE

pytestmark = pytest.mark.bundled


@pytest.fixture(scope="module")
def gemma():
    return load_model("gemma3-270m"), load_tokenizer("gemma3-270m")


def test_the_converted_model_is_plain_float32_gemma3(gemma):
    model, tok = gemma
    config = json.loads((Path(resolve_model_path("gemma3-270m")) / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and "quantization_config" not in config
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (18, 640, 262144)
    assert model.model.layers[15].mlp.down_proj.weight.shape == (640, 2048)
    assert tok("What is the capital of France?").input_ids[0] == tok.bos_token_id


@pytest.mark.parametrize("name, path, additive", [
    ("gemma3-270m", "model.layers[15].mlp.down_proj.weight", False),  # the MLP output is normalised first
    ("smollm2-135m", "model.layers[25].mlp.down_proj.weight", True),
])
def test_the_training_loop_measures_whether_the_edited_matrix_adds_to_the_residual_stream(gemma, name, path,
                                                                                         additive):
    model, tok = gemma if name == "gemma3-270m" else (load_model(name), load_tokenizer(name))
    site = resolve_site(model, path)
    batch = pad_pairs([training_pair(tok, "What is the capital of Australia?", "Perth")], tok.pad_token_id,
                      side="right")
    SiteRunner(model, site, batch)
    assert _ADDITIVE[site.layer] is additive
