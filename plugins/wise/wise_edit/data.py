"""Loaders for the lifelong-editing benchmarks (ZsRE, CounterFact, Temporal, Hallucination, KnowEdit) as
:class:`EditRequest` streams, reading each benchmark's records with EasyEdit's field names.

Each request gets its prompt, target, subject, locality probe, an irrelevant training text drawn from another
file (``irrelevant_text``), optionally a same-form negative (:func:`add_negatives`) and, where the benchmark
has them, a rephrasing and a portability probe (ZsRE). Bad records raise :class:`DataError` naming the file,
the record and the field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .request import EditRequest, Probe


class DataError(ValueError):
    """A data file or record is malformed."""


@dataclass(frozen=True)
class DataFormat:
    """How one benchmark's records map onto request keys, and how it is scored."""

    fields: dict[str, str]  # EditRequest field -> record field
    loc_fields: tuple[str, str]  # train-file fields joined into a loc_prompt
    rel_metric: str = "accuracy"  # or "perplexity"
    rephrase_name: str = "gen"  # summary name of the rephrase metric ("ood" for Temporal)
    #: neighbourhood probes (nloc): unedited questions of the edits' form, (question field, answer field) of the
    #: train file's records; a list-valued answer field gives its first entry
    probe_fields: tuple[str, str] = ("prompt", "target_new")
    #: request fields whose record field must exist but may be empty (the published Hallucination set has empty
    #: locality answers: such a request has no locality probe, and the dataset lists it)
    may_be_empty: tuple[str, ...] = ("locality_answer",)
    #: (record field, question key, answer key) of a portability probe (``summary.port``); a record without the
    #: field, or with an empty question or answer, has none
    portability: tuple[str, str, str] | None = None
    #: request fields a record may lack (EasyEdit's own records carry no subject)
    optional: tuple[str, ...] = ("subject",)
    #: record fields holding KnowEdit's probe lists, ``{kind: [{"prompt", "ground_truth"}, ...]}``; the field's
    #: name is the probes' family (``locality`` or ``portability``), each kind is reported under its own name
    probe_families: tuple[str, ...] = ()


FORMATS: dict[str, DataFormat] = {
    "zsre": DataFormat(
        fields={
            "prompt": "src",
            "target": "alt",
            "rephrase": "rephrase",
            "locality_question": "loc",
            "locality_answer": "loc_ans",
            "subject": "subject",
        },
        loc_fields=("loc", "loc_ans"),
        probe_fields=("src", "answers"),
        portability=("portability", "New Question", "New Answer"),
    ),
    "counterfact": DataFormat(
        fields={
            "prompt": "prompt",
            "target": "target_new",
            "rephrase": "rephrase_prompt",
            "locality_question": "locality_prompt",
            "locality_answer": "locality_ground_truth",
            "subject": "subject",
        },
        loc_fields=("locality_prompt", "locality_ground_truth"),
        probe_fields=("prompt", "ground_truth"),
    ),
    "temporal": DataFormat(
        fields={
            "prompt": "prompt",
            "target": "target_new",
            "rephrase": "ood_rephrase",
            "locality_question": "locality_prompt",
            "locality_answer": "locality_ground_truth",
            "subject": "subject",
        },
        loc_fields=("locality_prompt", "locality_ground_truth"),
        rephrase_name="ood",
    ),
    # KnowEdit (wiki_counterfact, wiki_recent, ZsRE, WikiBio as EasyEdit's KnowEditDataset reads them): no
    # locality question of its own; Loc and port are the means over a record's kinds, as EasyEdit reports them.
    # Irrelevant training texts come from a ZsRE train file (the data group's loc_path).
    "knowedit": DataFormat(
        fields={"prompt": "prompt", "target": "target_new", "subject": "subject", "rephrase": "rephrase_prompt"},
        loc_fields=("loc", "loc_ans"),
        probe_fields=("prompt", "ground_truth"),
        optional=("subject", "rephrase"),
        probe_families=("locality", "portability"),
    ),
    "hallucination": DataFormat(
        fields={
            "prompt": "prompt",
            "target": "target_new",
            "locality_question": "locality_prompt",
            "locality_answer": "locality_ground_truth",
            "subject": "subject",
        },
        loc_fields=("locality_prompt", "locality_ground_truth"),
        rel_metric="perplexity",
    ),
}


