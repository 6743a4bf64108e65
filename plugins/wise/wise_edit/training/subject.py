"""Training rows located by their subject: where ROME and MEMIT read keys and write values.

For each request: the prompt (with its target as labels) plain and behind every context prefix, each with the
position of the subject's last token; then one "{subject} is a" row whose next-token distribution must not
move (the KL term that keeps the subject's other facts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from ..request import EditRequest
from ..tokens import TokenBatch, cap_length, pad_pairs, subject_span, training_pair


@dataclass
class SubjectBatch:
    batch: TokenBatch
    positions: torch.Tensor  # (B,) the subject's last token in each row
    request: torch.Tensor  # (B,) which request each row belongs to
    is_kl: torch.Tensor  # (B,) bool: the "{subject} is a" rows

    @property
    def plain_rows(self) -> torch.Tensor:
        """Index of each request's unprefixed prompt row (the first row of each request)."""
        first = torch.ones_like(self.request, dtype=torch.bool)
        first[1:] = self.request[1:] != self.request[:-1]
        return (first & ~self.is_kl).nonzero().squeeze(-1)


def subject_batch(tok: PreTrainedTokenizerBase, requests: list[EditRequest], prefixes: list[str],
                  max_length: int, kl_template: str = "{} is a", target_eos: bool = False) -> SubjectBatch:
    pairs, positions, owner, is_kl = [], [], [], []
    for index, request in enumerate(requests):
        where = f"request {request.case_id}"
        subject = request.subject
        if not subject:
            raise ValueError(f"{where}: this method needs the field 'subject'")
        for prefix in ["", *prefixes]:
            text = prefix + request.prompt
            full_ids, target_ids = training_pair(tok, text, request.target, target_eos)
            prompt_ids, target_ids = cap_length(full_ids, target_ids, max_length, where)
            end = subject_span(tok, text, subject, where)[1] - (len(full_ids) - len(prompt_ids))
            if end < 1:
                raise ValueError(f"{where}: the subject falls outside max_length={max_length} tokens")
            pairs.append((prompt_ids, target_ids))
            positions.append(end - 1)
            owner.append(index)
            is_kl.append(False)
    for index, request in enumerate(requests):
        text = kl_template.format(request.subject)
        ids = tok(text, add_special_tokens=True)["input_ids"]
        # one placeholder label after the text, so the runner computes the logits of its last position
        pairs.append((ids, [tok.eos_token_id]))
        positions.append(subject_span(tok, text, request.subject, f"request {request.case_id}")[1] - 1)
        owner.append(index)
        is_kl.append(True)
    return SubjectBatch(pad_pairs(pairs, tok.pad_token_id, side="right"), torch.tensor(positions),
                        torch.tensor(owner), torch.tensor(is_kl))
