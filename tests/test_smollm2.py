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


#: unedited questions of the test edits' forms (its dev data: the pool and the same-form calibration) and pairs
#: of questions about one country asking different relations (the same-subject calibration)
COUNTRIES = ["Germany", "Japan", "Italy", "Brazil", "Canada", "Egypt", "India", "Spain", "Mexico", "Kenya", "Norway",
             "Chile", "Greece", "Peru", "Poland", "Turkey"]
FORMS = ["What is the capital of {}?", "What currency does {} use?", "What language is spoken in {}?",
         "Who wrote the novel {}?", "Which planet is the {}?"]


@pytest.mark.parametrize("alg, subjects", [("WISE", True), ("WISE", False), ("MEMOIR", True), ("MEMOIR", False)])
def test_an_edit_answers_its_fact_and_leaves_the_subjects_other_facts_and_its_neighbours(smol, tmp_path, monkeypatch,
                                                                                      alg, subjects):
    """The shipped file: an edited capital changes and so does its rephrasing; the capital of France, and the
    currency and language of the edited country, do not (the fact gate), with or without subjects given."""
    import torch

    from conftest import ROOT
    from wise_edit import HyperParams, LifelongEditor

    monkeypatch.setenv("WISE_EDIT_CACHE", str(tmp_path))  # background keys of this test only
    model, tok = smol
    hparams = HyperParams.from_hparams(ROOT / "hparams" / alg / "smollm2-135m.yaml")
    editor = LifelongEditor(hparams, model=model, tok=tok)
    untouched = ["What is the capital of France?", "What currency does Australia use?",
                 "What language is spoken in Australia?"]

    def greedy(prompts: list[str]) -> list[str]:
        answers = []
        for prompt in prompts:
            ids = tok(prompt, return_tensors="pt")
            with torch.no_grad():
                out = editor.model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
            answers.append(tok.decode(out[0, ids.input_ids.shape[1]:]))
        return answers

    before = greedy(untouched)
    same_form = [form.format(country) for country in COUNTRIES for form in FORMS[:3]]
    same_subject = [(FORMS[0].format(c), FORMS[1 + i % 2].format(c)) for i, c in enumerate(COUNTRIES)]
    try:
        editor.edit(prompts=["What is the capital of Australia?", "Who wrote the novel Hamlet?",
                             "Which planet is the largest?"],
                    target_new=["Perth", "Jane Austen", "Saturn"],
                    subject=["Australia", "Hamlet", "planet"] if subjects else None,
                    loc_prompts=["nq question: who sang hey jude The Beatles"] * 3, same_form=same_form,
                    same_subject=same_subject, sequential_edit=True)
        edited, rephrased = greedy(["What is the capital of Australia?", "Which city is Australia's capital?"])
        assert edited.strip().startswith("Perth") and "Perth" in rephrased
        assert greedy(untouched) == before
    finally:
        editor.method.site.replace(editor.method.layer.base)  # the model is shared with the other tests
