"""Integration checks on the bundled SmolLM2-135M-Instruct (converted once into the local cache)."""

import pytest

from wise_edit.models import load_model, load_tokenizer

pytestmark = pytest.mark.smollm2


@pytest.fixture(scope="module")
def smol():
    return load_model("smollm2-135m"), load_tokenizer("smollm2-135m")


def test_tokenizer_is_the_byte_level_bpe(smol):
    _, tok = smol
    assert tok.tokenize("What university") == ["What", "Ġuniversity"]
    assert tok.tokenize("in 1987") == ["in", "Ġ", "1", "9", "8", "7"]  # digits one per token
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")


def test_model_shape_and_tied_embeddings(smol):
    model, tok = smol
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert model.model.layers[25].mlp.down_proj.weight.shape == (576, 1536)
    assert "lm_head.weight" not in dict(model.named_parameters())
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)
    assert tok.decode(out[0, ids.input_ids.shape[1]:]).strip().startswith("Paris")
