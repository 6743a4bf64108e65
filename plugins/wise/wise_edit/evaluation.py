"""The run's metric names in one place: how per-request results become a summary, its retention blocks, and
which summary names the tables and plots show (``results.py``, ``report.py`` and the editor read these)."""

from __future__ import annotations

import statistics
from typing import Any

#: summary name -> per-request key
SUMMARY_KEYS = {"rel": "rewrite_acc", "gen": "rephrase_acc", "loc": "locality", "port": "portability_acc",
                "ppl": "rewrite_ppl", "gen_em": "generate_exact_match", "gen_rel": "gen_rewrite",
                "gen_gen": "gen_rephrase", "gen_loc": "gen_locality"}


def summarize(results: list[dict[str, Any]], rephrase_name: str = "gen") -> dict[str, float]:
    """Means of each metric over the requests that have it, and of each named probe kind (KnowEdit's
    ``Relation_Specificity``, ``Reasoning``, ...) under its own name; ``avg`` = mean of Rel, Gen and Loc (as the WISE
    paper's; portability is reported beside it, not in it). A benchmark whose Rel is a perplexity
    (Hallucination: ``ppl``, lower is better) has no ``avg``: a perplexity and accuracies do not average."""
    summary: dict[str, float] = {}
    for name, key in SUMMARY_KEYS.items():
        values = [r[key] for r in results if key in r]
        if values:
            label = {"gen": rephrase_name, "gen_gen": f"gen_{rephrase_name}"}.get(name, name)
            summary[label] = statistics.fmean(values)
    kinds: dict[str, list[float]] = {}
    for result in results:
        for kind, value in result.get("probes", {}).items():
            kinds.setdefault(kind, []).append(value)
    summary.update({kind: statistics.fmean(values) for kind, values in kinds.items()})
    parts = [summary[k] for k in ("rel", rephrase_name, "loc") if k in summary]
    if parts and "ppl" not in summary:
        summary["avg"] = statistics.fmean(parts)
    summary["n"] = len(results)
    return summary


def by_block(results: list[dict[str, Any]], rephrase_name: str = "gen", n_blocks: int = 10
             ) -> list[dict[str, Any]]:
    """Retention: the metrics of each of ``n_blocks`` consecutive blocks of the stream (by edit position), all
    scored on the same final model, so the first block says what the oldest edits kept."""
    n = len(results)
    edges = [round(i * n / n_blocks) for i in range(n_blocks + 1)]
    return [{"first": a, "last": b - 1, **summarize(results[a:b], rephrase_name)}
            for a, b in zip(edges, edges[1:]) if b > a]


#: summary names shown as table columns, in this order (a column appears when some row has it)
TABLE_COLUMNS = ("rel", "gen", "ood", "loc", "nloc", "rloc", "Relation_Specificity", "Forgetfulness", "avg", "port",
                 "Reasoning", "Subject_Aliasing", "Logical_Generalization", "ppl", "gen_em", "gen_rel", "gen_gen",
                 "gen_ood", "gen_loc", "gen_nloc")
#: summary names drawn in the comparison plot (accuracies in [0, 1]; ``ppl`` on its own log axis), and their
#: panel titles
PLOTTED = ("rel", "ppl", "gen", "ood", "loc", "nloc", "rloc", "port", "avg", "gen_rel", "gen_gen", "gen_ood", "gen_loc")
TITLES = {"ppl": "Rel as PPL (lower is better)", "nloc": "Neighbourhood Loc", "rloc": "Same-subject Loc",
          "port": "Portability", "ood": "OOD Gen", "gen_rel": "Rel (generated)", "gen_gen": "Gen (generated)",
          "gen_ood": "OOD Gen (generated)", "gen_loc": "Loc (generated)"}
