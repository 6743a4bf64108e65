#!/usr/bin/env python
"""Why a WISE run's old edits fail: not routed to the side memory, or routed but no longer held by it.

    python scripts/diagnose_wise.py outputs/WISE-T1000 --state checkpoint --blocks 0:100 450:500

For each block of the saved state's edits (by position in the stream): the share of edit prompts the router
sends to a side memory and to the memory that holds the edit (WISE-Retrieve has several), Rel as served, Rel
with the router and gates replaced by one that picks each edit's own memory, and Rel with the gates off (subject
gate and match gate: the activation router alone picks). Routed to its own memory but still wrong means the
memory lost the edit; Rel recovered by forcing means the router or a gate lost it. Prints a table and writes
``<run>/diagnose_<state>_T<k>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from run_lifelong_editing import saved_run_data
from wise_edit import LifelongEditor
from wise_edit.chat import chat_requests
from wise_edit.metrics import score_answers
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
    """The memory holding each edit, read from the side memories' own record of the edits each holds (in
    stream order: WISE-Retrieve fills one memory after the other, WISE-Merge has one)."""
    held = [m for m, memory in enumerate(editor.method.memory.memories) for _ in memory.edit_keys]
    return [held[position] for position in positions]


def diagnose(editor: LifelongEditor, prompts: list[str], targets: list[str], own: list[int]) -> dict[str, float]:
    """Routed share, share routed to the memory holding the edit (``own``), and Rel: as served, with each edit's
    own memory forced on its rows (no router, no gate), and with the gates off (the subject gate and the match
    gate; the activation router alone picks the memory)."""
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
    with swapped(layer, "memory", side), swapped(side, "match_radius", None):
        no_gate = rel(editor, prompts, targets)
    return {"routed": statistics.fmean(r != MAIN for r in routes),
            "own_memory": statistics.fmean(r == m for r, m in zip(routes, own)),
            "rel": served, "rel_memory_forced": sum(forced) / len(prompts), "rel_no_gate": no_gate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="output_dir of a sequential CLI run of WISE")
    parser.add_argument("--state", choices=["checkpoint", "edits"], default="edits")
    parser.add_argument("--blocks", nargs="+", default=["0:100"], help="edit positions start:stop")
    args = parser.parse_args()
    run = Path(args.run)
    editor = LifelongEditor.from_saved(run / args.state)
    if editor.hparams.alg_name != "WISE":
        raise SystemExit(f"error: {run / args.state} holds {editor.hparams.alg_name} edits; this diagnoses WISE")
    k = len(editor.edit_log)
    dataset, _, chat, _ = saved_run_data(run, k)
    requests = chat_requests(editor.tok, dataset.requests) if chat else dataset.requests
    rows = []
    for block in args.blocks:
        start, stop = (int(x) for x in block.split(":"))
        if not 0 <= start < stop <= k:
            raise SystemExit(f"error: block {block} is outside the {k} edits of {run / args.state}")
        part = requests[start:stop]
        rows.append({"block": block, **diagnose(editor, [r.prompt for r in part], [r.target for r in part],
                                                owners(editor, range(start, stop)))})
    columns = ("block", "routed", "own_memory", "rel", "rel_memory_forced", "rel_no_gate")
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(row[c] if c == "block" else f"{row[c]:.3f}" for c in columns) + " |")
    out = run / f"diagnose_{args.state}_T{k}.json"
    write_json(out, {"rows": rows, "edits": k, "state": str(run / args.state), "code_version": code_version()})
    print(f"written {out}")


if __name__ == "__main__":
    main()
