#!/usr/bin/env python
"""Edit ZsRE records with a plugin method through upstream EasyEdit's own ``BaseEditor`` and print the
framework's pre/post metrics (its ``compute_edit_quality``, scored right after each edit as upstream does).

Run it in the bridge environment with upstream EasyEdit first on the path (scripts/setup_easyedit.sh):

    PYTHONPATH=$(bash scripts/setup_easyedit.sh --upstream-path) .venv-easyedit/bin/python \\
        scripts/compare_with_easyedit.py --alg WISE --records 10 --out outputs/easyedit-WISE-10.json

The plugin's own figures for the same records come from
``.venv/bin/python scripts/run_lifelong_editing.py alg_name=WISE ds_size=10`` (every request scored on the final
model). The table prints the framework's means over the first 3 and over all records.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alg", default="WISE")
    parser.add_argument("--records", type=int, default=10)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "zsre" / "zsre_mend_edit.json"))
    parser.add_argument("--out", help="write the per-record metrics here (JSON)")
    args = parser.parse_args()

    from wise_edit import easyedit

    easyedit.register(override=True)
    from easyeditor import BaseEditor

    hparams = easyedit.hparams_class(args.alg).from_hparams(ROOT / "hparams" / args.alg / "smollm2-135m.yaml")
    records = json.loads(Path(args.data).read_text())[:args.records]
    editor = BaseEditor.from_hparams(hparams)
    start = time.perf_counter()
    metrics, _, _ = editor.edit(
        prompts=[r["src"] for r in records], target_new=[r["alt"] for r in records],
        ground_truth=[r["answers"][0] for r in records], rephrase_prompts=[r["rephrase"] for r in records],
        locality_inputs={"nq": {"prompt": [r["loc"] for r in records],
                                "ground_truth": [r["loc_ans"] for r in records]}},
        subject=[r["subject"] for r in records], sequential_edit=True, verbose=False)
    rows = [{"pre_rel": statistics.fmean(m["pre"]["rewrite_acc"]),
             "pre_gen": statistics.fmean(m["pre"]["rephrase_acc"]),
             "post_rel": statistics.fmean(m["post"]["rewrite_acc"]),
             "post_gen": statistics.fmean(m["post"]["rephrase_acc"]),
             "post_loc": statistics.fmean(m["post"]["locality"]["nq_acc"])} for m in metrics]
    print("| method | records | pre Rel | pre Gen | post Rel | post Gen | post Loc |\n|---|---|---|---|---|---|---|")
    for k in sorted({min(3, len(rows)), len(rows)}):
        mean = {key: statistics.fmean(float(r[key]) for r in rows[:k]) for key in rows[0]}
        print(f"| {args.alg} | {k} | " + " | ".join(f"{mean[key]:.3f}" for key in rows[0]) + " |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"alg_name": args.alg, "records": args.records,
                                              "edit_and_eval_seconds": time.perf_counter() - start,
                                              "per_record": rows}, indent=1))


if __name__ == "__main__":
    main()