@dataclass
class EditDataset:
    name: str
    path: str
    sha256: str
    requests: list[EditRequest]
    format: DataFormat
    loc_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """What a results file records about the data."""
        return {"name": self.name, "path": self.path, "sha256": self.sha256, "ds_size": len(self.requests),
                "loc_path": self.loc_path, **self.extra}


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_records(path: Path) -> list[Any]:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    return records


def _text(record: Any, index: int, name: str, path: Path, may_be_empty: bool = False) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{path}: record {index}: expected an object, got {type(record).__name__}")
    if name not in record:
        raise DataError(f"{path}: record {index}: missing field {name!r}")
    value = record[name]
    if not isinstance(value, str):
        raise DataError(f"{path}: record {index}: field {name!r} must be a string, got {value!r}")
    if not value.strip() and not may_be_empty:
        raise DataError(f"{path}: record {index}: field {name!r} must be a non-empty string, got {value!r}")
    return value


def load_dataset(
    name: str, path: str | Path, ds_size: int | None = None, loc_path: str | Path | None = None, loc_offset: int = 0,
    first_record: int = 0, stream: str = "first", last_record: int | None = None,
) -> EditDataset:
    """``ds_size`` records of ``path`` from record ``first_record`` on as requests, ``loc_prompt`` drawn from
    ``loc_path`` in order from record ``loc_offset`` on (a dev stream drawn from the train file sets it past its
    own records, so its irrelevant training texts are not its own locality probes; ``first_record`` keeps a dev
    stream off records that are another run's probes).

    ``stream="same_subject"`` (a format with relations, :func:`relation_ids`) edits instead, in file order, the
    first record of each subject that first occurs in ``[first_record, last_record)`` and has a record asking
    another relation: a stream every edit of which has same-subject probes (:func:`relation_probes`)."""
    if name not in FORMATS:
        raise DataError(f"unknown data format {name!r}; known: {sorted(FORMATS)}")
    fmt = FORMATS[name]
    path = Path(path)
    all_records = _read_records(path)
    if not 0 <= first_record < len(all_records):
        raise DataError(f"{path}: first_record={first_record} but the file has {len(all_records)} records")
    if ds_size is not None and ds_size < 1:
        raise DataError(f"ds_size must be >= 1, got {ds_size}")
    if stream == "first":
        chosen = list(range(first_record, len(all_records)))
    elif stream == "same_subject":
        chosen = same_subject_stream(all_records, path, first_record, last_record)
    else:
        raise DataError(f"unknown stream {stream!r}; known: 'first', 'same_subject'")
    if ds_size is not None and ds_size > len(chosen):
        start = f" from record {first_record}" if first_record else ""
        has = f"{len(all_records)} records" if stream == "first" else f"{len(chosen)} same-subject edits there"
        raise DataError(f"{path}: ds_size={ds_size}{start} but the file has only {has}")
    chosen = chosen[:ds_size]
    records = [all_records[i] for i in chosen]
    loc_prompts: list[str] = []
    if loc_path is not None:
        loc_path = Path(loc_path)
        loc_records = _read_records(loc_path)
        if not loc_records:
            raise DataError(f"{loc_path}: no records to draw loc_prompts from")
        for i in range(len(records)):
            j = (loc_offset + i) % len(loc_records)
            text, answer = _text(loc_records[j], j, fmt.loc_fields[0], loc_path), _text(
                loc_records[j], j, fmt.loc_fields[1], loc_path, may_be_empty=True)
            loc_prompts.append(f"{text} {answer}".strip())
    requests, no_locality = [], []
    for i, (index, record) in enumerate(zip(chosen, records)):
        values: dict[str, Any] = {"case_id": i}
        for key, source in fmt.fields.items():
            if key in fmt.optional and isinstance(record, dict) and source not in record:
                continue
            values[key] = _text(record, index, source, path, may_be_empty=key in fmt.may_be_empty)
        if "locality_answer" in values and not values["locality_answer"].strip():
            del values["locality_question"], values["locality_answer"]
            no_locality.append(index)
        values["irrelevant_text"] = loc_prompts[i] if loc_prompts else None
        if fmt.portability is not None:
            values.update(_portability(record, index, fmt.portability, path))
        if fmt.probe_families:
            values["probes"] = tuple(_knowedit_probes(record, index, fmt.probe_families, path))
        requests.append(EditRequest(**values))
    extra: dict[str, Any] = {"first_record": first_record} if first_record else {}
    if stream != "first":
        extra.update(stream=stream, records=chosen, last_record=last_record)
    if no_locality:
        extra["records_without_locality_probe"] = no_locality
    return EditDataset(name=name, path=str(path), sha256=sha256_file(path), requests=requests, format=fmt,
                       loc_path=str(loc_path) if loc_path is not None else None, extra=extra)


