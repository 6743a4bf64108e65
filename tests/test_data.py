import json

import pytest
import yaml

from wise_edit.data import DataError, load_dataset, load_probes

from conftest import DATA, ROOT


def test_zsre_real_file():
    ds = load_dataset("zsre", DATA / "zsre/zsre_mend_edit.json", 5, DATA / "zsre/zsre_mend_train_1k.json")
    assert len(ds.requests) == 5 and ds.sha256.startswith("0cf155da")
    first = ds.requests[0]
    assert first.prompt == "When was the inception of IAAF Combined Events Challenge?"
    assert first.target == "2006" and first.locality_question.startswith("nq question:")
    train = json.loads((DATA / "zsre/zsre_mend_train_1k.json").read_text())
    assert first.irrelevant_text == train[0]["loc"] + " " + train[0]["loc_ans"]


def test_real_files_counts_and_field_mapping():
    zsre = load_dataset("zsre", DATA / "zsre/zsre_mend_edit.json")
    assert len(zsre.requests) == 1037 and all(r.portability_question is not None for r in zsre.requests)
    first = zsre.requests[0]
    assert first.portability_question.startswith("What type of sports event is the IAAF Combined Events Challenge")
    assert first.portability_answer == "Athletics" and first.subject == "IAAF Combined Events Challenge"
    assert first.rephrase == "When was the IAAF Combined Events Challenge launched?"
    temporal = load_dataset("temporal", DATA / "temporal/temporal-edit.json")
    assert len(temporal.requests) == 75 and temporal.requests[0].portability_question is None
    hall = load_dataset("hallucination", DATA / "hallucination/hallucination-edit.json")
    raw = json.loads((DATA / "hallucination/hallucination-edit.json").read_text())
    without = hall.extra["records_without_locality_probe"]
    assert len(hall.requests) == 600 and len(without) == 7
    assert all(not raw[i]["locality_ground_truth"].strip() and hall.requests[i].locality_question is None
               for i in without)
    assert sum(r.locality_question is not None for r in hall.requests) == 593


def test_portability_probe_is_optional_but_must_be_well_formed(tmp_path):
    records = [dict(RECORD, portability={"New Question": "p?", "New Answer": "b"}), dict(RECORD),
               dict(RECORD, portability={"New Question": "p?", "New Answer": ""})]
    ds = load_dataset("zsre", write(tmp_path, records))
    assert (ds.requests[0].portability_question, ds.requests[0].portability_answer) == ("p?", "b")
    assert ds.requests[1].portability_question is None and ds.requests[2].portability_question is None
    with pytest.raises(DataError, match=r"record 1: field 'portability' must be an object"):
        load_dataset("zsre", write(tmp_path, [dict(RECORD), dict(RECORD, portability="p?")]))


def test_temporal_and_hallucination_formats():
    temporal = load_dataset("temporal", DATA / "temporal/temporal-edit.json", 75, DATA / "temporal/temporal-train.json")
    assert temporal.format.rephrase_name == "ood" and len(temporal.requests) == 75
    assert temporal.requests[0].rephrase.startswith("Tesla, Inc., an American")
    hall = load_dataset("hallucination", DATA / "hallucination/hallucination-edit.json", 3)
    assert hall.format.rel_metric == "perplexity" and hall.requests[0].rephrase is None
    assert hall.requests[0].irrelevant_text is None


def write(tmp_path, records, name="edit.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


RECORD = {"src": "q?", "alt": "a", "rephrase": "q2?", "loc": "nq question: x", "loc_ans": "y", "subject": "s"}


def test_missing_field_names_file_record_field(tmp_path):
    bad = dict(RECORD)
    del bad["rephrase"]
    path = write(tmp_path, [RECORD, bad])
    with pytest.raises(DataError, match=r"edit.json: record 1: missing field 'rephrase'"):
        load_dataset("zsre", path)


def test_empty_target_rejected(tmp_path):
    path = write(tmp_path, [RECORD, RECORD, {**RECORD, "alt": "  "}])
    with pytest.raises(DataError, match=r"record 2: field 'alt' must be a non-empty string"):
        load_dataset("zsre", path)


def test_bad_loc_file_record(tmp_path):
    path = write(tmp_path, [RECORD, RECORD])
    loc = write(tmp_path, [RECORD, {"loc": "only"}], name="train.json")
    with pytest.raises(DataError, match=r"train.json: record 1: missing field 'loc_ans'"):
        load_dataset("zsre", path, loc_path=loc)


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ('{"a": 1}', "expected a JSON list"),
    ("[3]", "record 0: expected an object"),
])
def test_malformed_files(tmp_path, content, message):
    path = tmp_path / "edit.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_dataset("zsre", path)


