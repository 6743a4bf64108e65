"""The subject gate: a routed memory answers only rows that name the subject of an edit it would answer with."""

import pytest
from safetensors.torch import load_file, save_file
import torch

from wise_edit import HyperParams, LifelongEditor
from wise_edit.errors import EditStateError
from wise_edit.methods.memoir.residual_memory import ResidualMemory
from wise_edit.request import EditRequest
from wise_edit.routing import MAIN, RoutedLinear
from wise_edit.sites import resolve_site
from wise_edit.subject_gate import Filing, SubjectError, SubjectGate
from wise_edit.tokens import TokenizationError, encode_batch, subject_span

from conftest import CASE_SITE, COMMON, CASES, byte_tokenizer, routes, tiny_llama

EARLY = "model.layers[0].mlp.down_proj.weight"


class Everything:
    """A memory that sends every row to memory 0 (so only the gate decides) and adds nothing."""

    def route(self, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.zeros(keys.shape[0], dtype=torch.long, device=keys.device)

    def delta(self, keys: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        return keys.new_zeros(*keys.shape[:2], 64)  # tiny_llama's hidden size


def gated(radius: float = 0.9, memory=None):
    model, tok = tiny_llama(), byte_tokenizer()
    gate = SubjectGate(model, tok, EARLY, radius, memory or Everything())
    site = resolve_site(model, CASE_SITE)
    layer = RoutedLinear(site.linear, gate)
    site.replace(layer)
    layer.watch(model.get_decoder())
    return model, tok, gate, layer


def decide(model, tok, layer, prompts: list[str]) -> list[int]:
    batch = encode_batch(tok, prompts, [None] * len(prompts), side="left")
    with torch.no_grad():
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return layer.last_route.tolist()


def request(prompt: str, subject: str | None, case_id: int = 0) -> EditRequest:
    return EditRequest(case_id=case_id, prompt=prompt, target="x", subject=subject)


@pytest.mark.parametrize("text, subject", [("Who wrote Hamlet?", "Hamlet"), ("Hamlet: who wrote Hamlet?", "Hamlet"),
                                           ("Where is Kyoto?", "Kyoto?")])
def test_the_subject_span_covers_the_subject_tokens_of_its_last_occurrence(text, subject):
    tok = byte_tokenizer()
    start, end = subject_span(tok, text, subject, "request 0")
    ids = tok(text)["input_ids"]
    assert tok.decode(ids[start:end]) == subject and tok.decode(ids[end:]) == text[text.rfind(subject) + len(subject):]


def test_the_gate_passes_rows_naming_a_held_subject_and_blocks_the_rest():
    model, tok, gate, layer = gated()
    assert decide(model, tok, layer, ["Who wrote Hamlet?"]) == [MAIN]  # nothing held yet
    gate.hold(gate.filing(request("Who wrote Hamlet?", "Hamlet")), 0)
    # the same prompt alone and inside a padded batch, then a question of the same form about something else
    assert decide(model, tok, layer, ["Who wrote Hamlet?"]) == [0]
    assert decide(model, tok, layer, ["Who wrote Hamlet?", "Who wrote Zola's Germinal?"]) == [0, MAIN]
    assert decide(model, tok, layer, ["Where is Kyoto?"]) == [MAIN]


def test_a_row_keeps_its_route_only_for_an_edit_filed_under_that_route():
    model, tok, gate, layer = gated()
    gate.hold(gate.filing(request("Who wrote Hamlet?", "Hamlet")), 3)  # served by memory 3, not 0
    assert decide(model, tok, layer, ["Who wrote Hamlet?"]) == [MAIN]


def test_the_radius_decides_how_close_a_subject_must_be():
    model, tok, gate, layer = gated(radius=-1.0)  # every recall passes
    gate.hold(gate.filing(request("Who wrote Hamlet?", "Hamlet")), 0)
    assert decide(model, tok, layer, ["Where is Kyoto?"]) == [0]


def test_a_call_of_the_edited_layer_outside_the_decoder_is_not_answered():
    model, tok, gate, layer = gated(radius=-1.0)
    gate.hold(gate.filing(request("Who wrote Hamlet?", "Hamlet")), 0)
    with torch.no_grad():
        layer(torch.randn(1, 3, layer.base.in_features))
    assert layer.last_route.tolist() == [MAIN]


@pytest.mark.parametrize("subject, error, message", [
    (None, SubjectError, "request 7: subject_params gates on the edit's subject"),
    ("Macbeth", TokenizationError, "request 7: subject 'Macbeth' does not occur in 'Who wrote Hamlet[?]'")])
def test_an_edit_without_its_subject_in_the_prompt_is_refused(subject, error, message):
    _, _, gate, _ = gated()
    with pytest.raises(error, match=message):
        gate.filing(request("Who wrote Hamlet?", subject, case_id=7))


def test_the_state_round_trips_and_a_gateless_state_is_refused():
    model, tok, gate, layer = gated()
    gate.hold(gate.filing(request("Who wrote Hamlet?", "Hamlet")), 0)
    gate.hold(gate.filing(request("Where is Kyoto?", "Kyoto")), 0)
    state = gate.state_dict()
    fresh_model, _, fresh, fresh_layer = gated()
    fresh.load_state_dict(state)
    prompts = ["Where is Kyoto?", "Who founded Rome?", "Who wrote Hamlet?"]
    assert decide(fresh_model, tok, fresh_layer, prompts) == decide(model, tok, layer, prompts) == [0, MAIN, 0]
    with pytest.raises(EditStateError, match="subject_params: null"):
        fresh.load_state_dict({})


@pytest.mark.parametrize("case", ["WISE-Merge", "MEMOIR"])
def test_an_edit_method_with_the_gate_refuses_a_request_without_subject_before_editing(case):
    hparams = HyperParams.from_dict({**COMMON, **CASES[case], "model_name": "tiny", "subject_params": EARLY})
    editor = LifelongEditor(hparams, model=tiny_llama(), tok=byte_tokenizer())
    before = {k: v.clone() for k, v in editor.method.state_dict().items()}
    with pytest.raises(SubjectError, match="request"):
        editor.edit(prompts=["Who wrote Hamlet?"], target_new=["Zola"], sequential_edit=True)
    after = editor.method.state_dict()
    assert before.keys() == after.keys()
    for key in before:  # (MEMOIR's background is NaN until its first edit)
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0, equal_nan=True)


def test_retrieve_mode_files_each_subject_under_the_memory_that_serves_it():
    """WISE-Retrieve opens a memory per ``merge_freq`` edits: a row passes the gate only towards the memory that
    holds its subject's edit."""
    hparams = HyperParams.from_dict({**COMMON, **CASES["WISE-Retrieve"], "model_name": "tiny",
                                     "subject_params": EARLY, "subject_radius": 0.9, "protect": 10.0})
    editor = LifelongEditor(hparams, model=tiny_llama(), tok=byte_tokenizer())
    edited = ["Who wrote Hamlet?", "Where is Kyoto?", "What does Lima export?"]
    editor.edit(prompts=edited, target_new=["Zola", "Peru", "tin"], subject=["Hamlet", "Kyoto", "Lima"],
                loc_prompts=["nq question: largest ocean Pacific"] * 3, sequential_edit=True)
    assert editor.method.gate.groups.tolist() == [0, 0, 1]  # merge_freq 2: the third edit opens memory 1
    # the activation router alone scores memory 0 highest for "Lima" on this tiny model; the gate picks memory 1,
    # which holds Lima's edit, among the memories that would answer
    assert editor.method.memory.route(*_keys_and_mask(editor, edited[2:]))[0] == 0
    assert routes(editor, edited) == [0, 0, 1]
    assert routes(editor, ["Who wrote Zola's Germinal?", "nq question: largest ocean"]) == [MAIN, MAIN]
    # memory 1 is protected from its own edit only (each edit weighs 1), not from memory 0's two
    assert torch.allclose(editor.method.protection.gram.trace(), torch.tensor(1.0))


class Admits:
    """Two memories, both answering every row: the gate alone picks between them."""

    def __init__(self, admitted: list[list[bool]]):
        self.rows = torch.tensor(admitted)

    def route(self, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise AssertionError("an Admitting memory leaves the choice to the gate")

    def admitted(self, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.rows[:, :keys.shape[0]]

    def delta(self, keys: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        return keys.new_zeros(*keys.shape[:2], 64)


@pytest.mark.parametrize("admitted, expected", [([[True, True], [True, True]], [1, 0]),
                                                ([[True, True], [False, True]], [MAIN, 0]),
                                                ([[False, False], [True, True]], [1, MAIN])])
def test_the_gate_picks_the_admitted_memory_filing_the_subject_a_row_names(admitted, expected):
    model, tok, gate, layer = gated(memory=Admits(admitted))
    gate.hold(gate.filing(request("Where is Kyoto?", "Kyoto")), 0)
    gate.hold(gate.filing(request("Who wrote Hamlet?", "Hamlet")), 1)
    assert decide(model, tok, layer, ["Who wrote Hamlet?", "Where is Kyoto?"]) == expected


def _keys_and_mask(editor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The edited matrix's input keys of ``prompts`` and their mask, as the router reads them."""
    seen = {}
    hook = editor.method.layer.base.register_forward_hook(lambda m, args, out: seen.update(keys=args[0].detach()))
    batch = encode_batch(editor.tok, prompts, [None] * len(prompts), side="left")
    try:
        with torch.no_grad():
            editor.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    finally:
        hook.remove()
    return seen["keys"], batch.attention_mask


def test_memoir_passes_the_row_to_the_subjects_edit_among_all_masks_it_overlaps():
    """MEMOIR's residual memory is Admitting: every stored mask the row's mask overlaps by ``irr_threshold``
    may answer, and the gate picks the edit filing the row's subject, not the best-overlapping mask (another
    edit's, once many edits of one question form are stored; before, the gate then refused the row)."""
    shape = resolve_site(tiny_llama(), CASE_SITE).linear.weight.shape
    memory = ResidualMemory(shape, torch.device("cpu"), top_k=8, irr_threshold=0.25, seed=0)
    memory.hash.background = torch.zeros(shape[1])
    model, tok, gate, layer = gated(memory=memory)
    seen = {}
    hook = layer.base.register_forward_hook(lambda m, args, out: seen.update(keys=args[0].detach()))
    batch = encode_batch(tok, ["Who wrote Hamlet?"], [None], side="left")
    with torch.no_grad():
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    hook.remove()
    hamlet = memory.hash.masks(seen["keys"], batch.attention_mask.bool())[0]
    half = hamlet.clone()
    half[hamlet.nonzero()[:4, 0]] = False  # overlaps the row by 4 of 8 bits: admitted, not the best
    half[(~hamlet).nonzero()[:4, 0]] = True
    memory.db.add(torch.stack([half, hamlet]))
    gate.hold(gate.filing(request("Who wrote Hamlet?", "Hamlet")), 0)
    gate.hold(gate.filing(request("Where is Kyoto?", "Kyoto")), 1)
    assert memory.route(seen["keys"], batch.attention_mask.bool()).tolist() == [1]  # the best overlap: Kyoto's
    assert memory.admitted(seen["keys"], batch.attention_mask.bool())[:, 0].tolist() == [True, True]
    assert decide(model, tok, layer, ["Who wrote Hamlet?"]) == [0]
    memory.irr_threshold = 0.75  # Hamlet's edit no longer overlaps enough: nothing the row names may answer
    assert decide(model, tok, layer, ["Who wrote Hamlet?"]) == [MAIN]


ONE_SUBJECT = ["Kyoto is old.", "Kyoto is old. It has many temples."]  # the second continues the first


def _one_subject_twice(tie: float):
    model, tok, gate, layer = gated(memory=Admits([[True, True], [True, True]]))
    gate.tie = tie
    for group, prompt in enumerate(ONE_SUBJECT):
        gate.hold(gate.filing(request(prompt, "Kyoto")), group)
    return model, tok, gate, layer


def test_edits_of_one_subject_are_told_apart_by_their_whole_prompts():
    """Both prompts start with the subject, so its keys are the same in both and recall ties; the row goes to
    the edit whose prompt it agrees with both ways (the longer prompt recalls all of the shorter one's tokens)."""
    model, tok, gate, layer = _one_subject_twice(tie=0.05)
    assert decide(model, tok, layer, ONE_SUBJECT) == [0, 1]
    assert decide(model, tok, layer, ONE_SUBJECT[::-1]) == [1, 0]
    assert decide(model, tok, layer, ["Where is Paris?"]) == [MAIN]  # the tie-break never admits a row


def test_without_prompt_keys_recall_alone_decides_and_the_edit_log_restores_them():
    model, tok, gate, layer = _one_subject_twice(tie=0.05)
    state = {k: v for k, v in gate.state_dict().items() if ".prompt_keys." not in k}  # as older code saved it
    fresh_model, _, fresh, fresh_layer = gated(memory=Admits([[True, True], [True, True]]))
    fresh.tie = 0.05
    fresh.load_state_dict(state)
    assert decide(fresh_model, tok, fresh_layer, ONE_SUBJECT) == [0, 0]  # the first of the tied edits
    with pytest.raises(EditStateError, match="holds 2 edits and the edit log 1"):
        fresh.file_prompts(ONE_SUBJECT[:1])
    fresh.file_prompts(ONE_SUBJECT)
    assert decide(fresh_model, tok, fresh_layer, ONE_SUBJECT) == [0, 1]
    for key, value in gate.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=1e-6)


def test_a_saved_editor_reads_missing_prompt_keys_from_its_edit_log(tmp_path):
    hparams = HyperParams.from_dict({**COMMON, **CASES["MEMOIR"], "model_name": "tiny", "subject_params": EARLY,
                                     "subject_tie": 0.05})
    editor = LifelongEditor(hparams, model=tiny_llama(), tok=byte_tokenizer())
    editor.edit(prompts=ONE_SUBJECT, target_new=["Zola", "Peru"], subject=["Kyoto"] * 2,
                loc_prompts=["nq question: largest ocean Pacific"] * 2, sequential_edit=True)
    editor.save(tmp_path)
    state = load_file(tmp_path / "edits.safetensors")
    save_file({k: v for k, v in state.items() if ".prompt_keys." not in k}, tmp_path / "edits.safetensors")
    loaded = LifelongEditor.from_saved(tmp_path, model=tiny_llama(), tok=byte_tokenizer())
    for k, keys in enumerate(editor.method.gate.prompts):
        torch.testing.assert_close(loaded.method.gate.prompts[k], keys, rtol=0, atol=1e-6)


@pytest.mark.parametrize("tie", [-0.1, 2.5])
def test_a_tie_outside_zero_to_two_is_refused(tie):
    with pytest.raises(Exception, match="subject_tie"):
        HyperParams.from_dict({**COMMON, **CASES["MEMOIR"], "model_name": "tiny", "subject_params": EARLY,
                               "subject_tie": tie})


def test_a_rows_first_token_is_not_read():
    """On real models a text's first early key is the same for any word (an attention sink): a row whose first
    token alone resembles a held subject must not pass, the same key later in the row does."""
    _, _, gate, _ = gated(radius=0.9)
    d = gate.site.linear.weight.shape[1]
    subject = torch.zeros(1, d)
    subject[0, 0] = 1.0
    gate.hold(Filing(subject, subject.clone()), 0)
    other = torch.zeros(d)
    other[1] = 1.0
    first = torch.stack([subject[0], other, other])[None]  # (1, 3, d): the subject's key at the first token
    later = torch.stack([other, other, subject[0]])[None]
    keys, mask = torch.zeros(1, 3, 64), torch.ones(1, 3, dtype=torch.long)
    for seen, expected in ((first, MAIN), (later, 0)):
        gate._seen = seen
        assert gate.route(keys, mask).tolist() == [expected]


def test_a_subject_that_is_only_its_prompts_first_token_is_refused():
    _, _, gate, _ = gated()
    with pytest.raises(SubjectError, match="request 0: subject 'K' is only the first token of its prompt"):
        gate.filing(request("K is old.", "K"))
    assert gate.check(request("Kyoto is old.", "Kyoto")) == (1, 5)  # read from its second token on
