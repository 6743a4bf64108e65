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


LEAK = {
    "MEMOIR": "after the edit 'What is the capital of France?' answers ' Perth Amboy is the capital': a question "
              "that differs from the edited one in one word gets nearly the same TopHash mask",
    "WISE": "the match gate passes the ZsRE dev stream (nloc 0.986) but not one-word neighbours: at layer 25 every "
            "token key of 'What is the capital of France?' has cosine > 0.95 with the same token of '... "
            "Australia?', so neither the activation router nor the key match tells them apart; 'Which city is "
            "Australia's capital?' matches 0.67 (< 0.7) and is answered by the unedited model",
}


@pytest.mark.parametrize("alg", [pytest.param(alg, marks=pytest.mark.xfail(
    strict=True, reason=f"open (neighbourhood-locality issue): {why}")) for alg, why in LEAK.items()])
def test_an_edit_answers_itself_and_its_rephrasing_and_leaves_its_neighbours(smol, tmp_path, monkeypatch, alg):
    """The shipped file: an edited capital changes, the capitals of other countries do not."""
    import json

    import torch

    from conftest import DATA, ROOT
    from wise_edit import HyperParams, LifelongEditor

    monkeypatch.setenv("WISE_EDIT_CACHE", str(tmp_path))  # background keys of this test only
    model, tok = smol
    hparams = HyperParams.from_hparams(ROOT / "hparams" / alg / "smollm2-135m.yaml")
    editor = LifelongEditor(hparams, model=model, tok=tok)
    neighbours = ["What is the capital of France?", "What is the capital of Japan?"]

    def greedy(prompts: list[str]) -> list[str]:
        answers = []
        for prompt in prompts:
            ids = tok(prompt, return_tensors="pt")
            with torch.no_grad():
                out = editor.model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
            answers.append(tok.decode(out[0, ids.input_ids.shape[1]:]))
        return answers

    before = greedy(neighbours)
    train = json.loads((DATA / "zsre" / "zsre_mend_train_1k.json").read_text())
    # training-time texts: records 0-499 only (500-999 are evaluation probes)
    same_form = [r["src"] for r in train[:300]]
    try:
        editor.edit(prompts=["What is the capital of Australia?", "Who wrote the novel Hamlet?",
                             "Which planet is the largest?"],
                    target_new=["Perth", "Jane Austen", "Saturn"], negative_prompts=same_form[:3],
                    loc_prompts=[f"{r['loc']} {r['loc_ans']}" for r in train[:3]], same_form=same_form,
                    sequential_edit=True)
        edited, rephrased = greedy(["What is the capital of Australia?", "Which city is Australia's capital?"])
        assert edited.strip().startswith("Perth") and "Perth" in rephrased
        assert greedy(neighbours) == before
    finally:
        editor.method.site.replace(editor.method.layer.base)  # the model is shared with the other tests
