#!/usr/bin/env python
"""Score a saved edit state of a CLI run on the requests it holds: "quality at T=k" from one long stream.

    python scripts/score_saved.py outputs/WISE-zsre-T1000 --state checkpoint

A run with ``checkpoint_every`` keeps its latest checkpoint in ``<run>/checkpoint`` (and its final state in
``<run>/edits``). The state holds the first k edits of the run's stream; this scores those k requests on it,
exactly as a run with ``ds_size=k`` scores its final model (Rel, Gen, Loc against the unedited model, nloc on
the run's probes, and the per-block retention), and writes ``<run>/score_<state>_T<k>.json``. A run that has
not finished (no ``results.json`` yet: still running, or stopped) is read from the configuration the CLI
saved when it started (``<run>/.hydra/config.yaml``); its data files are then not checked against recorded
hashes, and the output says so.

``--set KEY=VALUE`` (repeatable) scores the state with a hyperparameter changed, for settings that change no
trained weight (a routing threshold such as MEMOIR's ``irr_threshold``, the fact gate's ``fact_radius``): one
saved dev stream then gives a whole sweep. The output file's name and its ``hparams_overrides`` say what was set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from run_lifelong_editing import relation_inputs, saved_run_data
from wise_edit import HyperParams, LifelongEditor
from wise_edit.chat import chat_prompts, chat_requests
from wise_edit.evaluation import by_block, summarize
from wise_edit.metrics import locality
from wise_edit.persistence import read_record
from wise_edit.results import code_version, markdown_table, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="output_dir of a sequential CLI run")
    parser.add_argument("--state", choices=["checkpoint", "edits"], default="edits")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="score with this hyperparameter changed (one that changes no trained weight)")
    args = parser.parse_args()
    run = Path(args.run)
    start = time.perf_counter()
    state = run / args.state
    meta = read_record(state)
    k = len(meta["edit_log"])
    dataset, probes, chat, verified = saved_run_data(run, k)
    saved = run / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(saved) if saved.exists() else OmegaConf.create(
        json.loads((run / "results.json").read_text())["config"]["run"])
    relations, _ = relation_inputs(cfg, dataset)
    # keys of today's code (a key added since the run has its default in the state's hyperparameters)
    overrides = parse_overrides(args.overrides, HyperParams.from_dict(meta["hparams"], source=str(state)).to_dict())
    editor = LifelongEditor(HyperParams.from_dict({**meta["hparams"], **overrides}, source=str(state)))
    requests = dataset.requests
    given = [r.prompt for r in requests]
    if chat:  # the run edited, routed and scored every question in the chat template: so does its scoring
        requests = chat_requests(editor.tok, requests)
        if probes:
            probes = dataclasses.replace(probes, prompts=chat_prompts(editor.tok, probes.prompts))
        if relations:
            relations = dataclasses.replace(relations, prompts=chat_prompts(editor.tok, relations.prompts))
    if [(r.prompt, r.target) for r in requests] != [(e["prompt"], e["target_new"]) for e in meta["edit_log"]]:
        raise SystemExit(f"error: {state} holds other edits than the first {k} requests of the run {run}")
    loc_before = editor.locality_before(requests)
    nloc_before = editor.answer_tokens(probes.prompts, probes.answers) if probes else None
    rloc_before = editor.answer_tokens(relations.prompts, relations.answers) if relations else None
    editor.load_state(state)
    fmt = dataset.format
    results = [{**result, "prompt": prompt}  # the questions as given, as the run's results.json shows them
               for result, prompt in zip(editor.score(requests, loc_before, fmt.rel_metric), given)]
    summary = summarize(results, fmt.rephrase_name)
    if probes:
        summary["nloc"] = statistics.fmean(locality(nloc_before, editor.answer_tokens(probes.prompts, probes.answers)))
    if relations and relations.prompts:
        summary["rloc"] = statistics.fmean(locality(rloc_before, editor.answer_tokens(relations.prompts,
                                                                                      relations.answers)))
    out = run / ("_".join([f"score_{args.state}_T{k}", *(f"{key}-{value}" for key, value in overrides.items())])
                 + ".json")
    write_json(out, {"summary": summary, "blocks": by_block(results, fmt.rephrase_name), "requests": results,
                     "state": str(state), "edits": k, "data_hashes_checked": verified, "alg_name": meta["alg_name"],
                     "hparams_overrides": overrides, "code_version": code_version(),
                     "seconds": time.perf_counter() - start})
    print(markdown_table([{"method": meta["alg_name"], "T": k, **summary}]))
    print(f"written {out}")


def parse_overrides(pairs: list[str], hparams: dict) -> dict:
    """``["irr_threshold=0.4"]`` -> ``{"irr_threshold": 0.4}``; a key the run's hyperparameters lack is refused."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: --set {pair!r}: expected KEY=VALUE")
        if key not in hparams:
            raise SystemExit(f"error: --set {pair!r}: the run's hyperparameters have no key {key!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


if __name__ == "__main__":
    main()
