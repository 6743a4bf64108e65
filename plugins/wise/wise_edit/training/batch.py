"""The per-edit training batch: the edit row, the same row behind short context prefixes, and irrelevant rows.

Prefixes make the edit hold when the question appears mid-text; they are generated once per model from a
few seed words (greedy, so the same model always gets the same prefixes).
"""

from __future__ import annotations

import logging
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..request import EditRequest
from ..tokens import TokenBatch, cap_length, pad_pairs, training_pair

log = logging.getLogger(__name__)

#: the request fields that hold irrelevant training texts, and what each is
IRRELEVANT = {"irrelevant_text": "an irrelevant text (EasyEdit's loc_prompt)",
              "same_form_negative": "an unedited question of the edits' form (negative_prompt)"}

#: two-word openers: this small instruct model answers a lone word with hyphenated junk
SEED_WORDS = ("The city", "Therefore, we", "Because of", "I think", "You can", "However, the", "In the",
              "We have", "It is", "This is", "She was", "When the", "After the", "Many people", "There are",
              "Today, the", "One of", "His work", "For the", "As a")


@torch.no_grad()
def generate_prefixes(model: PreTrainedModel, tok: PreTrainedTokenizerBase, count: int,
                      length: int = 8) -> list[str]:
    """``count`` short model-written openings (one per seed), each ending with a sentence break."""
    if count == 0:
        return []
    if count > len(SEED_WORDS):
        raise ValueError(f"at most {len(SEED_WORDS)} prefixes, asked for {count}")
    batch = pad_pairs([(tok(w)["input_ids"], []) for w in SEED_WORDS[:count]], tok.pad_token_id, side="left")
    batch = batch.to(model.device)
    out = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=length,
                         do_sample=False, pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(out, skip_special_tokens=True)
    return [" ".join(t.replace("\n", " ").split()).strip() + ". " for t in texts]


def edit_batch(tok: PreTrainedTokenizerBase, requests: list[EditRequest], prefixes: list[str],
               include_loc: bool, max_length: int, negatives: bool = False, target_eos: bool = False
               ) -> tuple[TokenBatch, torch.Tensor]:
    """Rows for the requests (each plain and behind every prefix) and, if asked, their ``irrelevant_text`` rows
    (and with ``negatives`` their ``same_form_negative`` rows: same-form questions, irrelevant too). With
    ``target_eos`` each target is followed by the end-of-sequence token.

    Returns the batch and a bool (B,) marking the irrelevant rows.
    """
    pairs, irrelevant = [], []
    for request in requests:
        where = f"request {request.case_id}"
        for prefix in ["", *prefixes]:
            pairs.append(cap_length(*training_pair(tok, prefix + request.prompt, request.target, target_eos),
                                    max_length, where))
            irrelevant.append(False)
    fields = (["irrelevant_text"] if include_loc else []) + (["same_form_negative"] if negatives else [])
    for field in fields:
        for request in requests:
            text = getattr(request, field)
            if not text:
                raise ValueError(f"request {request.case_id}: this method needs a {field!r} "
                                 f"({IRRELEVANT[field]}) for its training batch")
            ids = tok(text, add_special_tokens=True)["input_ids"]
            if len(ids) > max_length:
                log.warning("request %s: %s of %d tokens cut to its first %d (max_length)",
                            request.case_id, field, len(ids), max_length)
            pairs.append((ids[:max_length], []))
            irrelevant.append(True)
    return pad_pairs(pairs, tok.pad_token_id, side="right"), torch.tensor(irrelevant)


def plain_rows(n_requests: int, n_prefixes: int, device: torch.device) -> torch.Tensor:
    """Indices of each request's unprefixed row in an :func:`edit_batch` batch."""
    return torch.arange(n_requests, device=device) * (1 + n_prefixes)
