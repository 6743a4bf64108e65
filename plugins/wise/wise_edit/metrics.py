"""The evaluation protocol's metrics (README, "Evaluation protocol"), computed in padded batches.

Every function feeds ``prompt + " " + answer`` once (teacher forcing) and reads the model's argmax (or
log-probability) at the positions that predict the answer tokens. Routing decides on the prompt tokens only
(:func:`wise_edit.routing.query_span`), as it would when the prompt is served with ``generate``.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .routing import query_span
from .tokens import TokenBatch, encode_batch, encode_pair, pad_pairs


@dataclass
class AnswerScores:
    """Per-row results of one teacher-forced pass."""

    predictions: list[torch.Tensor]  # argmax token at each answer position
    targets: list[torch.Tensor]  # the answer tokens
    nll: list[float]  # mean negative log-likelihood of the answer tokens

    @property
    def accuracy(self) -> list[float]:
        return [token_accuracy(p, t) for p, t in zip(self.predictions, self.targets)]

    @property
    def perplexity(self) -> list[float]:
        return [math.exp(v) for v in self.nll]


def token_accuracy(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of answer positions where the prediction equals the target token."""
    if target.numel() == 0:
        raise ValueError("empty answer: nothing to score")
    return (predicted == target).float().mean().item()


@torch.no_grad()
def _score_batch(model: PreTrainedModel, batch: TokenBatch) -> AnswerScores:
    device = model.device
    batch = batch.to(device)
    with query_span(batch.query_lengths):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logits = logits[:, :-1].float()
    labels = batch.labels[:, 1:]
    logprobs = torch.log_softmax(logits, dim=-1)
    preds, targets, nll = [], [], []
    for row in range(labels.shape[0]):
        positions = (labels[row] != -100).nonzero().squeeze(-1)
        answer = labels[row, positions]
        preds.append(logits[row, positions].argmax(-1).cpu())
        targets.append(answer.cpu())
        nll.append(-logprobs[row, positions, answer].mean().item())
    return AnswerScores(preds, targets, nll)


def score_answers(model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str], answers: list[str],
                  batch_size: int = 16) -> AnswerScores:
    """Teacher-forced predictions for each (prompt, answer) pair; every token is fed, none is cut."""
    out = AnswerScores([], [], [])
    for start in range(0, len(prompts), batch_size):
        part = encode_batch(tok, prompts[start:start + batch_size], answers[start:start + batch_size])
        scores = _score_batch(model, part)
        out.predictions += scores.predictions
        out.targets += scores.targets
        out.nll += scores.nll
    return out


def locality(before: list[torch.Tensor], after: list[torch.Tensor]) -> list[float]:
    """Fraction of answer positions whose argmax token is unchanged by editing."""
    return [token_accuracy(a, b) for a, b in zip(after, before)]


def generation_exact_match(model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str],
                           answers: list[str], batch_size: int = 16) -> list[float]:
    """1.0 where greedy ``generate`` (KV cache on) reproduces every answer token, else 0.0."""
    pairs = [encode_pair(tok, p, a) for p, a in zip(prompts, answers)]
    generated = _greedy(model, tok, [p for p, _ in pairs], [len(t) for _, t in pairs], batch_size, stop=False)
    return [float(ids[:len(target)] == target) for ids, (_, target) in zip(generated, pairs)]


@torch.no_grad()
def _greedy(model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[list[int]], caps: list[int],
            batch_size: int, stop: bool) -> list[list[int]]:
    """Greedy continuations (KV cache on) of the tokenised ``prompts``, ``caps[i]`` new tokens at most (with
    ``stop``: cut before the first end-of-sequence token; without: exactly ``caps[i]``).

    Rows are batched in order of (cap, prompt length): a batch runs until its longest cap, and a stream's caps
    and prompt lengths vary by 10x, so mixed batches spend most of their steps on padding and finished rows.
    """
    eos = tok.eos_token_id if stop else None
    order = sorted(range(len(prompts)), key=lambda i: (caps[i], len(prompts[i])))
    out: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = pad_pairs([(prompts[i], []) for i in rows], tok.pad_token_id, side="left").to(model.device)
        steps = max(caps[i] for i in rows)
        limits = {"eos_token_id": eos} if stop else {"min_new_tokens": steps}
        generated = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                   max_new_tokens=steps, do_sample=False, use_cache=True,
                                   pad_token_id=tok.pad_token_id, **limits)[:, batch.input_ids.shape[1]:].cpu()
        for row, i in enumerate(rows):
            ids = generated[row, :caps[i]].tolist()
            if eos is not None and eos in ids:
                ids = ids[:ids.index(eos)]
            out[i] = ids
    return out


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and the articles a/an/the removed, whitespace collapsed (the SQuAD rule)."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def generation_cap(tok: PreTrainedTokenizerBase, prompt: str, answer: str) -> int:
    """How many tokens a free answer may take: twice the reference answer's tokens plus 8."""
    return 2 * len(encode_pair(tok, prompt, answer)[1]) + 8


def generate_answers(model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str], caps: list[int],
                     batch_size: int = 16) -> list[str]:
    """Greedy ``generate`` from each prompt until the end-of-sequence token or ``caps[i]`` new tokens: what a
    user reads. The text is decoded without special tokens."""
    ids = _greedy(model, tok, [encode_pair(tok, p, None)[0] for p in prompts], caps, batch_size, stop=True)
    return [tok.decode(row, skip_special_tokens=True) for row in ids]


def answers_match(generated: list[str], references: list[str]) -> list[float]:
    """1.0 where the normalised generated text equals the normalised reference, else 0.0."""
    return [float(normalize_answer(g) == normalize_answer(r)) for g, r in zip(generated, references)]