def test_missing_file_ds_size_and_format(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_dataset("zsre", tmp_path / "none.json")
    path = write(tmp_path, [RECORD])
    with pytest.raises(DataError, match="ds_size=2 but the file has only 1 records"):
        load_dataset("zsre", path, 2)
    with pytest.raises(DataError, match="unknown data format 'squad'"):
        load_dataset("squad", path)


def test_empty_locality_answer_means_no_probe_and_is_listed():
    ds = load_dataset("hallucination", DATA / "hallucination/hallucination-edit.json", 100,
                      DATA / "hallucination/hallucination-train.json")
    assert ds.describe()["records_without_locality_probe"] == [86, 90]
    assert ds.requests[86].locality_question is None and ds.requests[85].locality_question is not None


def test_neighbourhood_probes_of_the_three_benchmarks():
    zsre = load_probes("zsre", DATA / "zsre" / "zsre_mend_train_1k.json", (500, 600),
                       edit_path=DATA / "zsre" / "zsre_mend_edit.json")
    assert len(zsre.prompts) == 100 and zsre.answers[0] == "University of Oslo"  # answers[0] of a list field
    temporal = load_probes("temporal", DATA / "temporal" / "temporal-train.json", (0, 75),
                           edit_path=DATA / "temporal" / "temporal-edit.json")
    # train records whose prompt the edit file also edits are no neighbours; the description names them
    left_out = temporal.description["left_out_as_edited"]
    edited = {r["prompt"] for r in json.loads((DATA / "temporal" / "temporal-edit.json").read_text())}
    train = json.loads((DATA / "temporal" / "temporal-train.json").read_text())
    assert left_out == [i for i in range(75) if train[i]["prompt"] in edited] and len(left_out) == 2
    assert len(temporal.prompts) == 73 and not edited & set(temporal.prompts)
    # the shipped Temporal probes keep off the Temporal dev stream (train records 38-74 as edits)
    shipped = yaml.safe_load((ROOT / "configs" / "data" / "temporal.yaml").read_text())["nloc_records"]
    reported = load_probes("temporal", DATA / "temporal" / "temporal-train.json", tuple(shipped),
                           edit_path=DATA / "temporal" / "temporal-edit.json")
    assert shipped[1] <= 38 and len(reported.prompts) == 36
    assert not {r["prompt"] for r in train[38:]} & set(reported.prompts)
    hallucination = load_probes("hallucination", DATA / "hallucination" / "hallucination-train.json", (0, 100))
    assert len(hallucination.prompts) == 100 and hallucination.description["sha256"]
    with pytest.raises(DataError, match=r"probe records \[300, 400\) are outside its 306 records"):
        load_probes("hallucination", DATA / "hallucination" / "hallucination-train.json", (300, 400))


def test_same_form_negatives_cycle_through_their_records():
    from wise_edit.data import add_negatives

    ds = load_dataset("zsre", DATA / "zsre/zsre_mend_edit.json", 5)
    negatives = load_probes("zsre", DATA / "zsre/zsre_mend_train_1k.json", (0, 3))
    add_negatives(ds.requests, negatives)
    train = json.loads((DATA / "zsre/zsre_mend_train_1k.json").read_text())
    assert [r.same_form_negative for r in ds.requests] == [train[i % 3]["src"] for i in range(5)]


def test_loc_offset_draws_irrelevant_texts_past_the_streams_own_records():
    train_path = DATA / "zsre/zsre_mend_train_1k.json"
    ds = load_dataset("zsre", train_path, 3, train_path, loc_offset=500)  # a dev stream from the train file
    train = json.loads(train_path.read_text())
    assert [r.irrelevant_text for r in ds.requests] == [f"{train[500 + i]['loc']} {train[500 + i]['loc_ans']}"
                                                      for i in range(3)]
    assert all(r.irrelevant_text != r.locality_question + " " + r.locality_answer for r in ds.requests)


def test_first_record_starts_the_stream_later_in_the_file_and_is_recorded():
    path = DATA / "hallucination/hallucination-train.json"
    records = json.loads(path.read_text())
    ds = load_dataset("hallucination", path, 3, path, loc_offset=200, first_record=100)
    assert [r.prompt for r in ds.requests] == [records[100 + i]["prompt"] for i in range(3)]
    assert [r.case_id for r in ds.requests] == [0, 1, 2]
    assert ds.describe()["first_record"] == 100
    assert "first_record" not in load_dataset("hallucination", path, 3).describe()
    with pytest.raises(DataError, match="hallucination-train.json: ds_size=300 from record 100 but the file has "
                                        "only 306 records"):
        load_dataset("hallucination", path, 300, first_record=100)
    with pytest.raises(DataError, match="first_record=306 but the file has 306 records"):
        load_dataset("hallucination", path, 1, first_record=306)


def test_a_record_without_subject_is_a_request_without_subject(tmp_path):
    bare = {k: v for k, v in RECORD.items() if k != "subject"}
    requests = load_dataset("zsre", write(tmp_path, [RECORD, bare])).requests
    assert [r.subject for r in requests] == ["s", None]
    with pytest.raises(DataError, match=r"record 0: field 'subject' must be a string"):
        load_dataset("zsre", write(tmp_path, [dict(RECORD, subject=3)]))


CF = DATA / "counterfact" / "counterfact-train.json"


def test_counterfact_real_file_relations_and_same_subject_probes():
    from wise_edit.data import relation_ids, relation_probes, same_subject_pairs

    first = load_dataset("counterfact", CF, 100, DATA / "counterfact" / "counterfact-val.json")
    request = first.requests[0]
    assert (request.prompt, request.target, request.subject) == ("Toko Yasuda, the", "piano", "Toko Yasuda")
    assert request.rephrase == "Toko Yasuda is incredible at" and request.locality_answer == "guitar"
    # the first 100 records ask about no subject that another record asks another relation of
    assert relation_probes("counterfact", CF, list(range(100))).prompts == []
    records = json.loads(CF.read_text())
    val = json.loads((DATA / "counterfact" / "counterfact-val.json").read_text())
    assert len(set(relation_ids(records + val, CF))) == 12
    stream = load_dataset("counterfact", CF, stream="same_subject", last_record=5000)
    edited = stream.extra["records"]
    assert len(edited) == 90 and edited == sorted(edited) and all(i < 5000 for i in edited)
    probes = relation_probes("counterfact", CF, edited)
    assert probes.description["n"] == 102
    relations = relation_ids(records, CF)
    for position, j in probes.description["edit_and_record"]:
        e = edited[position]
        assert records[j]["subject"] == records[e]["subject"] and relations[j] != relations[e] and j not in edited
    assert probes.prompts[0] == "Jack Wong Sue expired at" and probes.answers[0] == records[
        probes.description["edit_and_record"][0][1]]["ground_truth"]
    dev = load_dataset("counterfact", CF, stream="same_subject", first_record=5000)
    assert len(dev.requests) == 32 and not {records[i]["subject"] for i in dev.extra["records"]} & {
        r["subject"] for r in records[:5000]}
    assert len(same_subject_pairs("counterfact", CF, 5000)) == 33
    with pytest.raises(DataError, match="ds_size=91 but the file has only 90 same-subject edits there"):
        load_dataset("counterfact", CF, 91, stream="same_subject", last_record=5000)
    with pytest.raises(DataError, match="unknown stream 'pairs'"):
        load_dataset("counterfact", CF, 5, stream="pairs")


KNOWEDIT = ROOT / "tests" / "data" / "knowedit_sample.json"


def test_knowedit_records_keep_their_fields_and_probe_kinds():
    ds = load_dataset("knowedit", KNOWEDIT, 3, DATA / "zsre" / "zsre_mend_train_1k.json")
    arons, piesch, epaspidoceras = ds.requests
    assert (arons.prompt, arons.target, arons.subject) == ("The place of death of Leo Arons is", "Berlin", "Leo Arons")
    assert arons.rephrase is None and epaspidoceras.rephrase == "What family are Epaspidoceras?"
    assert arons.locality_question is None and arons.irrelevant_text.startswith("nq question:")
    kinds = {(p.family, p.kind): p for p in arons.probes}
    assert set(kinds) == {("portability", "Logical_Generalization"), ("portability", "Reasoning"),
                          ("portability", "Subject_Aliasing"), ("locality", "Relation_Specificity")}
    assert kinds["portability", "Logical_Generalization"].answer == "no"  # nested alias lists: the first
    assert [p.answer for p in arons.probes if p.kind == "Reasoning"] == ["Kai Wegner", "Europe"]
    assert {(p.family, p.kind, p.answer) for p in piesch.probes} >= {("locality", "Forgetfulness", "mayor of Vienna"),
                                                                      ("locality", "Relation_Specificity", "male")}


@pytest.mark.parametrize("locality, message", [
    ([1], "field 'locality' must map kinds to lists of probes"),
    ({"Relation_Specificity": {"prompt": "p"}}, r"record 0: locality.Relation_Specificity must be a list"),
    ({"Relation_Specificity": [{"prompt": "p", "ground_truth": [[3]]}]},
     r"locality.Relation_Specificity\[0\]: 'ground_truth' must be a string"),
    ({"Forgetfulness": [{"ground_truth": "a"}]}, r"Forgetfulness\[0\]: expected an object with a string 'prompt'"),
])
def test_malformed_knowedit_probes_name_record_field_and_kind(tmp_path, locality, message):
    path = tmp_path / "ke.json"
    path.write_text(json.dumps([{"prompt": "q", "target_new": "t", "locality": locality}]))
    with pytest.raises(DataError, match=message):
        load_dataset("knowedit", path, 1)
