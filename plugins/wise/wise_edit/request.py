"""One edit request, typed: what is edited, and each text that trains or scores it, named for what it is for.

The benchmarks' loaders, :func:`wise_edit.editor.make_requests` and the EasyEdit bridge build requests; the
editor also takes EasyEdit's request dicts (``target_new``, ``rephrase_prompt``, ``locality_prompt``,
``loc_prompt``, ...) and converts them here, once, so nothing past the entry points reads a request by string.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence, Union

from .errors import RequestError


#: how a probe family is scored: ``locality`` kinds must keep the unedited model's answer tokens (as Loc),
#: ``portability`` kinds must give their answer (as port)
PROBE_FAMILIES = ("locality", "portability")


@dataclasses.dataclass(frozen=True)
class Probe:
    """One scored question of a named kind (KnowEdit's ``Relation_Specificity``, ``Reasoning``, ...)."""

    family: str
    kind: str
    question: str
    answer: str

    def __post_init__(self) -> None:
        if self.family not in PROBE_FAMILIES:
            raise RequestError(f"probe family must be one of {PROBE_FAMILIES}, got {self.family!r}")


@dataclasses.dataclass(frozen=True)
class EditRequest:
    #: the question that is edited, and its new answer
    prompt: str
    target: str
    case_id: Union[int, str, None] = None
    #: where ROME and MEMIT read the edit's key (must occur in ``prompt``)
    subject: Union[str, None] = None
    #: Gen: a rephrasing of ``prompt`` that must give ``target`` too
    rephrase: Union[str, None] = None
    #: Loc: an unrelated question whose answer must not change (scored, never trained on)
    locality_question: Union[str, None] = None
    locality_answer: Union[str, None] = None
    #: portability: a question that needs the edited fact, and its answer
    portability_question: Union[str, None] = None
    portability_answer: Union[str, None] = None
    #: training only: an unrelated text the edit is trained not to touch (EasyEdit's ``loc_prompt``)
    irrelevant_text: Union[str, None] = None
    #: training only: an unedited question of the edit's own form (``negative_prompt``)
    same_form_negative: Union[str, None] = None
    #: further probes of named kinds, each kind reported under its own name (EasyEdit's ``locality`` and
    #: ``portability`` dicts: ``{kind: {"prompt": [...], "ground_truth": [...]}}``)
    probes: tuple[Probe, ...] = ()

    def __post_init__(self) -> None:
        for name in ("prompt", "target"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise RequestError(f"request {self.case_id}: {EASYEDIT_KEYS[name]} must be a non-empty string, "
                                   f"got {value!r}")

    @property
    def has_locality_probe(self) -> bool:
        return bool(self.locality_question)

    def text(self, easyedit_key: str) -> Union[str, None]:
        """The text EasyEdit stores under ``easyedit_key`` (a configured choice of field, e.g. ``loc_prompt``)."""
        return getattr(self, FIELDS[easyedit_key])

    def replace(self, **changes: Any) -> "EditRequest":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_easyedit(cls, record: Mapping[str, Any], case_id: Union[int, str, None] = None) -> "EditRequest":
        """A request from EasyEdit's dict form; keys it does not know are ignored (framework records carry
        more, e.g. ``ground_truth``), and ``case_id`` is the record's own when it has one."""
        values = {field: record[key] for key, field in FIELDS.items() if record.get(key) is not None}
        values["probes"] = tuple(_probes_from_easyedit(record))
        values.setdefault("case_id", case_id)
        for name in ("prompt", "target"):
            values.setdefault(name, None)  # a missing one is named by __post_init__
        return cls(**values)

    def to_easyedit(self) -> dict[str, Any]:
        """EasyEdit's dict form (fields that are not set are left out)."""
        out = {EASYEDIT_KEYS[f.name]: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name in EASYEDIT_KEYS and getattr(self, f.name) is not None}
        for probe in self.probes:
            kind = out.setdefault(probe.family, {}).setdefault(probe.kind, {"prompt": [], "ground_truth": []})
            kind["prompt"].append(probe.question)
            kind["ground_truth"].append(probe.answer)
        return out


def _probes_from_easyedit(record: Mapping[str, Any]) -> list[Probe]:
    """The probes of EasyEdit's ``locality`` / ``portability`` dicts (a prompt and its answer, or lists of them)."""
    found = []
    for family in PROBE_FAMILIES:
        kinds = record.get(family)
        if not isinstance(kinds, Mapping):
            continue
        for kind, probe in kinds.items():
            if not isinstance(probe, Mapping) or probe.get("prompt") is None:
                continue
            prompts, answers = probe["prompt"], probe.get("ground_truth")
            if isinstance(prompts, str):
                prompts, answers = [prompts], [answers]
            found += [Probe(family, str(kind), q, a) for q, a in zip(prompts, answers or [])
                      if isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip()]
    return found


#: field -> EasyEdit's key, and back
EASYEDIT_KEYS = {"prompt": "prompt", "target": "target_new", "case_id": "case_id", "subject": "subject",
                 "rephrase": "rephrase_prompt", "locality_question": "locality_prompt",
                 "locality_answer": "locality_ground_truth", "portability_question": "portability_prompt",
                 "portability_answer": "portability_ground_truth", "irrelevant_text": "loc_prompt",
                 "same_form_negative": "negative_prompt"}
FIELDS = {key: field for field, key in EASYEDIT_KEYS.items()}


def as_requests(requests: Sequence[Union[EditRequest, Mapping[str, Any]]]) -> list[EditRequest]:
    """Requests as :class:`EditRequest` (EasyEdit dicts converted; a dict without ``case_id`` gets its index)."""
    return [r if isinstance(r, EditRequest) else EditRequest.from_easyedit(r, i) for i, r in enumerate(requests)]
