"""The lifelong editor: applies a stream of edits with a registered method and scores them (the README's
"Evaluation protocol").

It knows no method by name: ``alg_name`` is looked up in :mod:`wise_edit.registry`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .version import __version__
from .chat import chat_prompts, chat_requests
from .evaluation import by_block, summarize
from .hparams import HyperParams
from .metrics import (answers_match, generate_answers, generation_cap, generation_exact_match, locality,
                      score_answers)
from .models import load_model, load_tokenizer
from .errors import EditStateError, NonFiniteError, RequestError
from .persistence import (RECORD_FILE, STATE_FILE, check_base, fingerprint, is_state, read_record, read_tensors,
                          write_state)
from .registry import get_method
from .request import EditRequest, as_requests
from .results import code_version
from .timing import phase

log = logging.getLogger(__name__)


@dataclasses.dataclass
class StreamProgress:
    """Where a checkpointed stream stands: what a resumed run adds to its own (edit time, loss curves) and the
    random state the next edit starts from."""

    edit_seconds: float = 0.0
    losses: list[list[float]] = dataclasses.field(default_factory=list)
    rng_state: list[int] | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "StreamProgress":
        # checkpoints written before the record had a "progress" entry keep these three at its top level
        saved = record.get("progress") or {k: record[k] for k in ("edit_seconds", "losses", "rng_state")
                                           if k in record}
        return cls(**saved)


class LifelongEditor:
    """EasyEdit-style editor: ``LifelongEditor.from_hparams(hp).edit(prompts=..., target_new=..., ...)``."""

    def __init__(self, hparams: HyperParams, model: PreTrainedModel | None = None,
                 tok: PreTrainedTokenizerBase | None = None):
        torch.manual_seed(hparams.seed)
        self.hparams = hparams
        self.model = model if model is not None else load_model(hparams.model_name, hparams.device)
        # a model handed in (by EasyEdit's BaseEditor, say) may still require gradients everywhere; the methods
        # train only what they own, and a frozen base keeps the fixed parts of a step out of the autograd graph
        self.model.requires_grad_(False)
        self.tok = tok if tok is not None else load_tokenizer(hparams.model_name)
        #: the edited matrices as they were before any edit: saved edits can only be loaded onto this base
        self.base_fingerprint = fingerprint(self.model, hparams.inner_params)
        self.method = get_method(hparams.alg_name).method_cls(self.model, self.tok, hparams)
        #: the requests applied so far (sequentially), in order
        self.edit_log: list[dict[str, Any]] = []
        self._prepared = False

    @classmethod
    def from_hparams(cls, hparams: HyperParams) -> "LifelongEditor":
        return cls(hparams)

    @classmethod
    def from_saved(cls, directory: str | Path, model: PreTrainedModel | None = None,
                   tok: PreTrainedTokenizerBase | None = None) -> "LifelongEditor":
        """An editor over a fresh base model (loaded from the saved ``model_name`` unless given) with the
        edits saved in ``directory``."""
        record = read_record(directory)
        hparams = HyperParams.from_dict(record["hparams"], source=str(Path(directory) / RECORD_FILE))
        editor = cls(hparams, model=model, tok=tok)
        editor.load_state(directory)
        return editor

    def state_record(self) -> dict[str, Any]:
        """What a saved state says about itself beside the method's tensors."""
        return {"alg_name": self.hparams.alg_name, "hparams": self.hparams.to_dict(),
                "base_fingerprint": self.base_fingerprint, "edit_log": self.edit_log,
                "method_state": self.method.extra_state(), "code_version": code_version()}

    def save(self, directory: str | Path, progress: StreamProgress | None = None) -> Path:
        """Save the edits (not the base model) to ``directory``; with ``progress``, as a checkpoint of a stream."""
        record = self.state_record()
        if progress is not None:
            record["progress"] = dataclasses.asdict(progress)
        return write_state(directory, self.method.state_dict(), record)

    def load_state(self, directory: str | Path) -> dict[str, Any]:
        """Put the state saved in ``directory`` into this editor, whose model must be the unedited base; returns
        the state's record."""
        directory = Path(directory)
        record = read_record(directory)
        if record["alg_name"] != self.hparams.alg_name:
            raise EditStateError(f"{directory} holds {record['alg_name']} edits, this editor runs "
                                 f"{self.hparams.alg_name}")
        check_base(record, self.base_fingerprint, directory)
        state = read_tensors(directory, self.model.device)
        try:
            self.method.load_state_dict(state)
        except KeyError as missing:
            raise EditStateError(f"{directory / STATE_FILE}: the saved {self.hparams.alg_name} state has no "
                                 f"entry {missing}") from None
        except EditStateError as exc:
            raise EditStateError(f"{directory / STATE_FILE}: {exc}") from None
        self.method.load_extra_state(record.get("method_state", {}))
        self.edit_log = list(record["edit_log"])
        try:
            self.method.read_edit_log([entry["prompt"] for entry in self.edit_log])
        except EditStateError as exc:
            raise EditStateError(f"{directory / STATE_FILE}: {exc}") from None
        return record

    def edit(self, prompts: Sequence[str], target_new: Sequence[str], rephrase_prompts: Sequence[str] | None = None,
             locality_inputs: dict[str, dict[str, Sequence[str]]] | None = None,
             loc_prompts: Sequence[str] | None = None, subject: Sequence[str] | None = None,
             negative_prompts: Sequence[str] | None = None, sequential_edit: bool = False,
             portability_inputs: dict[str, dict[str, Sequence[str]]] | None = None,
             **kwargs: Any) -> tuple[list[dict[str, Any]], PreTrainedModel, dict]:
        """Edit and score; returns (per-request metrics, the edited model, summary).

        ``locality_inputs`` and ``portability_inputs`` follow EasyEdit:
        ``{"neighborhood": {"prompt": [...], "ground_truth": [...]}}``.
        """
        requests = make_requests(prompts, target_new, rephrase_prompts, locality_inputs, loc_prompts, subject,
                                 negative_prompts, portability_inputs)
        run = self.edit_requests(requests, sequential_edit=sequential_edit, **kwargs)
        return run["requests"], self.model, run["summary"]

    def edit_requests(self, requests: Sequence[EditRequest | dict[str, Any]], sequential_edit: bool = True,
                      rel_metric: str = "accuracy", rephrase_name: str = "gen", eval_generation: bool = False,
                      progress: bool = True, checkpoint_dir: str | Path | None = None,
                      checkpoint_every: int = 0, neighbourhood: tuple[list[str], list[str]] | None = None,
                      same_form: Sequence[str] = (), use_chat_template: bool = False,
                      same_subject: Sequence[tuple[str, str]] = (),
                      relation_probes: tuple[list[str], list[str]] | None = None) -> dict[str, Any]:
        """Apply ``requests`` (in order) and score them: sequentially (every edit stays; each request is scored
        on the final model) or one at a time (each request is edited, scored, and undone).

        With ``checkpoint_dir`` (sequential only) the edit state is saved there every ``checkpoint_every``
        edits, and a stream that finds a checkpoint of its own first edits resumes after them.
        ``neighbourhood`` (prompts, answers): unedited questions of the edits' form, scored like Loc after the
        whole stream (``summary.nloc``, sequential only: it asks what the final model does to its neighbours).
        ``same_form``: unedited questions of the edits' form for the method's calibrations (never the
        neighbourhood probes, which are reserved for evaluation); ``same_subject``: dev pairs of questions about one
        subject asking different relations, for the same calibrations.
        ``relation_probes`` (prompts, answers): questions asking another relation of an edited subject, scored like
        Loc after the whole stream (``summary.rloc``, sequential only).
        ``use_chat_template``: every question (requests, probes, same-form texts) is put in the tokenizer's chat
        template for editing, routing and scoring (:mod:`wise_edit.chat`); results show the questions as given.
        """
        start = time.perf_counter()
        if not requests:
            raise RequestError("no requests to edit")
        requests = as_requests(requests)
        given = [r.prompt for r in requests]
        given_probes = list(neighbourhood[0]) if neighbourhood is not None else []
        given_relations = list(relation_probes[0]) if relation_probes is not None else []
        if use_chat_template:
            requests = chat_requests(self.tok, requests)
            same_form = chat_prompts(self.tok, same_form)
            same_subject = list(zip(chat_prompts(self.tok, [a for a, _ in same_subject]),
                                    chat_prompts(self.tok, [b for _, b in same_subject])))
            if neighbourhood is not None:
                neighbourhood = (chat_prompts(self.tok, neighbourhood[0]), list(neighbourhood[1]))
            if relation_probes is not None:
                relation_probes = (chat_prompts(self.tok, relation_probes[0]), list(relation_probes[1]))
        self.method.check_requests(requests)
        if (neighbourhood is not None or relation_probes is not None) and not sequential_edit:
            raise ValueError("neighbourhood and same-subject locality are measured on the final model of a "
                             "sequential stream; sequential_edit is False")
        neighbours_before = self.answer_tokens(*neighbourhood) if neighbourhood is not None else None
        relations_before = self.answer_tokens(*relation_probes) if relation_probes is not None else None
        loc_before_all = self.locality_before(requests)
        probes_before_all = self.probes_before(requests)
        # what the unedited model writes for the probes that must not change
        loc_text_before_all = self.locality_generations(requests) if eval_generation else [None] * len(requests)
        if eval_generation and neighbourhood is not None:
            neighbours_text_before = self.free_answers(*neighbourhood)
        self.prepare(requests, same_form, same_subject)
        resumed, done = StreamProgress(), 0
        if checkpoint_dir is not None:
            if not sequential_edit:
                raise ValueError("checkpoints resume a sequential edit stream; sequential_edit is False")
            resumed, done = self._resume(Path(checkpoint_dir), requests)
        edit_seconds, losses = resumed.edit_seconds, resumed.losses
        resumed_seconds = edit_seconds  # spent by the run(s) before the checkpoint
        batch_size = self.hparams.batch_size
        bar = tqdm(total=len(requests), initial=done, desc=f"{self.hparams.alg_name} edits", unit="edit",
                   disable=not progress)
        if sequential_edit:
            saved = done
            for i in range(done, len(requests), batch_size):
                chunk = requests[i:i + batch_size]
                stats = self.apply(chunk)
                edit_seconds += stats["seconds"]
                losses.append(stats.get("losses", []))
                bar.update(len(chunk))
                finished = i + len(chunk)
                if checkpoint_dir is not None and checkpoint_every and (
                        finished - saved >= checkpoint_every or finished == len(requests)):
                    self.save(checkpoint_dir, StreamProgress(edit_seconds, losses, torch.get_rng_state().tolist()))
                    saved = finished
            with phase("score"):
                results = self.score(requests, loc_before_all, rel_metric, eval_generation, loc_text_before_all,
                                     probes_before_all)
                if neighbourhood is not None:
                    neighbours = locality(neighbours_before, self.answer_tokens(*neighbourhood))
                    if eval_generation:
                        neighbours_text = answers_match(self.free_answers(*neighbourhood), neighbours_text_before)
                if relation_probes is not None:
                    relations = locality(relations_before, self.answer_tokens(*relation_probes))
        else:
            snapshot = self.method.state_dict()
            results = []
            for i in range(0, len(requests), batch_size):
                chunk = requests[i:i + batch_size]
                stats = self.apply(chunk, record=False)
                edit_seconds += stats["seconds"]
                losses.append(stats.get("losses", []))
                results += self.score(chunk, loc_before_all[i:i + batch_size], rel_metric, eval_generation,
                                      loc_text_before_all[i:i + batch_size], probes_before_all[i:i + batch_size])
                self.method.load_state_dict(snapshot)
                bar.update(len(chunk))
        bar.close()
        for result, curve, prompt in zip(results, _expand(losses, batch_size, len(requests)), given):
            result["prompt"] = prompt
            result["train_steps"] = len(curve)
            result["final_loss"] = curve[-1] if curve else None
        total = time.perf_counter() - start + resumed_seconds
        summary = summarize(results, rephrase_name)
        out: dict[str, Any] = {"summary": summary, "requests": results, "blocks": by_block(results, rephrase_name)}
        if neighbourhood is not None:
            summary["nloc"] = statistics.fmean(neighbours)
            out["neighbourhood"] = [{"prompt": p, "answer": a, "nloc": v}
                                    for p, a, v in zip(given_probes, neighbourhood[1], neighbours)]
            if eval_generation:
                summary["gen_nloc"] = statistics.fmean(neighbours_text)
                for row, value in zip(out["neighbourhood"], neighbours_text):
                    row["gen_nloc"] = value
        if relation_probes is not None and relation_probes[0]:
            summary["rloc"] = statistics.fmean(relations)
            out["relation_probes"] = [{"prompt": p, "answer": a, "rloc": v}
                                      for p, a, v in zip(given_relations, relation_probes[1], relations)]
        return {
            **out,
            "timing": {"total_seconds": total, "edit_seconds": edit_seconds,
                       "seconds_per_edit": edit_seconds / len(requests),
                       "eval_seconds": total - edit_seconds, "resumed_edits": done},
        }

    def prepare(self, requests: Sequence[EditRequest | dict[str, Any]], same_form: Sequence[str] = (),
                same_subject: Sequence[tuple[str, str]] = ()) -> None:
        """The method's calibrations over the stream, once per editor, before its first edit."""
        if not self._prepared:
            with phase("prepare"):
                self.method.prepare(as_requests(requests), same_form, same_subject)
            self._prepared = True

    def apply(self, requests: Sequence[EditRequest | dict[str, Any]], record: bool = True) -> dict[str, Any]:
        """Apply one chunk of requests: the one way every protocol, the EasyEdit bridge and the benchmark edit.

        Prepares the method on first use, names the request when training diverges, and (with ``record``; the
        one-at-a-time protocol undoes its edits and keeps no log) appends the requests to :attr:`edit_log`.
        Returns the method's statistics (e.g. the loss curve) with the chunk's wall time in ``seconds``.
        """
        requests = as_requests(requests)
        self.prepare(requests)
        start = time.perf_counter()
        try:
            stats = dict(self.method.apply(requests))
        except NonFiniteError as exc:
            names = ", ".join(str(r.case_id) for r in requests)
            raise NonFiniteError(f"request {names} ({requests[0].prompt!r}): {exc}; the edit was stopped "
                                 f"(check edit_lr and the other hyperparameters)") from None
        stats["seconds"] = time.perf_counter() - start
        if record:
            self.edit_log += [_log_entry(r) for r in requests]
        return stats

    def _resume(self, directory: Path, requests: list[EditRequest]) -> tuple[StreamProgress, int]:
        """Load a checkpoint of this very run's first edits, if there is one: (its progress, edits done).

        Only the same run resumes: the same method, hyperparameters and package version, the same first requests
        (and, checked by :meth:`load_state`, the same base model). Anything else is refused with what differs.
        """
        if not is_state(directory):
            return StreamProgress(), 0
        if self.edit_log:
            raise EditStateError(f"cannot resume from {directory}: this editor has already applied edits")
        record = read_record(directory)
        theirs = {"alg_name": record["alg_name"], **{f"hparams.{k}": v for k, v in record["hparams"].items()}}
        mine = {"alg_name": self.hparams.alg_name,
                **{f"hparams.{k}": v for k, v in json.loads(json.dumps(self.hparams.to_dict())).items()}}
        theirs["wise_edit version"] = record.get("code_version", {}).get("package")
        mine["wise_edit version"] = __version__
        differ = [f"{k}: {theirs.get(k)!r} in the checkpoint, {mine.get(k)!r} now"
                  for k in sorted(set(theirs) | set(mine)) if theirs.get(k) != mine.get(k)]
        if differ:
            raise EditStateError(f"the checkpoint in {directory} belongs to another configuration ("
                                 + "; ".join(differ) + "); rerun with its settings or use another output directory")
        done = len(record["edit_log"])
        if done > len(requests):
            raise EditStateError(f"the checkpoint in {directory} already holds {done} edits, more than the "
                                 f"{len(requests)} asked for now; edits cannot be taken back: use ds_size >= {done} "
                                 "or another output directory")
        if record["edit_log"] != [_log_entry(r) for r in requests[:done]]:
            raise EditStateError(f"the checkpoint in {directory} was made for a different request stream "
                                 "(its edit log does not match the first requests); use another output directory")
        progress = StreamProgress.from_record(self.load_state(directory))
        if progress.rng_state is not None:
            torch.set_rng_state(torch.tensor(progress.rng_state, dtype=torch.uint8))
        log.warning("resuming after %d edits from the checkpoint in %s", done, directory)
        return progress, done

    def locality_before(self, requests: Sequence[EditRequest | dict[str, Any]]) -> list[torch.Tensor | None]:
        """Per request, the current model's argmax tokens on its locality probe (None where it has none): what
        :meth:`score` compares against, taken before the first edit."""
        return _per_locality_probe(as_requests(requests), self.answer_tokens)

    def probes_before(self, requests: Sequence[EditRequest | dict[str, Any]]) -> list[list[torch.Tensor | None]]:
        """Per request, per probe (:attr:`EditRequest.probes`), the current model's argmax tokens on each
        ``locality`` probe (None for ``portability`` probes): what :meth:`score` compares against."""
        requests = as_requests(requests)
        kept = [(i, p) for i, r in enumerate(requests) for p in r.probes if p.family == "locality"]
        found = iter(self.answer_tokens([p.question for _, p in kept], [p.answer for _, p in kept]))
        return [[next(found) if p.family == "locality" else None for p in r.probes] for r in requests]

    def _score_probes(self, requests: list[EditRequest], results: list[dict[str, Any]],
                      before: list[list[torch.Tensor | None]]) -> None:
        """Each request's probe kinds under their own names (``results[i]["probes"][kind]``: the mean over the
        request's probes of that kind); a request without its own locality or portability question gets the
        mean over its kinds of that family as ``locality`` / ``portability_acc`` (EasyEdit's overall scores)."""
        rows = [(i, j, p) for i, r in enumerate(requests) for j, p in enumerate(r.probes)]
        local = [(i, j, p) for i, j, p in rows if p.family == "locality"]
        ported = [(i, j, p) for i, j, p in rows if p.family == "portability"]
        values: dict[tuple[int, int], float] = {}
        after = self.answer_tokens([p.question for *_, p in local], [p.answer for *_, p in local])
        for (i, j, _), value in zip(local, locality([before[i][j] for i, j, _ in local], after)):
            values[i, j] = value
        if ported:
            accuracy = score_answers(self.model, self.tok, [p.question for *_, p in ported],
                                     [p.answer for *_, p in ported]).accuracy
            values.update({(i, j): acc for (i, j, _), acc in zip(ported, accuracy)})
        for i, request in enumerate(requests):
            if not request.probes:
                continue
            kinds: dict[tuple[str, str], list[float]] = {}
            for j, probe in enumerate(request.probes):
                kinds.setdefault((probe.family, probe.kind), []).append(values[i, j])
            results[i]["probes"] = {kind: statistics.fmean(v) for (_, kind), v in kinds.items()}
            for family, key in (("locality", "locality"), ("portability", "portability_acc")):
                means = [statistics.fmean(v) for (f, _), v in kinds.items() if f == family]
                if means and key not in results[i]:
                    results[i][key] = statistics.fmean(means)

    def _locality_tokens(self, requests: list[EditRequest]) -> list[torch.Tensor]:
        return self.answer_tokens([r.locality_question for r in requests], [r.locality_answer for r in requests])

    def answer_tokens(self, prompts: list[str], answers: list[str]) -> list[torch.Tensor]:
        """The model's argmax tokens at the answer positions (what Loc and nloc compare before and after)."""
        return score_answers(self.model, self.tok, prompts, answers).predictions if prompts else []

    def score(self, requests: Sequence[EditRequest | dict[str, Any]], loc_before: list[torch.Tensor | None],
              rel_metric: str = "accuracy", eval_generation: bool = False,
              loc_text_before: list[str | None] | None = None,
              probes_before: list[list[torch.Tensor | None]] | None = None) -> list[dict[str, Any]]:
        """Per-request metrics on the current model (``loc_before``: locality argmax tokens before editing;
        ``loc_text_before``: with ``eval_generation``, the free answers to the locality probes before editing;
        ``probes_before``: :meth:`probes_before` taken before editing, for requests with probes of named kinds)."""
        requests = as_requests(requests)
        prompts = [r.prompt for r in requests]
        targets = [r.target for r in requests]
        rel = score_answers(self.model, self.tok, prompts, targets)
        results = [{"case_id": r.case_id, "prompt": r.prompt, "target_new": r.target, "rewrite_acc": acc}
                   for r, acc in zip(requests, rel.accuracy)]
        if rel_metric == "perplexity":
            for res, ppl in zip(results, rel.perplexity):
                res["rewrite_ppl"] = ppl
        for question, answer, key in (("rephrase", "target", "rephrase_acc"),
                                      ("portability_question", "portability_answer", "portability_acc")):
            rows = [i for i, r in enumerate(requests) if getattr(r, question)]
            if rows:
                scored = score_answers(self.model, self.tok, [getattr(requests[i], question) for i in rows],
                                       [getattr(requests[i], answer) for i in rows])
                for i, acc in zip(rows, scored.accuracy):
                    results[i][key] = acc
        with_loc = [i for i, before in enumerate(loc_before) if before is not None]
        if with_loc:
            after = self._locality_tokens([requests[i] for i in with_loc])
            for i, value in zip(with_loc, locality([loc_before[i] for i in with_loc], after)):
                results[i]["locality"] = value
        if probes_before is not None:
            self._score_probes(requests, results, probes_before)
        if eval_generation:
            for res, em in zip(results, generation_exact_match(self.model, self.tok, prompts, targets)):
                res["generate_exact_match"] = em
            self._score_generations(requests, results, loc_text_before or [None] * len(requests))
        return results

    def free_answers(self, prompts: list[str], references: list[str]) -> list[str]:
        """Greedy answers until the end-of-sequence token or twice the reference's length plus 8 tokens."""
        caps = [generation_cap(self.tok, p, a) for p, a in zip(prompts, references)]
        return generate_answers(self.model, self.tok, prompts, caps) if prompts else []

    def locality_generations(self, requests: list[EditRequest]) -> list[str | None]:
        """Per request, the current model's free answer to its locality probe (None where it has none)."""
        return _per_locality_probe(requests, self.free_answers)

    def _score_generations(self, requests: list[EditRequest], results: list[dict[str, Any]],
                           loc_text_before: list[str | None]) -> None:
        """Generation-based twins of Rel, Gen and Loc: does the free answer say the target (for a locality
        probe: the same as before the edits), once normalised."""
        for question, key in (("prompt", "gen_rewrite"), ("rephrase", "gen_rephrase")):
            rows = [i for i, r in enumerate(requests) if getattr(r, question)]
            texts = self.free_answers([getattr(requests[i], question) for i in rows],
                                      [requests[i].target for i in rows])
            for i, text, hit in zip(rows, texts, answers_match(texts, [requests[i].target for i in rows])):
                results[i][key] = hit
                results[i][f"{key}_text"] = text
        rows = [i for i, text in enumerate(loc_text_before) if text is not None]
        texts = self.free_answers([requests[i].locality_question for i in rows],
                                  [requests[i].locality_answer for i in rows])
        before = [loc_text_before[i] for i in rows]
        for i, text, same in zip(rows, texts, answers_match(texts, before)):
            results[i]["gen_locality"] = same
            results[i]["gen_locality_text"] = text


