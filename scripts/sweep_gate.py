#!/usr/bin/env python
"""A routing gate over its radius, on the edits a CLI run saved: the trade-off of Gen against locality.

    python scripts/sweep_gate.py outputs/WISE-zsre-T100-... --gate fact --radii 0.35 0.4 0.45 0.5
    python scripts/sweep_gate.py outputs/MEMOIR-counterfact-T90-... --gate relation --radii none 0.5 0.6 0.7
    python scripts/sweep_gate.py outputs/WISE-zsre-T100-... --gate match --radii none 0.6 0.7

``--gate fact`` (the fact gate's weighted radius, ``fact_radius``: what keeps same-form questions about other
subjects out, nloc), ``--gate relation`` (its plain radius, ``relation_radius``: what keeps other relations of
an edited subject out, rloc) or ``--gate match`` (WISE's match gate, ``match_radius``).

Reads the run's ``results.json`` (its data, stream, negatives, neighbourhood and same-subject probes) and its
saved edits (``<run>/edits``) and scores the final model at each radius: Rel, Gen, Loc, nloc, rloc. A radius
changes no trained weight, so one saved stream gives the whole curve. ``none`` is the gate (or, for
``relation``, its relation radius) off. Prints a table, writes ``<run>/<gate>_radius_sweep.json`` and ``.png``
(Gen and Rel against the locality the gate protects).

Choose radii on a dev stream's run (SPEC section 4), then use them on the reported stream.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from wise_edit import load_edits
from wise_edit.data import relation_probes, run_data
from wise_edit.metrics import locality
from wise_edit.results import code_version, write_json
from wise_edit.routing import unrouted

ANYTHING = -2.0  # a radius every agreement reaches: the fact gate passes every decision on
#: the locality each gate protects (the plot's x axis)
GUARDS = {"fact": "nloc", "match": "nloc", "relation": "rloc"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="output_dir of a sequential WISE or MEMOIR run of the CLI (with save_edits)")
    parser.add_argument("--radii", nargs="+", default=["none", "0.4", "0.5", "0.6", "0.7"])
    parser.add_argument("--gate", choices=sorted(GUARDS), default="fact")
    args = parser.parse_args()
    run = Path(args.run)
    payload = json.loads((run / "results.json").read_text())
    data = payload["data"]
    editor = load_edits(run / "edits")
    found = run_data(payload)
    dataset, probes = found.dataset, found.probes
    side, gate = editor.method.memory, editor.method.gate
    if args.gate != "match" and gate is None:
        parser.error(f"{run} was edited without gate_params: it has no fact gate to sweep")
    if args.gate == "match" and (not hasattr(side, "match_radius") or side.pool is None):
        parser.error(f"{run}: only a WISE run made with match_radius has a match gate to sweep")
    relations = None
    if "rloc_probes" in data:
        edited = data.get("records") or list(range(data.get("first_record", 0),
                                                   data.get("first_record", 0) + data["ds_size"]))
        relations = relation_probes(data["name"], data["path"], edited)

    def set_radius(value: str) -> None:
        radius = None if value == "none" else float(value)
        if args.gate == "fact":
            gate.radius = ANYTHING if radius is None else radius
        elif args.gate == "relation":
            gate.relation_radius = radius
        else:
            side.match_radius = radius

    requests = dataset.requests
    sets = {name: found_set for name, found_set in (("nloc", probes), ("rloc", relations)) if found_set}
    with unrouted():  # the unedited model's answers
        loc_before = editor.locality_before(requests)
        before = {name: editor.answer_tokens(s.prompts, s.answers) for name, s in sets.items()}
    rows = []
    for value in args.radii:
        set_radius(value)
        results = editor.score(requests, loc_before)
        row = {"radius": value, "rel": statistics.fmean(r["rewrite_acc"] for r in results),
               "gen": statistics.fmean(r["rephrase_acc"] for r in results if "rephrase_acc" in r),
               "loc": statistics.fmean(r["locality"] for r in results if "locality" in r)}
        for name, probe_set in sets.items():
            row[name] = statistics.fmean(locality(before[name], editor.answer_tokens(probe_set.prompts,
                                                                                      probe_set.answers)))
        rows.append(row)
        print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    out = run / f"{args.gate}_radius_sweep.json"
    write_json(out, {"run": str(run), "gate": args.gate, "rows": rows, "hparams": editor.hparams.to_dict(),
                     "code_version": code_version()})
    guard = GUARDS[args.gate]
    if all(guard in r for r in rows):
        plot(rows, guard, out.with_suffix(".png"), f"{payload['alg_name']} T={data['ds_size']}, "
             f"{Path(data['path']).name}: Gen and Rel against {guard} by {args.gate} radius")
    print(f"written {out}")


def plot(rows: list[dict], guard: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for metric, marker in (("gen", "o"), ("rel", "s")):
        ax.plot([r[guard] for r in rows], [r[metric] for r in rows], marker=marker, label=metric.capitalize())
    for r in rows:
        ax.annotate(r["radius"], (r[guard], r["gen"]), fontsize=7, xytext=(3, -9), textcoords="offset points")
    ax.set_xlabel({"nloc": "neighbourhood Loc (nloc)", "rloc": "same-subject Loc (rloc)"}[guard])
    ax.set_ylabel("score")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