def _portability(record: dict[str, Any], index: int, spec: tuple[str, str, str], path: Path) -> dict[str, str]:
    field_name, question_key, answer_key = spec
    probe = record.get(field_name)
    if probe is None:
        return {}
    if not isinstance(probe, dict):
        raise DataError(f"{path}: record {index}: field {field_name!r} must be an object with "
                        f"{question_key!r} and {answer_key!r}, got {type(probe).__name__}")
    question, answer = probe.get(question_key), probe.get(answer_key)
    if not (isinstance(question, str) and question.strip() and isinstance(answer, str) and answer.strip()):
        return {}
    return {"portability_question": question, "portability_answer": answer}


def _knowedit_probes(record: dict[str, Any], index: int, families: tuple[str, ...], path: Path) -> list[Probe]:
    """KnowEdit's probes of one record. An answer may be a string or (nested) lists of aliases: the first one is
    scored, as EasyEdit's KnowEdit script does; a probe with an empty answer is left out, as there."""
    found = []
    for family in families:
        kinds = record.get(family)
        if kinds is None:
            continue
        if not isinstance(kinds, dict):
            raise DataError(f"{path}: record {index}: field {family!r} must map kinds to lists of probes, "
                            f"got {type(kinds).__name__}")
        for kind, probes in kinds.items():
            where = f"{path}: record {index}: {family}.{kind}"
            if not isinstance(probes, list):
                raise DataError(f"{where} must be a list of {{prompt, ground_truth}}, got {type(probes).__name__}")
            for k, probe in enumerate(probes):
                if not isinstance(probe, dict) or not isinstance(probe.get("prompt"), str):
                    raise DataError(f"{where}[{k}]: expected an object with a string 'prompt', got {probe!r}")
                answer = probe.get("ground_truth")
                while isinstance(answer, list) and answer:
                    answer = answer[0]
                if not isinstance(answer, str):
                    raise DataError(f"{where}[{k}]: 'ground_truth' must be a string or lists of strings, "
                                    f"got {probe.get('ground_truth')!r}")
                if answer.strip() and probe["prompt"].strip():
                    found.append(Probe(family, kind, probe["prompt"], answer))
    return found