def _per_locality_probe(requests: list[EditRequest], measure: Callable[[list[str], list[str]], list[Any]]
                        ) -> list[Any]:
    """``measure(prompts, answers)`` over the requests' locality probes, in one call: one value per request,
    None where a request has no probe."""
    has_loc = [r.has_locality_probe for r in requests]
    probed = [r for r, h in zip(requests, has_loc) if h]
    found = iter(measure([r.locality_question for r in probed], [r.locality_answer for r in probed]))
    return [next(found) if h else None for h in has_loc]


def _log_entry(request: EditRequest) -> dict[str, Any]:
    return {"case_id": request.case_id, "prompt": request.prompt, "target_new": request.target}


def _expand(losses: list[list[float]], batch_size: int, total: int) -> list[list[float]]:
    """One loss curve per request (a batch's curve repeated for its requests)."""
    return [losses[i // batch_size] for i in range(total)]


def make_requests(prompts: str | Sequence[str], target_new: str | Sequence[str],
                  rephrase_prompts: str | Sequence[str] | None = None,
                  locality_inputs: dict[str, dict[str, str | Sequence[str]]] | None = None,
                  loc_prompts: str | Sequence[str] | None = None, subject: str | Sequence[str] | None = None,
                  negative_prompts: str | Sequence[str] | None = None,
                  portability_inputs: dict[str, dict[str, str | Sequence[str]]] | None = None
                  ) -> list[EditRequest]:
    """EasyEdit's arguments as requests (what the data loaders produce).

    As in EasyEdit, each argument is a list with one entry per edit or, for a single edit, a plain string.
    Prompts and targets must be non-empty strings; a bad one is named by its request and field.
    """
    prompts, target_new = _as_list(prompts), _as_list(target_new)
    n = len(prompts)
    if n == 0:
        raise RequestError("no prompts to edit (prompts is empty)")
    if len(target_new) != n:
        raise RequestError(f"{n} prompts but {len(target_new)} target_new")
    # EditRequest field -> (EasyEdit argument, its values)
    columns: dict[str, tuple[str, list[Any] | None]] = {
        "rephrase": ("rephrase_prompts", _as_list(rephrase_prompts)),
        "irrelevant_text": ("loc_prompts", _as_list(loc_prompts)), "subject": ("subject", _as_list(subject)),
        "same_form_negative": ("negative_prompts", _as_list(negative_prompts))}
    for argument, groups, key in (("locality_inputs", locality_inputs, "locality"),
                                  ("portability_inputs", portability_inputs, "portability")):
        if groups:
            if len(groups) != 1:
                raise RequestError(f"{argument}: one group is supported, got {sorted(groups)}")
            (group,) = groups.values()
            columns[f"{key}_question"] = (f"{argument} prompt", _as_list(group["prompt"]))
            columns[f"{key}_answer"] = (f"{argument} ground_truth", _as_list(group["ground_truth"]))
    for argument, values in columns.values():
        if values is not None and len(values) != n:
            raise RequestError(f"{n} prompts but {len(values)} {argument}")
    return [EditRequest(case_id=i, prompt=prompts[i], target=target_new[i],
                        **{k: v[i] for k, (_, v) in columns.items() if v is not None}) for i in range(n)]


def _as_list(values: str | Sequence[Any] | None) -> list[Any] | None:
    """A single string stands for a one-edit list (EasyEdit accepts both)."""
    if values is None:
        return None
    return [values] if isinstance(values, str) else list(values)


def save_edits(editor: LifelongEditor, directory: str | Path) -> Path:
    """:meth:`LifelongEditor.save` (the name the API has always had)."""
    return editor.save(directory)


def load_edits(directory: str | Path, model: PreTrainedModel | None = None,
               tok: PreTrainedTokenizerBase | None = None) -> LifelongEditor:
    """:meth:`LifelongEditor.from_saved` (the name the API has always had)."""
    return LifelongEditor.from_saved(directory, model, tok)

