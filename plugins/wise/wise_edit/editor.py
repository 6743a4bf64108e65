"""The lifelong editor: applies a stream of edits with a registered method and scores them (SPEC §4).

It knows no method by name: ``alg_name`` is looked up in :mod:`wise_edit.registry`.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .hparams import HyperParams
from .metrics import generation_exact_match, locality, score_answers
from .models import load_model, load_tokenizer
from .registry import get_method


class LifelongEditor:
    """EasyEdit-style editor: ``LifelongEditor.from_hparams(hp).edit(prompts=..., target_new=..., ...)``."""

    def __init__(self, hparams: HyperParams, model: PreTrainedModel | None = None,
                 tok: PreTrainedTokenizerBase | None = None):
        torch.manual_seed(hparams.seed)
        self.hparams = hparams
        self.model = model if model is not None else load_model(hparams.model_name, hparams.device)
        self.tok = tok if tok is not None else load_tokenizer(hparams.model_name)
        self.method = get_method(hparams.alg_name).method_cls(self.model, self.tok, hparams)

    @classmethod
    def from_hparams(cls, hparams: HyperParams) -> "LifelongEditor":
        return cls(hparams)

    def edit(self, prompts: Sequence[str], target_new: Sequence[str], rephrase_prompts: Sequence[str] | None = None,
             locality_inputs: dict[str, dict[str, Sequence[str]]] | None = None,
             loc_prompts: Sequence[str] | None = None, subject: Sequence[str] | None = None,
             sequential_edit: bool = False, **kwargs: Any) -> tuple[list[dict[str, Any]], PreTrainedModel, dict]:
        """Edit and score; returns (per-request metrics, the edited model, summary).

        ``locality_inputs`` follows EasyEdit: ``{"neighborhood": {"prompt": [...], "ground_truth": [...]}}``.
        """
        requests = make_requests(prompts, target_new, rephrase_prompts, locality_inputs, loc_prompts, subject)
        run = self.edit_requests(requests, sequential_edit=sequential_edit, **kwargs)
        return run["requests"], self.model, run["summary"]

    def edit_requests(self, requests: list[dict[str, Any]], sequential_edit: bool = True,
                      rel_metric: str = "accuracy", rephrase_name: str = "gen", eval_generation: bool = False,
                      progress: bool = True) -> dict[str, Any]:
        """Apply ``requests`` (in order) and score them; see SPEC §4 for the two protocols."""
        start = time.perf_counter()
        has_loc = [bool(r.get("locality_prompt")) for r in requests]
        loc_before = self._locality_tokens([r for r, h in zip(requests, has_loc) if h])
        before_iter = iter(loc_before)
        loc_before_all = [next(before_iter) if h else None for h in has_loc]
        self.method.prepare(requests)
        edit_seconds, losses = 0.0, []
        batch_size = self.hparams.batch_size
        bar = tqdm(total=len(requests), desc=f"{self.hparams.alg_name} edits", unit="edit", disable=not progress)
        if sequential_edit:
            for i in range(0, len(requests), batch_size):
                t0 = time.perf_counter()
                stats = self.method.apply(requests[i:i + batch_size])
                edit_seconds += time.perf_counter() - t0
                losses.append(stats.get("losses", []))
                bar.update(len(requests[i:i + batch_size]))
            results = self.score(requests, loc_before_all, rel_metric, eval_generation)
        else:
            snapshot = self.method.state_dict()
            results = []
            for i in range(0, len(requests), batch_size):
                chunk = requests[i:i + batch_size]
                t0 = time.perf_counter()
                stats = self.method.apply(chunk)
                edit_seconds += time.perf_counter() - t0
                losses.append(stats.get("losses", []))
                results += self.score(chunk, loc_before_all[i:i + batch_size], rel_metric, eval_generation)
                self.method.load_state_dict(snapshot)
                bar.update(len(chunk))
        bar.close()
        for result, curve in zip(results, _expand(losses, batch_size, len(requests))):
            result["train_steps"] = len(curve)
            result["final_loss"] = curve[-1] if curve else None
        total = time.perf_counter() - start
        return {
            "summary": summarize(results, rephrase_name),
            "requests": results,
            "timing": {"total_seconds": total, "edit_seconds": edit_seconds,
                       "seconds_per_edit": edit_seconds / len(requests),
                       "eval_seconds": total - edit_seconds},
        }

    def _locality_tokens(self, requests: list[dict[str, Any]]) -> list[torch.Tensor]:
        if not requests:
            return []
        return score_answers(self.model, self.tok, [r["locality_prompt"] for r in requests],
                             [r["locality_ground_truth"] for r in requests],
                             max_length=self.hparams.max_length).predictions

    def score(self, requests: list[dict[str, Any]], loc_before: list[torch.Tensor | None],
              rel_metric: str = "accuracy", eval_generation: bool = False) -> list[dict[str, Any]]:
        """Per-request metrics on the current model (``loc_before``: locality argmax tokens before editing)."""
        prompts = [r["prompt"] for r in requests]
        targets = [r["target_new"] for r in requests]
        max_length = self.hparams.max_length
        rel = score_answers(self.model, self.tok, prompts, targets, max_length=max_length)
        results = [{"case_id": r.get("case_id", i), "prompt": r["prompt"], "target_new": r["target_new"],
                    "rewrite_acc": acc} for i, (r, acc) in enumerate(zip(requests, rel.accuracy))]
        if rel_metric == "perplexity":
            for res, ppl in zip(results, rel.perplexity):
                res["rewrite_ppl"] = ppl
        with_reph = [i for i, r in enumerate(requests) if r.get("rephrase_prompt")]
        if with_reph:
            gen = score_answers(self.model, self.tok, [requests[i]["rephrase_prompt"] for i in with_reph],
                                [targets[i] for i in with_reph], max_length=max_length)
            for i, acc in zip(with_reph, gen.accuracy):
                results[i]["rephrase_acc"] = acc
        with_loc = [i for i, before in enumerate(loc_before) if before is not None]
        if with_loc:
            after = self._locality_tokens([requests[i] for i in with_loc])
            for i, value in zip(with_loc, locality([loc_before[i] for i in with_loc], after)):
                results[i]["locality"] = value
        if eval_generation:
            for res, em in zip(results, generation_exact_match(self.model, self.tok, prompts, targets,
                                                               max_length=max_length)):
                res["generate_exact_match"] = em
        return results


def _expand(losses: list[list[float]], batch_size: int, total: int) -> list[list[float]]:
    """One loss curve per request (a batch's curve repeated for its requests)."""
    return [losses[i // batch_size] for i in range(total)]


#: summary name -> per-request key
SUMMARY_KEYS = {"rel": "rewrite_acc", "gen": "rephrase_acc", "loc": "locality", "ppl": "rewrite_ppl",
                "gen_em": "generate_exact_match"}


def summarize(results: list[dict[str, Any]], rephrase_name: str = "gen") -> dict[str, float]:
    """Means of each metric over the requests that have it; ``avg`` = mean of Rel, Gen and Loc."""
    summary: dict[str, float] = {}
    for name, key in SUMMARY_KEYS.items():
        values = [r[key] for r in results if key in r]
        if values:
            summary[rephrase_name if name == "gen" else name] = statistics.fmean(values)
    parts = [summary[k] for k in ("rel", rephrase_name, "loc") if k in summary]
    if parts:
        summary["avg"] = statistics.fmean(parts)
    summary["n"] = len(results)
    return summary


def make_requests(prompts: Sequence[str], target_new: Sequence[str], rephrase_prompts: Sequence[str] | None = None,
                  locality_inputs: dict[str, dict[str, Sequence[str]]] | None = None,
                  loc_prompts: Sequence[str] | None = None, subject: Sequence[str] | None = None
                  ) -> list[dict[str, Any]]:
    """EasyEdit's list arguments as request dicts (the format the data loaders produce)."""
    n = len(prompts)
    if len(target_new) != n:
        raise ValueError(f"{n} prompts but {len(target_new)} target_new")
    columns: dict[str, Sequence[Any] | None] = {"rephrase_prompt": rephrase_prompts, "loc_prompt": loc_prompts,
                                                "subject": subject}
    if locality_inputs:
        if len(locality_inputs) != 1:
            raise ValueError(f"locality_inputs: one group is supported, got {sorted(locality_inputs)}")
        (group,) = locality_inputs.values()
        columns["locality_prompt"], columns["locality_ground_truth"] = group["prompt"], group["ground_truth"]
    for name, values in columns.items():
        if values is not None and len(values) != n:
            raise ValueError(f"{n} prompts but {len(values)} {name}")
    return [{"case_id": i, "prompt": prompts[i], "target_new": target_new[i],
             **{k: v[i] for k, v in columns.items() if v is not None}} for i in range(n)]
