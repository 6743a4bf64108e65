"""The fact gate: a routed memory answers only rows whose prompt agrees with the prompt of an edit it would
answer with."""

import pytest
import torch
import torch.nn.functional as F

from wise_edit import HyperParams, LifelongEditor
from wise_edit.errors import EditStateError
from wise_edit.fact_gate import FactGate, Filing, PromptKeys, agreement
from wise_edit.hparams import HyperParamsError
from wise_edit.matching import token_weights
from wise_edit.methods.memoir.residual_memory import ResidualMemory
from wise_edit.request import EditRequest
from wise_edit.routing import MAIN, RoutedLinear
from wise_edit.sites import resolve_site
from wise_edit.tokens import TokenizationError, encode_batch, subject_span

from conftest import CASE_SITE, COMMON, CASES, byte_tokenizer, routes, tiny_llama

EARLY = "model.layers[0].mlp.down_proj.weight"


class Everything:
    """A memory that sends every row to memory 0 (so only the gate decides) and adds nothing."""

    def route(self, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.zeros(keys.shape[0], dtype=torch.long, device=keys.device)

    def delta(self, keys: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        return keys.new_zeros(*keys.shape[:2], 64)  # tiny_llama's hidden size


def gated(radius: float | None = 0.9, memory=None, subject_radius: float | None = None,
          relation_radius: float | None = None):
    model, tok = tiny_llama(), byte_tokenizer()
    gate = FactGate(model, tok, EARLY, memory or Everything(), radius=radius, relation_radius=relation_radius,
                    subject_radius=subject_radius)
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


def request(prompt: str, subject: str | None = None, case_id: int = 0) -> EditRequest:
    return EditRequest(case_id=case_id, prompt=prompt, target="x", subject=subject)


@pytest.mark.parametrize("text, subject", [("Who wrote Hamlet?", "Hamlet"), ("Hamlet: who wrote Hamlet?", "Hamlet"),
                                           ("Where is Kyoto?", "Kyoto?")])
def test_the_subject_span_covers_the_subject_tokens_of_its_last_occurrence(text, subject):
    tok = byte_tokenizer()
    start, end = subject_span(tok, text, subject, "request 0")
    ids = tok(text)["input_ids"]
    assert tok.decode(ids[start:end]) == subject and tok.decode(ids[end:]) == text[text.rfind(subject) + len(subject):]


def test_the_gate_passes_the_edited_prompt_and_blocks_other_questions():
    model, tok, gate, layer = gated()
    assert decide(model, tok, layer, ["Who wrote Hamlet?"]) == [MAIN]  # nothing held yet
    gate.hold(gate.filing(request("Who wrote Hamlet?")), 0)  # no subject needed
    assert decide(model, tok, layer, ["Who wrote Hamlet?"]) == [0]
    assert decide(model, tok, layer, ["Who wrote Hamlet?", "Who wrote Zola's Germinal?"]) == [0, MAIN]
    assert decide(model, tok, layer, ["Where is Kyoto?"]) == [MAIN]


def test_a_row_keeps_its_route_only_for_an_edit_filed_under_that_route():
    model, tok, gate, layer = gated()
    gate.hold(gate.filing(request("Who wrote Hamlet?")), 3)  # served by memory 3, not 0
    assert decide(model, tok, layer, ["Who wrote Hamlet?"]) == [MAIN]


def test_the_radius_decides_how_close_a_prompt_must_be_and_an_uncalibrated_gate_answers_nothing():
    model, tok, gate, layer = gated(radius=-1.0)  # every agreement passes
    gate.hold(gate.filing(request("Who wrote Hamlet?")), 0)
    assert decide(model, tok, layer, ["Where is Kyoto?"]) == [0]
    gate.radius = None
    assert decide(model, tok, layer, ["Who wrote Hamlet?"]) == [MAIN]


def test_a_given_subject_must_also_be_recalled_when_the_gate_reads_subjects():
    model, tok, gate, layer = gated(radius=-1.0, subject_radius=0.95)
    gate.hold(gate.filing(request("Who wrote Hamlet?", "Hamlet")), 0)
    assert gate.filed[0].subject.shape[0] == len("Hamlet")  # byte tokens
    assert decide(model, tok, layer, ["Who wrote Hamlet?", "Where is Kyoto?"]) == [0, MAIN]


def test_the_vectorised_agreements_equal_their_definition():
    torch.manual_seed(0)
    held = [torch.randn(n, 8) for n in (3, 5, 1)]
    held_weights = [torch.rand(n) for n in (3, 5, 1)]
    index = PromptKeys(8, torch.device("cpu"))
    for keys, w in zip(held, held_weights):
        index.add(keys, w)
    query = torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    plain, weighted = index.agreement(query, mask)
    for b in range(2):
        q = F.normalize(query[b, mask[b]], dim=-1)
        for e, (keys, we) in enumerate(zip(held, held_weights)):
            cos = q @ F.normalize(keys, dim=-1).T
            expected = min(cos.amax(0).mean(), cos.amax(1).mean())
            expected_weighted = (cos.amax(0) * we).sum() / we.sum()  # the held text's tokens recalled by the row
            assert plain[b, e].item() == pytest.approx(expected.item(), abs=1e-6)
            assert weighted[b, e].item() == pytest.approx(expected_weighted.item(), abs=1e-6)
            assert agreement(query[b, mask[b]], keys) == pytest.approx(expected.item(), abs=1e-6)


def test_calibration_puts_each_radius_at_its_quantile_and_needs_dev_questions():
    _, _, gate, _ = gated(radius=None)
    questions = ["Who wrote Hamlet?", "Who wrote Faust?", "Where is Kyoto?", "Where is Lima?", "Who built Rome?",
                 "Who sang Nessun?", "Who wrote Ulysses?", "Where is Oslo?"]
    pairs = [("Who wrote Hamlet?", "Where is Hamlet?"), ("Who built Rome?", "Where is Rome?")]
    calibration = gate.calibrate(questions, pairs, [1.0, 1.0])
    keys = {q: gate.prompt_keys(q)[1:] for q in questions + [b for _, b in pairs]}
    pool = torch.nn.functional.normalize(torch.cat([keys[q] for q in questions[:4]]), dim=-1)
    torch.testing.assert_close(gate.pool, pool)
    held = PromptKeys(pool.shape[1], pool.device)
    for q in questions[4:6]:
        held.add(keys[q], token_weights(keys[q], pool))
    best = max(float(held.agreement(keys[q][None], torch.ones(1, len(keys[q]), dtype=torch.bool))[1].amax())
               for q in questions[6:])
    assert calibration.n_pool == 4 and calibration.n_same_form == 2 and calibration.n_same_subject == 2
    assert gate.radius == pytest.approx(best + 1e-4, abs=1e-5)
    assert gate.relation_radius == pytest.approx(max(agreement(keys[a], keys[b]) for a, b in pairs) + 1e-4,
                                                 abs=1e-5)
    with pytest.raises(ValueError, match="3 were given"):
        gate.calibrate(questions[:3], [], [0.99, 0.9])


def test_the_relation_radius_keeps_out_a_question_sharing_only_part_of_the_prompt():
    model, tok, gate, layer = gated(radius=-1.0, relation_radius=0.99)
    gate.hold(gate.filing(request("Who wrote Hamlet?")), 0)
    assert decide(model, tok, layer, ["Who wrote Hamlet?", "Who wrote Hamlet and where?"]) == [0, MAIN]


def test_a_call_of_the_edited_layer_outside_the_decoder_is_not_answered():
    model, tok, gate, layer = gated(radius=-1.0)
    gate.hold(gate.filing(request("Who wrote Hamlet?")), 0)
    with torch.no_grad():
        layer(torch.randn(1, 3, layer.base.in_features))
    assert layer.last_route.tolist() == [MAIN]


def test_a_subject_not_in_its_prompt_is_refused_and_a_first_token_subject_is_gated_on_the_prompt():
    _, _, gate, _ = gated(subject_radius=0.5)
    with pytest.raises(TokenizationError, match="request 7: subject 'Macbeth' does not occur in 'Who wrote Hamlet[?]'"):
        gate.filing(request("Who wrote Hamlet?", "Macbeth", case_id=7))
    filing = gate.filing(request("K is old.", "K"))  # the subject is only the (unread) first token
    assert filing.subject.shape[0] == 0 and filing.prompt.shape[0] == len("K is old.") - 1
    assert gate.subject_tokens(request("Kyoto is old.", "Kyoto")) == (1, 5)  # read from its second token on


def test_the_state_round_trips_with_its_radii_and_a_gateless_state_is_refused():
    model, tok, gate, layer = gated(radius=0.8, relation_radius=0.1)
    gate.hold(gate.filing(request("Who wrote Hamlet?")), 0)
    gate.hold(gate.filing(request("Where is Kyoto?", "Kyoto")), 0)
    state = gate.state_dict()
    fresh_model, _, fresh, fresh_layer = gated(radius=None)
    fresh.load_state_dict(state)
    assert (fresh.radius, fresh.relation_radius) == pytest.approx((0.8, 0.1))
    prompts = ["Where is Kyoto?", "Who founded Rome?", "Who wrote Hamlet?"]
    assert decide(fresh_model, tok, fresh_layer, prompts) == decide(model, tok, layer, prompts) == [0, MAIN, 0]
    with pytest.raises(EditStateError, match="gate_params: null"):
        fresh.load_state_dict({})


@pytest.mark.parametrize("case", ["WISE-Merge", "MEMOIR"])
def test_an_edit_method_with_the_gate_edits_a_request_without_subject(case):
    hparams = HyperParams.from_dict({**COMMON, **CASES[case], "model_name": "tiny", "gate_params": EARLY})
    editor = LifelongEditor(hparams, model=tiny_llama(), tok=byte_tokenizer())
    editor.edit(prompts=["Who wrote Hamlet?"], target_new=["Zola"], negative_prompts=["Where is Kyoto?"],
                loc_prompts=["nq question: largest ocean Pacific"], sequential_edit=True,
                same_form=["Who wrote Faust?", "Where is Lima?", "Who built Rome?", "Who sang Nessun?"])
    gate = editor.method.gate
    assert len(gate.filed) == 1 and gate.filed[0].subject.shape[0] == 0  # nothing to read a subject from
    assert gate.calibration is not None and gate.calibration.n_pool == 2 and gate.radius < 1.0
    # the pool stays the calibration's (the edit's own preparation must not replace it with the stream's texts)
    pool = torch.cat([gate.prompt_keys(text)[1:] for text in ["Who wrote Faust?", "Where is Lima?"]])
    torch.testing.assert_close(gate.pool, F.normalize(pool, dim=-1))
    assert routes(editor, ["Who wrote Hamlet?"]) != [MAIN]


def test_retrieve_mode_files_each_edit_under_the_memory_that_serves_it():
    """WISE-Retrieve opens a memory per ``merge_freq`` edits: a row passes the gate only towards the memory that
    holds its edit."""
    hparams = HyperParams.from_dict({**COMMON, **CASES["WISE-Retrieve"], "model_name": "tiny",
                                     "gate_params": EARLY, "fact_radius": 0.9, "protect": 10.0})
    editor = LifelongEditor(hparams, model=tiny_llama(), tok=byte_tokenizer())
    edited = ["Who wrote Hamlet?", "Where is Kyoto?", "What does Lima export?"]
    editor.edit(prompts=edited, target_new=["Zola", "Peru", "tin"],
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
def test_the_gate_picks_the_admitted_memory_filing_the_edit_a_row_asks(admitted, expected):
    model, tok, gate, layer = gated(memory=Admits(admitted))
    gate.hold(gate.filing(request("Where is Kyoto?")), 0)
    gate.hold(gate.filing(request("Who wrote Hamlet?")), 1)
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


def test_memoir_passes_the_row_to_its_edit_among_all_masks_it_overlaps():
    """MEMOIR's residual memory is Admitting: every stored mask the row's mask overlaps by ``irr_threshold``
    may answer, and the gate picks the edit whose prompt the row agrees with, not the best-overlapping mask."""
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
    gate.hold(gate.filing(request("Who wrote Hamlet?")), 0)
    gate.hold(gate.filing(request("Where is Kyoto?")), 1)
    assert memory.route(seen["keys"], batch.attention_mask.bool()).tolist() == [1]  # the best overlap: Kyoto's
    assert memory.admitted(seen["keys"], batch.attention_mask.bool())[:, 0].tolist() == [True, True]
    assert decide(model, tok, layer, ["Who wrote Hamlet?"]) == [0]
    memory.irr_threshold = 0.75  # Hamlet's edit no longer overlaps enough: nothing the row asks may answer
    assert decide(model, tok, layer, ["Who wrote Hamlet?"]) == [MAIN]


def test_edits_of_one_subject_are_told_apart_by_their_whole_prompts():
    """Both prompts start with the subject; the row goes to the edit whose prompt it agrees with both ways."""
    one_subject = ["Kyoto is old.", "Kyoto is old. It has many temples."]  # the second continues the first
    model, tok, gate, layer = gated(radius=0.5, memory=Admits([[True, True], [True, True]]))
    for group, prompt in enumerate(one_subject):
        gate.hold(gate.filing(request(prompt, "Kyoto")), group)
    assert decide(model, tok, layer, one_subject) == [0, 1]
    assert decide(model, tok, layer, one_subject[::-1]) == [1, 0]


@pytest.mark.parametrize("key, value, message", [("fact_radius", 1.5, "'fact_radius' is a cosine"),
                                                 ("subject_radius", -2.0, "'subject_radius' is a cosine"),
                                                 ("gate_quantiles", [0.9], "'gate_quantiles' is two quantiles"),
                                                 ("gate_quantiles", [0.9, 1.2], "'gate_quantiles' is two quantiles")])
def test_bad_gate_keys_are_refused_by_name(key, value, message):
    with pytest.raises(HyperParamsError, match=message):
        HyperParams.from_dict({**COMMON, **CASES["MEMOIR"], "model_name": "tiny", "gate_params": EARLY, key: value})


def test_a_rows_first_token_is_not_read():
    """On real models a text's first early key is the same for any word (an attention sink): a row whose first
    token alone resembles a held prompt must not pass, the same key later in the row does."""
    _, _, gate, _ = gated(radius=0.9)
    d = gate.site.linear.weight.shape[1]
    held = torch.zeros(1, d)
    held[0, 0] = 1.0
    gate.hold(Filing(held, held[:0].clone()), 0)
    other = torch.zeros(d)
    other[1] = 1.0
    first = torch.stack([held[0], other, other])[None]  # (1, 3, d): the held key at the first token
    later = torch.stack([other, held[0], held[0]])[None]
    keys, mask = torch.zeros(1, 3, 64), torch.ones(1, 3, dtype=torch.long)
    for seen, expected in ((first, MAIN), (later, 0)):
        gate._seen = seen
        assert gate.route(keys, mask).tolist() == [expected]
