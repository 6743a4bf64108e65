#!/usr/bin/env python
"""Speed of editing and of edited inference on the bundled model; prints tables and writes JSON.

    python scripts/bench_edit_speed.py --methods WISE MEMOIR --edits 20 --out outputs/bench.json

Where an edit's time goes: per method, the shipped hparams file (``--set key=value`` overrides it, e.g.
``--set stop_margin=2.0``) edits the first ``--edits`` ZsRE requests in sequence through the editor, and the
seconds of each phase (``wise_edit.timing``: key capture, protection inverse, optimisation steps, holding the
edit, calibration, the method's preparation and the final scoring) are printed per edit, with the mean
number of steps.

``--compare-loops``: on the same requests and a fixed number of steps (no early stop, so both loops do the
same work), median seconds per edit of the fast loop and of the naive loop (full forward each step) and how
far their loss curves differ when each edit starts from the same state; then the median forward latency of
the edited model vs the unedited one on ``--prompts`` unrelated prompts. For MEMOIR also the cost of matching
10,000 stored masks against one forward pass on a 32-token prompt. Ratios are measured in one run on the same
inputs, so they hold on a noisy shared machine where absolute seconds do not.

``--saved DIR ...`` adds the same latency check for edit states saved by a long CLI run (e.g. the
``<output_dir>/edits`` of a T=100 run), measuring inference overhead after that many edits.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

from wise_edit import EditRequest, HyperParams, LifelongEditor, load_edits
from wise_edit.data import add_negatives, load_dataset, load_probes
from wise_edit.models import load_model, load_tokenizer
from wise_edit.results import code_version, write_json
from wise_edit.timing import collect_phases
from wise_edit.tokens import encode_batch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "zsre"


def edit_times(hparams: HyperParams, model, tok, requests: list[EditRequest],
               starts: list[dict] | None = None) -> tuple[list[float], list[list[float]], list[dict]]:
    """Seconds and loss curve of each edit, applied in sequence, and (without ``starts``) the method's state
    before each edit.

    With ``starts``, each edit begins from that state instead (loaded untimed): the naive loop then replays
    the fast loop's edits from the very same states, so the two curves differ only by the loop. Chained
    independently, Adam's per-entry scaling would let rounding differences compound from edit to edit.
    """
    editor = LifelongEditor(hparams, model=model, tok=tok)
    editor.prepare(requests)
    editor.apply(requests[:1], record=False)  # warm-up (prefix generation, allocator), not timed
    editor.method.load_state_dict(editor.method.state_dict())
    times, curves, states = [], [], []
    for i, request in enumerate(requests):
        if starts is not None:
            editor.method.load_state_dict(starts[i])
        else:
            states.append(editor.method.state_dict())
        stats = editor.apply([request], record=False)
        curves.append(stats["losses"])
        times.append(stats["seconds"])
    return times, curves, states


@torch.no_grad()
def forward_latencies(models: list, batches: list, repeats: int = 3) -> list[float]:
    """Median seconds of one single-prompt forward pass per model, the models interleaved prompt by prompt
    so that machine noise hits them alike."""
    samples: list[list[float]] = [[] for _ in models]
    for _ in range(repeats):
        for batch in batches:
            for model, times in zip(models, samples):
                t0 = time.perf_counter()
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
                times.append(time.perf_counter() - t0)
    return [statistics.median(times) for times in samples]


def breakdown(hparams: HyperParams, requests: list[EditRequest], same_form: list[str]) -> dict:
    """Seconds per edit of each phase of ``len(requests)`` sequential edits through the editor."""
    editor = LifelongEditor(hparams)
    editor.method.prefixes  # generated once per model: not part of any edit
    with collect_phases() as sums:
        start = time.perf_counter()
        run = editor.edit_requests(requests, sequential_edit=True, progress=False, same_form=same_form)
        total = time.perf_counter() - start
    n = len(requests)
    return {"method": hparams.alg_name, "edits": n, "total_s_per_edit": total / n,
            "seconds_per_edit": run["timing"]["seconds_per_edit"],
            "phases_s_per_edit": {k: v / n for k, v in sorted(sums.items())},
            "mean_steps": statistics.fmean(r["train_steps"] for r in run["requests"]),
            "summary": run["summary"], "hparams": hparams.to_dict()}


def mask_matching(model, tok, hparams) -> dict:
    from wise_edit.methods.memoir.mask_db import MaskDatabase

    d_in = model.get_submodule(hparams.inner_params[0].rsplit(".", 1)[0].replace("[", ".").replace("]", "")).in_features
    gen = torch.Generator().manual_seed(0)
    db = MaskDatabase(d_in, model.device)
    idx = torch.rand(10_000, d_in, generator=gen).argsort(dim=1)[:, : hparams.top_k]
    db.add(torch.zeros(10_000, d_in, dtype=torch.bool).scatter_(1, idx, True))
    query = torch.zeros(1, d_in, dtype=torch.bool)
    query[0, idx[0]] = True
    ids = torch.randint(100, 10_000, (1, 32), generator=gen)
    match, fwd = [], []
    for _ in range(20):
        t0 = time.perf_counter()
        db.best(query)
        match.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            model(input_ids=ids)
        fwd.append(time.perf_counter() - t0)
    return {"stored_masks": 10_000, "match_seconds": statistics.median(match),
            "forward32_seconds": statistics.median(fwd),
            "match_over_forward": statistics.median(match) / statistics.median(fwd)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=["WISE", "MEMOIR"])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--edits", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10, help="optimisation steps per edit (fixed)")
    parser.add_argument("--prompts", type=int, default=100, help="unrelated prompts for the latency check")
    parser.add_argument("--saved", nargs="*", default=[], help="saved edit states to check the latency of")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="hparams overrides (YAML values)")
    parser.add_argument("--compare-loops", action="store_true", help="also the fast vs naive loop comparison")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench_edit_speed.json"))
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}

    tok = load_tokenizer(args.model)
    ds = load_dataset("zsre", DATA / "zsre_mend_edit.json", args.edits, DATA / "zsre_mend_train_1k.json")
    unrelated = load_dataset("zsre", DATA / "zsre_mend_train_1k.json", args.prompts)
    batches = [encode_batch(tok, [r.locality_question], [None]) for r in unrelated.requests]
    negatives = load_probes("zsre", DATA / "zsre_mend_train_1k.json", (0, 500))
    add_negatives(ds.requests, negatives)
    phases = [breakdown(HyperParams.from_hparams(ROOT / "hparams" / alg / f"{args.model}.yaml").replace(**overrides),
                        ds.requests, negatives.prompts) for alg in args.methods]
    names = sorted({k for r in phases for k in r["phases_s_per_edit"]})
    print(f"{'method':8} {'s/edit':>7} {'#steps':>6} " + " ".join(f"{k:>10}" for k in names))
    for r in phases:
        print(f"{r['method']:8} {r['seconds_per_edit']:7.2f} {r['mean_steps']:6.1f} "
              + " ".join(f"{r['phases_s_per_edit'].get(k, 0.0):10.3f}" for k in names))
    rows = []
    for alg in args.methods if args.compare_loops else []:
        base = HyperParams.from_hparams(ROOT / "hparams" / alg / f"{args.model}.yaml").replace(
            n_iter=args.steps, stop_loss=0.0)
        result: dict = {"method": alg}
        curves, starts = {}, None
        for fast in (True, False):
            model = load_model(args.model)
            times, curves[fast], states = edit_times(base.replace(fast_loop=fast), model, tok, ds.requests, starts)
            starts = states
            result["fast_s_per_edit" if fast else "naive_s_per_edit"] = statistics.median(times)
            if fast:
                plain = load_model(args.model)
                result["latency_unedited_s"], result["latency_edited_s"] = forward_latencies([plain, model], batches)
                result["inference_overhead"] = result["latency_edited_s"] / result["latency_unedited_s"] - 1
                if alg == "MEMOIR":
                    result["mask_matching"] = mask_matching(plain, tok, base)
        result["speedup"] = result["naive_s_per_edit"] / result["fast_s_per_edit"]
        result["max_loss_gap"] = max(abs(a - b) for ca, cb in zip(curves[True], curves[False]) for a, b in zip(ca, cb))
        result["max_relative_loss_gap"] = max(abs(a - b) / max(abs(b), 1e-12)
                                              for ca, cb in zip(curves[True], curves[False]) for a, b in zip(ca, cb))
        rows.append(result)
    saved_rows = []
    for directory in args.saved:
        editor = load_edits(directory)
        plain = load_model(editor.hparams.model_name)
        unedited, edited = forward_latencies([plain, editor.model], batches)
        saved_rows.append({"saved": directory, "method": editor.hparams.alg_name, "edits": len(editor.edit_log),
                           "latency_unedited_s": unedited, "latency_edited_s": edited,
                           "inference_overhead": edited / unedited - 1})

    if rows:
        print(f"{'method':8} {'fast s/edit':>11} {'naive s/edit':>12} {'speedup':>8} {'loss gap':>9} "
              f"{'rel. gap':>9} {'overhead':>9}")
    for r in rows:
        print(f"{r['method']:8} {r['fast_s_per_edit']:11.2f} {r['naive_s_per_edit']:12.2f} {r['speedup']:7.1f}x "
              f"{r['max_loss_gap']:9.1e} {r['max_relative_loss_gap']:9.1e} {100 * r['inference_overhead']:8.1f}%")
        if "mask_matching" in r:
            m = r["mask_matching"]
            print(f"  MEMOIR: matching 10,000 masks {1000 * m['match_seconds']:.2f} ms vs forward(32 tokens) "
                  f"{1000 * m['forward32_seconds']:.1f} ms: ratio {m['match_over_forward']:.4f}")
    for r in saved_rows:
        print(f"{r['method']:8} after {r['edits']} edits ({r['saved']}): inference overhead "
              f"{100 * r['inference_overhead']:.1f}%")
    path = write_json(args.out, {"breakdown": phases, "rows": rows, "saved": saved_rows, "args": vars(args), "code_version": code_version(),
                                 "edits_after_which_latency_measured": args.edits})
    print(f"written {path}")


if __name__ == "__main__":
    main()