def relation_ids(records: list[Any], path: Path) -> list[int]:
    """One relation id per CounterFact-format record, inferred from its texts (the file has no relation field).

    A record's prompt and its rephrasing ask one relation of one subject, so their templates (the subject
    replaced by a placeholder, a leading context sentence dropped) belong to one relation: templates linked that
    way, over the whole file, form the relations. CounterFact's 10000 train + 1919 val records give 12 groups
    (a group may join relations whose templates are shared, e.g. country-valued ones: two records of different
    groups surely ask different relations)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    templates = []
    for i, record in enumerate(records):
        subject = _text(record, i, "subject", path)
        pair = [_template(_text(record, i, key, path), subject) for key in ("prompt", "rephrase_prompt")]
        if pair[0] is None:
            raise DataError(f"{path}: record {i}: subject {subject!r} does not occur in its prompt")
        parent[find(pair[0])] = find(pair[1] or pair[0])
        templates.append(pair[0])
    roots: dict[str, int] = {}
    return [roots.setdefault(find(t), len(roots)) for t in templates]


def _template(text: str, subject: str) -> str | None:
    if subject not in text:
        return None
    text = text.replace(subject, "{}", 1)
    head = text[:text.index("{}")]
    cut = max(head.rfind(". "), head.rfind("\n"), head.rfind("? "), head.rfind("! "))
    return text[cut + 1:].strip()


def same_subject_stream(records: list[Any], path: Path, start: int, stop: int | None) -> list[int]:
    """Indices of the first record of each subject first seen in ``[start, stop)`` that has a record asking
    another relation, in file order."""
    relations = relation_ids(records, path)
    first: dict[str, int] = {}
    kinds: dict[str, set[int]] = {}
    for i, record in enumerate(records):
        first.setdefault(record["subject"], i)
        kinds.setdefault(record["subject"], set()).add(relations[i])
    stop = len(records) if stop is None else stop
    return [i for subject, i in first.items() if start <= i < stop and len(kinds[subject]) > 1]


def relation_probes(name: str, path: str | Path, edited: list[int]) -> ProbeSet:
    """Same-subject locality probes (rloc): every record of ``path`` that is not edited, has the subject of an
    edited record (``edited``: record indices) and asks another relation; question and answer by the format's
    ``probe_fields`` (CounterFact: the prompt and its true answer)."""
    path = Path(path)
    records = _read_records(path)
    relations = relation_ids(records, path)
    question, answer = FORMATS[name].probe_fields
    by_subject: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_subject.setdefault(record["subject"], []).append(i)
    edited_set = set(edited)
    prompts, answers, owners = [], [], []
    for position, e in enumerate(edited):
        for j in by_subject[records[e]["subject"]]:
            if j not in edited_set and relations[j] != relations[e]:
                prompts.append(_text(records[j], j, question, path))
                answers.append(_text(records[j], j, answer, path))
                owners.append([position, j])
    return ProbeSet(prompts, answers, {"path": str(path), "sha256": sha256_file(path), "fields": [question, answer],
                                       "n": len(prompts), "edit_and_record": owners})


def same_subject_pairs(name: str, path: str | Path, start: int, stop: int | None = None) -> list[tuple[str, str]]:
    """Dev pairs for calibration: for each subject first seen in ``[start, stop)`` of ``path``, its first record's
    question with each of its records asking another relation."""
    path = Path(path)
    records = _read_records(path)
    relations = relation_ids(records, path)
    question = FORMATS[name].probe_fields[0]
    pairs = []
    for e in same_subject_stream(records, path, start, stop):
        for j, record in enumerate(records):
            if j != e and record["subject"] == records[e]["subject"] and relations[j] != relations[e]:
                pairs.append((_text(records[e], e, question, path), _text(record, j, question, path)))
    return pairs


@dataclass
class ProbeSet:
    """Neighbourhood probes: questions of the same form as the edits, never edited, scored like Loc (nloc)."""

    prompts: list[str]
    answers: list[str]
    description: dict[str, Any]


def load_probes(name: str, path: str | Path, records: tuple[int, int], edit_path: str | Path | None = None
                ) -> ProbeSet:
    """Records ``records[0]`` to ``records[1] - 1`` of ``path`` as probes (the format's ``probe_fields``).

    A record whose question is also a question of the edit file (``edit_path``) is left out, so the set is
    the same whatever T; which records were left out is recorded.
    """
    if name not in FORMATS:
        raise DataError(f"unknown data format {name!r}; known: {sorted(FORMATS)}")
    question, answer = FORMATS[name].probe_fields
    path = Path(path)
    all_records = _read_records(path)
    start, stop = records
    if not 0 <= start < stop <= len(all_records):
        raise DataError(f"{path}: neighbourhood probe records [{start}, {stop}) are outside its "
                        f"{len(all_records)} records")
    edited: set[str] = set()
    if edit_path is not None:
        edit_field = FORMATS[name].fields["prompt"]
        edited = {r.get(edit_field) for r in _read_records(Path(edit_path)) if isinstance(r, dict)}
    prompts, answers, skipped = [], [], []
    for i in range(start, stop):
        record = all_records[i]
        text = _text(record, i, question, path)
        value = record.get(answer) if isinstance(record, dict) else None
        if isinstance(value, list):
            if not value:
                raise DataError(f"{path}: record {i}: field {answer!r} is an empty list")
            value = value[0]
        if text in edited:
            skipped.append(i)
            continue
        prompts.append(text)
        answers.append(_text({answer: value}, i, answer, path))
    return ProbeSet(prompts, answers, {"path": str(path), "sha256": sha256_file(path), "records": [start, stop],
                                       "fields": [question, answer], "n": len(prompts),
                                       "left_out_as_edited": skipped})


def load_same_form(name: str, path: str | Path, records: tuple[int, int], data_path: str | Path) -> ProbeSet:
    """Probes from ``path`` for a stream edited from ``data_path``: questions the edit file also asks are left
    out, unless the probes come from the edit file itself (a dev stream, whose ranges the caller keeps apart)."""
    same_file = Path(path).resolve() == Path(data_path).resolve()
    return load_probes(name, path, records, edit_path=None if same_file else data_path)


def add_negatives(requests: list[EditRequest], negatives: ProbeSet) -> None:
    """Give request ``i`` (in place in the list) the same-form question ``negatives.prompts[i % n]`` as its
    ``same_form_negative``: an unedited question of the edits' form that training-time regularisers may push
    away from the edit."""
    if not negatives.prompts:
        raise DataError(f"{negatives.description['path']}: no same-form questions to use as negatives")
    for i, request in enumerate(requests):
        requests[i] = request.replace(same_form_negative=negatives.prompts[i % len(negatives.prompts)])


@dataclass
class RunData:
    """The requests (with their negatives) and neighbourhood probes a results file was made from."""

    dataset: EditDataset
    negatives: ProbeSet | None
    probes: ProbeSet | None


def run_data(payload: dict[str, Any], ds_size: int | None = None) -> RunData:
    """Rebuild the first ``ds_size`` (default: all) requests of the run that wrote ``payload`` (a results.json),
    its same-form negatives and its neighbourhood probes; every file must still hash as recorded."""
    data, cfg = payload["data"], payload["config"]["run"]["data"]
    for what, record in [("data", data), *[(k, data[k]) for k in ("negatives", "nloc_probes") if k in data]]:
        if sha256_file(record["path"]) != record["sha256"]:
            raise DataError(f"{record['path']}: changed since the run ({what} sha256 differs)")
    dataset = load_dataset(data["name"], data["path"], ds_size or data["ds_size"], data.get("loc_path"),
                           cfg.get("loc_offset", 0), data.get("first_record", 0), cfg.get("stream", "first"),
                           cfg.get("last_record"))
    if data.get("subjects") is False:
        dataset.requests[:] = [r.replace(subject=None) for r in dataset.requests]

    def same_form(record: dict[str, Any]) -> ProbeSet:
        return load_same_form(data["name"], record["path"], tuple(record["records"]), data["path"])

    negatives = same_form(data["negatives"]) if "negatives" in data else None
    if negatives is not None:
        add_negatives(dataset.requests, negatives)
    probes = same_form(data["nloc_probes"]) if "nloc_probes" in data else None
    return RunData(dataset, negatives, probes)

