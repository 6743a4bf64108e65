"""Tokenising prompt/target pairs and padding batches, shared by the metrics and the training batches.

A pair is tokenised as the framework scores it: the joined text ``prompt + " " + target`` in one call, split
where the target's characters begin (character offsets). Tokenising ``" " + target`` on its own instead would
give SentencePiece tokenizers (Llama-2, Mistral) a stray ``▁`` token in front of every target. Padding is done
here, explicitly, on the side each use needs: right for teacher forcing, left for generation.

Scoring never truncates. Training may cap a row at ``max_length`` tokens (:func:`cap_length`), and says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


class TokenizationError(ValueError):
    """A prompt/target pair cannot be split into prompt tokens and target tokens."""


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # (B, S)
    attention_mask: torch.Tensor  # (B, S) 1 = real token
    labels: torch.Tensor  # (B, S) target token ids, -100 elsewhere
    query_lengths: torch.Tensor  # (B,) number of prompt tokens (the part that routing decides on)

    def to(self, device: torch.device) -> "TokenBatch":
        return TokenBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels,
                                                   self.query_lengths)))


def encode_pair(tok: PreTrainedTokenizerBase, prompt: str, target: str | None) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt`` and of its answer, from one tokenisation of ``prompt + " " + target``.

    The target's tokens are those that cover any of its characters (the joining space included); a token that
    spans the boundary counts as the target's, so every target character is scored.
    """
    if not target:
        return tok(prompt, add_special_tokens=True)["input_ids"], []
    text = prompt + " " + target
    if not tok.is_fast:  # no offsets: the prompt's own tokens must be a prefix of the joined text's
        ids = tok(text, add_special_tokens=True)["input_ids"]
        prompt_ids = tok(prompt, add_special_tokens=True)["input_ids"]
        if ids[:len(prompt_ids)] != prompt_ids:
            raise TokenizationError(f"cannot split {text!r} into prompt and target tokens with a slow tokenizer "
                                    "(the prompt's tokens change when the target follows); use a fast tokenizer")
        return prompt_ids, ids[len(prompt_ids):]
    enc = tok(text, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True)
    ids, offsets, special = enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"]
    split = next((i for i, ((_, end), sp) in enumerate(zip(offsets, special)) if end > len(prompt) and not sp),
                 None)
    if split is None:
        raise TokenizationError(f"the target {target!r} produced no tokens after the prompt {prompt!r}")
    return ids[:split], [i for i, sp in zip(ids[split:], special[split:]) if not sp]


def subject_span(tok: PreTrainedTokenizerBase, text: str, subject: str, where: str) -> tuple[int, int]:
    """Token positions ``[start, end)`` of the last occurrence of ``subject`` in ``tok(text)`` (special tokens
    counted): the tokens that cover any of its characters."""
    at = text.rfind(subject)
    if at < 0:
        raise TokenizationError(f"{where}: subject {subject!r} does not occur in {text!r}")
    if not tok.is_fast:  # no offsets: count the tokens of the text up to the subject's start and end
        before = len(tok(text[:at], add_special_tokens=True)["input_ids"])
        return before, len(tok(text[:at + len(subject)], add_special_tokens=True)["input_ids"])
    enc = tok(text, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True)
    inside = [i for i, ((a, b), sp) in enumerate(zip(enc["offset_mapping"], enc["special_tokens_mask"]))
              if not sp and a < at + len(subject) and b > at]
    return inside[0], inside[-1] + 1


def training_pair(tok: PreTrainedTokenizerBase, prompt: str, target: str, target_eos: bool = False
                  ) -> tuple[list[int], list[int]]:
    """:func:`encode_pair`, with the tokenizer's end-of-sequence token after the target when ``target_eos``
    (an edit trained to stop: ``generate`` then ends the answer there instead of repeating it)."""
    prompt_ids, target_ids = encode_pair(tok, prompt, target)
    if target_eos:
        if tok.eos_token_id is None:
            raise TokenizationError("target_eos is set but the tokenizer has no eos_token")
        target_ids = target_ids + [tok.eos_token_id]
    return prompt_ids, target_ids


def cap_length(prompt_ids: list[int], target_ids: list[int], max_length: int, where: str
               ) -> tuple[list[int], list[int]]:
    """A training row cut to ``max_length`` tokens from the prompt's left, with a warning naming ``where``."""
    if len(prompt_ids) + len(target_ids) <= max_length:
        return prompt_ids, target_ids
    keep = max(max_length - len(target_ids), 1)
    log.warning("%s: training row of %d tokens cut to its last %d prompt tokens + %d target tokens "
                "(max_length=%d)", where, len(prompt_ids) + len(target_ids), keep, len(target_ids), max_length)
    return prompt_ids[-keep:], target_ids


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
                 side: str = "right") -> TokenBatch:
    """Whole prompt/target pairs, padded (nothing is cut: scoring sees every token)."""
    return pad_pairs([encode_pair(tok, p, t) for p, t in zip(prompts, targets)], tok.pad_token_id, side)
