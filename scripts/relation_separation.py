#!/usr/bin/env python
"""Can anything in the model tell a rephrasing of an edit from a question about another relation of its subject?

    python scripts/relation_separation.py                 # CounterFact dev part, SmolLM2
    python scripts/relation_separation.py --layers 2 4 8 --model smollm2-135m

On the dev part of ``counterfact-train.json`` (subjects first seen in records 5000-9999, SPEC section 4), for
each same-subject stream record: its prompt against its rephrasing (should match) and against its subject's
records that ask another relation (should not). For three readings of a prompt -- the fact gate's plain
agreement of early keys (``wise_edit.fact_gate.agreement``) per layer, the cosine of the last prompt token's
hidden state per layer, and the cosine of the next-token distributions -- prints the AUC: the chance that a
rephrasing scores above an other-relation question (0.5: no better than a coin). Writes JSON next to the table
with ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from wise_edit.data import load_dataset, relation_ids
from wise_edit.fact_gate import agreement
from wise_edit.models import load_model, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def auc(positive: list[float], negative: list[float]) -> float:
    """P(positive > negative) over all pairs."""
    p, n = torch.tensor(positive), torch.tensor(negative)
    return float((p[:, None] > n[None, :]).float().mean())


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "counterfact" / "counterfact-train.json"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4, 6, 8, 12])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model, tok = load_model(args.model, "cpu"), load_tokenizer(args.model)
    path = Path(args.data)
    records = json.loads(path.read_text())
    relations = relation_ids(records, path)
    edited = load_dataset("counterfact", path, stream="same_subject", first_record=5000).extra["records"]
    cases = []
    for e in edited:
        others = [j for j, r in enumerate(records) if j != e and r["subject"] == records[e]["subject"]
                  and relations[j] != relations[e]]
        cases.append((records[e]["prompt"], records[e]["rephrase_prompt"], [records[j]["prompt"] for j in others]))
    cache: dict[str, dict] = {}

    def read(text: str) -> dict:
        if text not in cache:
            keys: dict[int, torch.Tensor] = {}
            hooks = [model.model.layers[k].mlp.down_proj.register_forward_hook(
                lambda m, a, o, k=k: keys.__setitem__(k, a[0][0, 1:].float())) for k in args.layers]
            out = model(**tok(text, return_tensors="pt"), output_hidden_states=True)
            for hook in hooks:
                hook.remove()
            cache[text] = {"keys": keys, "last": [h[0, -1].float() for h in out.hidden_states],
                           "next": torch.softmax(out.logits[0, -1].float(), -1)}
        return cache[text]

    measures = {f"plain agreement, layer {k}": (lambda a, b, k=k: agreement(a["keys"][k], b["keys"][k]))
                for k in args.layers}
    n_states = len(read(cases[0][0])["last"])
    measures.update({f"last-token state, layer {k}": (lambda a, b, k=k: float(F.cosine_similarity(
        a["last"][k], b["last"][k], dim=0))) for k in range(n_states)})
    measures["next-token distribution"] = lambda a, b: float(F.cosine_similarity(a["next"], b["next"], dim=0))
    rows = []
    for name, measure in measures.items():
        positive = [measure(read(p), read(r)) for p, r, _ in cases]
        negative = [measure(read(p), read(o)) for p, _, others in cases for o in others]
        rows.append({"measure": name, "auc": auc(positive, negative), "rephrasings": len(positive),
                     "other_relations": len(negative)})
        print(f"{name:32s} AUC {rows[-1]['auc']:.3f}  ({len(positive)} rephrasings, {len(negative)} other relations)")
    if args.out:
        Path(args.out).write_text(json.dumps({"data": str(path), "model": args.model, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
