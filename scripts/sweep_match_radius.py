#!/usr/bin/env python
"""A routing gate over its radius, on the edits a CLI run saved: the trade-off of Gen against nloc.

    python scripts/sweep_match_radius.py outputs/WISE-zsre-T100-... --radii 0.6 0.65 0.7 0.75 0.8
    python scripts/sweep_match_radius.py outputs/MEMOIR-zsre-T100-... --gate subject --radii 0.4 0.5 0.6

``--gate match`` (WISE's match gate, ``match_radius``) or ``--gate subject`` (the subject gate of WISE and
MEMOIR, ``subject_radius``; the run must have been made with ``subject_params``).

Reads the run's ``results.json`` (its data, stream length, negatives and probe records) and its saved edits
(``<run>/edits``), gives the side memory the match pool of the run's same-form questions (``match_texts`` of
them, as an edit run with ``match_radius`` would) and scores the final model at each radius: Rel, Gen, Loc,
nloc, and the share of edit prompts, rephrasings and neighbourhood probes the side memory answers. The
radius changes no trained weight, so one saved stream gives the whole curve. ``none`` is the gate off (for
the match gate, the paper's router alone). Prints a table, writes ``<run>/<gate>_radius_sweep.json`` and
``.png`` (Gen and Rel against nloc).

Choose the radius on a dev stream's run (ZsRE train records 0-499 as edits), then use it on the reported stream.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from wise_edit import load_edits
from wise_edit.data import run_data
from wise_edit.metrics import locality
from wise_edit.results import code_version, write_json
from wise_edit.routing import MAIN

NOTHING = 2.0  # a radius no match reaches (matches are <= 1): nothing is routed, the base model answers
ANYTHING = -2.0  # a radius every match reaches: the subject gate passes every decision on


def routed_share(editor, prompts: list[str]) -> float:
    """Share of ``prompts`` the side memory answers (decided on the prompt, as every entry point does)."""
    layer = editor.method.layer
    routed = 0
    for start in range(0, len(prompts), 32):
        part = prompts[start:start + 32]
        batch = editor.tok(part, return_tensors="pt", padding=True)
        with torch.no_grad():
            editor.model(**batch)
        routed += int((layer.last_route != MAIN).sum())
    return routed / len(prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="output_dir of a sequential WISE or MEMOIR run of the CLI (with save_edits)")
    parser.add_argument("--radii", nargs="+", default=["none", "0.6", "0.65", "0.7", "0.75", "0.8", "0.85"])
    parser.add_argument("--gate", choices=["match", "subject"], default="match")
    parser.add_argument("--match-radius", default=None,
                        help="with --gate subject on a WISE run: the match gate's radius meanwhile (none = off)")
    args = parser.parse_args()
    run = Path(args.run)
    payload = json.loads((run / "results.json").read_text())
    cfg = payload["config"]["run"]
    data = payload["data"]
    editor = load_edits(run / "edits")
    hp = editor.hparams
    found = run_data(payload)
    dataset, negatives, probes = found.dataset, found.negatives, found.probes
    side = editor.method.memory
    if args.gate == "subject" and editor.method.gate is None:
        parser.error(f"{run} was edited without subject_params: it has no subject gate to sweep")
    if args.gate == "match" and not hasattr(side, "match_radius"):
        parser.error(f"{run} is a {payload['alg_name']} run: only WISE has a match gate (try --gate subject)")

    def set_radius(radius: float | None) -> None:
        if args.gate == "subject":
            editor.method.gate.radius = ANYTHING if radius is None else radius
        else:
            side.match_radius = radius

    if args.gate == "match" and side.pool is None:
        # a run without the match gate saved no pool: collect it, then re-weigh the held edits
        editor.method.hparams = hp.replace(match_radius=1.0)
        editor.method.prepare(dataset.requests, negatives.prompts)
        editor.method.load_state_dict(editor.method.state_dict())
    requests = dataset.requests
    with_loc = [r for r in requests if r.has_locality_probe]
    set_radius(NOTHING)
    if args.match_radius is not None:
        side.match_radius = None if args.match_radius == "none" else float(args.match_radius)
    loc_before = editor.locality_before(requests)
    nloc_before = editor.answer_tokens(probes.prompts, probes.answers)
    rows = []
    for value in args.radii:
        set_radius(None if value == "none" else float(value))
        results = editor.score(requests, loc_before)
        nloc = statistics.fmean(locality(nloc_before, editor.answer_tokens(probes.prompts, probes.answers)))
        row = {"radius": value,
               "rel": statistics.fmean(r["rewrite_acc"] for r in results),
               "gen": statistics.fmean(r["rephrase_acc"] for r in results if "rephrase_acc" in r),
               "loc": statistics.fmean(r["locality"] for r in results if "locality" in r) if with_loc else None,
               "nloc": nloc,
               "routed_edits": routed_share(editor, [r.prompt for r in requests]),
               "routed_rephrases": routed_share(editor, [r.rephrase for r in requests if r.rephrase]),
               "routed_neighbours": routed_share(editor, probes.prompts)}
        rows.append(row)
        print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    suffix = "" if args.match_radius is None else f"_match{args.match_radius}"
    out = run / f"{args.gate}_radius_sweep{suffix}.json"
    # the match gate's radius held while the subject gate was swept (a match sweep's radius is in each row)
    held = getattr(side, "match_radius", None) if args.gate == "subject" else None
    write_json(out, {"run": str(run), "gate": args.gate, "match_radius": held, "rows": rows,
                     "hparams": hp.to_dict(), "code_version": code_version()})
    plot(rows, out.with_suffix(".png"), f"{payload['alg_name']} T={cfg['ds_size']}, {Path(data['path']).name}: "
         f"Gen and Rel against nloc by {args.gate} radius")
    print(f"written {out}")


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gated = [r for r in rows if r["radius"] != "none"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for metric, marker in (("gen", "o"), ("rel", "s")):
        ax.plot([r["nloc"] for r in gated], [r[metric] for r in gated], marker=marker, label=metric.capitalize())
    for r in gated:
        ax.annotate(r["radius"], (r["nloc"], r["gen"]), fontsize=7, xytext=(3, -9), textcoords="offset points")
    for r in rows:
        if r["radius"] == "none":
            ax.scatter([r["nloc"]], [r["gen"]], marker="x", color="k", label="no gate (Gen)")
    ax.set_xlabel("neighbourhood Loc (nloc)")
    ax.set_ylabel("score")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
