"""Tokenising prompt/target pairs and padding batches, shared by the metrics and the training batches.

Prompt and target are tokenised separately and concatenated, so the split between them is exact (no
guessing where the prompt ends in a re-tokenised string), and padding is done here, explicitly, on the side
each use needs: right for teacher forcing, left for generation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # (B, S)
    attention_mask: torch.Tensor  # (B, S) 1 = real token
    labels: torch.Tensor  # (B, S) target token ids, -100 elsewhere
    query_lengths: torch.Tensor  # (B,) number of prompt tokens (the part that routing decides on)

    def to(self, device: torch.device) -> "TokenBatch":
        return TokenBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels,
                                                   self.query_lengths)))


def encode_pair(tok: PreTrainedTokenizerBase, prompt: str, target: str | None, max_length: int | None = None
                ) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt`` and of ``" " + target`` (the framework's join), prompt cut from the left."""
    prompt_ids = tok(prompt, add_special_tokens=True)["input_ids"]
    target_ids = tok(" " + target, add_special_tokens=False)["input_ids"] if target else []
    if max_length is not None and len(prompt_ids) + len(target_ids) > max_length:
        keep = max(max_length - len(target_ids), 1)
        prompt_ids = prompt_ids[-keep:]
    return prompt_ids, target_ids


def pad_pairs(pairs: list[tuple[list[int], list[int]]], pad_id: int, side: str = "right") -> TokenBatch:
    """Pad prompt+target rows into one batch; labels mark the target tokens only."""
    width = max(len(p) + len(t) for p, t in pairs)
    ids, mask, labels = [], [], []
    for prompt_ids, target_ids in pairs:
        row = prompt_ids + target_ids
        pad = width - len(row)
        lab = [-100] * len(prompt_ids) + target_ids
        if side == "right":
            ids.append(row + [pad_id] * pad)
            mask.append([1] * len(row) + [0] * pad)
            labels.append(lab + [-100] * pad)
        else:
            ids.append([pad_id] * pad + row)
            mask.append([0] * pad + [1] * len(row))
            labels.append([-100] * pad + lab)
    return TokenBatch(
        input_ids=torch.tensor(ids, dtype=torch.long),
        attention_mask=torch.tensor(mask, dtype=torch.long),
        labels=torch.tensor(labels, dtype=torch.long),
        query_lengths=torch.tensor([len(p) for p, _ in pairs], dtype=torch.long),
    )


def encode_batch(tok: PreTrainedTokenizerBase, prompts: list[str], targets: list[str | None],
                 max_length: int | None = None, side: str = "right") -> TokenBatch:
    pairs = [encode_pair(tok, p, t, max_length) for p, t in zip(prompts, targets)]
    return pad_pairs(pairs, tok.pad_token_id, side)
