#!/usr/bin/env python
"""Why a WISE or MEMOIR run's edits (or their rephrasings) fail: not routed home, or routed home but not held.

    python scripts/diagnose_routing.py outputs/WISE-T1000 --state checkpoint --blocks 0:100 450:500
    python scripts/diagnose_routing.py outputs/MEMOIR-T400 --texts rephrase --blocks 0:100 300:400
    python scripts/diagnose_routing.py outputs/MEMOIR-T400 --texts rephrase --set irr_threshold=0.4

For each block of the saved state's edits (by position in the stream), on the edit prompts (``--texts prompt``:
Rel) or their rephrasings (``rephrase``: Gen): the share the router sends to the method's memory and to the route
value that holds the edit (``own_memory``: WISE-Retrieve's memory holding it, MEMOIR's stored mask of that edit),
the score as served, with the router and gates replaced by one that picks each edit's own route value
(``_memory_forced``), and with the gates off (``_no_gate``: the fact gate, and WISE's match gate; the method's
own router alone picks). Routed home but still wrong means the memory lost the edit; recovered by forcing means
the router or a gate lost it; recovered by forcing but not with the gates off means the router's own threshold
did. ``--set KEY=VALUE`` as in ``score_saved.py``. Prints a table and writes
``<run>/diagnose_<state>_T<k>[_rephrase][_KEY-VALUE].json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from run_lifelong_editing import saved_run_data
from score_saved import parse_overrides
from wise_edit import HyperParams, LifelongEditor
from wise_edit.chat import chat_requests
from wise_edit.metrics import score_answers
from wise_edit.persistence import read_record
from wise_edit.results import code_version, write_json
from wise_edit.routing import MAIN


def rel(editor: LifelongEditor, prompts: list[str], targets: list[str]) -> float:
    return statistics.fmean(score_answers(editor.model, editor.tok, prompts, targets).accuracy)


@contextmanager
def swapped(obj: object, name: str, value: object) -> Iterator[None]:
    """``obj.name`` set to ``value`` for the block, restored after it (also on error)."""
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def owners(editor: LifelongEditor, positions: range) -> list[int]:
    """The route value holding each edit. WISE: the memory, read from the side memories' own record of the edits
    each holds (in stream order: WISE-Retrieve fills one memory after the other, WISE-Merge has one). MEMOIR:
    the edit's own stored mask, stored in stream order."""
    memories = getattr(editor.method.memory, "memories", None)
    if memories is None:
        return list(positions)
    held = [m for m, memory in enumerate(memories) for _ in memory.edit_keys]
    return [held[position] for position in positions]


def diagnose(editor: LifelongEditor, prompts: list[str], targets: list[str], own: list[int],
             metric: str = "rel") -> dict[str, float]:
    """Routed share, share routed to the route value holding the edit (``own``), and the token accuracy
    (named ``metric``): as served, with each edit's own route value forced on its rows (no router, no gate), and
    with the gates off (the fact gate and WISE's match gate; the method's own router alone picks)."""
    side, layer = editor.method.memory, editor.method.layer
    routes = []
    with torch.no_grad():
        for prompt in prompts:
            editor.model(**editor.tok(prompt, return_tensors="pt").to(editor.model.device))
            routes.append(int(layer.last_route[0]))
    served = rel(editor, prompts, targets)
    forced = []
    for memory in sorted(set(own)):
        rows = [i for i, m in enumerate(own) if m == memory]

        def force(keys: torch.Tensor, mask: torch.Tensor, memory: int = memory) -> torch.Tensor:
            return torch.full(keys.shape[:1], memory, dtype=torch.long, device=keys.device)

        with swapped(layer, "memory", side), swapped(side, "route", force):
            forced.append(rel(editor, [prompts[i] for i in rows], [targets[i] for i in rows]) * len(rows))
    match_gate_off = swapped(side, "match_radius", None) if hasattr(side, "match_radius") else nullcontext()
    with swapped(layer, "memory", side), match_gate_off:
        no_gate = rel(editor, prompts, targets)
    return {"routed": statistics.fmean(r != MAIN for r in routes),
            "own_memory": statistics.fmean(r == m for r, m in zip(routes, own)),
            metric: served, f"{metric}_memory_forced": sum(forced) / len(prompts), f"{metric}_no_gate": no_gate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="output_dir of a sequential CLI run of WISE or MEMOIR")
    parser.add_argument("--state", choices=["checkpoint", "edits"], default="edits")
    parser.add_argument("--blocks", nargs="+", default=["0:100"], help="edit positions start:stop")
    parser.add_argument("--texts", choices=["prompt", "rephrase"], default="prompt",
                        help="score the edit prompts (Rel) or their rephrasings (Gen)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="diagnose with this hyperparameter changed (one that changes no trained weight)")
    args = parser.parse_args()
    run = Path(args.run)
    state = run / args.state
    saved = read_record(state)["hparams"]
    overrides = parse_overrides(args.overrides, HyperParams.from_dict(saved, source=str(state)).to_dict())
    editor = LifelongEditor(HyperParams.from_dict({**saved, **overrides}, source=str(state)))
    editor.load_state(state)
    if editor.hparams.alg_name not in ("WISE", "MEMOIR"):
        raise SystemExit(f"error: {run / args.state} holds {editor.hparams.alg_name} edits; this diagnoses WISE "
                         "and MEMOIR")
    k = len(editor.edit_log)
    dataset, _, chat, _ = saved_run_data(run, k)
    requests = chat_requests(editor.tok, dataset.requests) if chat else dataset.requests
    metric = "rel" if args.texts == "prompt" else "gen"
    own = owners(editor, range(k))
    rows = []
    for block in args.blocks:
        start, stop = (int(x) for x in block.split(":"))
        if not 0 <= start < stop <= k:
            raise SystemExit(f"error: block {block} is outside the {k} edits of {run / args.state}")
        positions = [i for i in range(start, stop) if args.texts == "prompt" or requests[i].rephrase]
        if not positions:
            raise SystemExit(f"error: no request of block {block} has a rephrasing")
        texts = [requests[i].prompt if args.texts == "prompt" else requests[i].rephrase for i in positions]
        rows.append({"block": block, **diagnose(editor, texts, [requests[i].target for i in positions],
                                                [own[i] for i in positions], metric)})
    columns = ("block", "routed", "own_memory", metric, f"{metric}_memory_forced", f"{metric}_no_gate")
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(row[c] if c == "block" else f"{row[c]:.3f}" for c in columns) + " |")
    suffix = "".join(["" if args.texts == "prompt" else "_rephrase", *(f"_{key}-{value}" for key, value in
                                                                       overrides.items())])
    out = run / f"diagnose_{args.state}_T{k}{suffix}.json"
    write_json(out, {"rows": rows, "edits": k, "texts": args.texts, "hparams_overrides": overrides,
                     "state": str(state), "code_version": code_version()})
    print(f"written {out}")


if __name__ == "__main__":
    main()
