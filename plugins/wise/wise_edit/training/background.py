"""The background activation: the mean key of irrelevant prompts at the edited matrix, cached on disk.

MEMOIR's TopHash subtracts it before picking a prompt's salient inputs. :func:`token_keys` keeps every token's
key instead (the pool of unedited questions that :mod:`wise_edit.matching` weighs edit tokens against).

Computed once per (model weights, layer, prompt set): the cache key hashes the edited matrix itself, so two
different models that share a name never share a background.
"""

from __future__ import annotations

import hashlib

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..cache import cached_tensor
from ..models import cache_dir
from ..request import EditRequest
from ..routing import query_mask
from ..sites import EditSite, run_through
from ..tokens import cap_length, encode_pair, pad_pairs
from .batch import generate_prefixes


def _cache_key(site: EditSite, weight: torch.Tensor, prompts: list[str]) -> str:
    digest = hashlib.sha256()
    digest.update(site.module_path.encode())
    digest.update(weight.detach().cpu().contiguous().numpy().tobytes())
    for prompt in prompts:
        digest.update(prompt.encode() + b"\0")
    return digest.hexdigest()[:24]


@torch.no_grad()
def background_mean(model: PreTrainedModel, tok: PreTrainedTokenizerBase, site: EditSite, weight: torch.Tensor,
                    prompts: list[str], max_length: int, batch_size: int = 16) -> torch.Tensor:
    """Mean over ``prompts`` of each prompt's mean key at ``site`` (d_in,)."""
    path = cache_dir() / "background" / f"{_cache_key(site, weight, prompts)}.pt"
    return cached_tensor(path, lambda: _mean_key(model, tok, site, prompts, max_length, batch_size),
                         weight.device).to(weight.device)


def _query_keys(model: PreTrainedModel, tok: PreTrainedTokenizerBase, site: EditSite, prompts: list[str],
                max_length: int, batch_size: int):
    """Yield, per batch of ``prompts``, the keys at ``site`` (B, S, d_in) and the mask of real tokens (B, S)."""
    captured: list[torch.Tensor] = []
    hook = site.linear.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    try:
        for start in range(0, len(prompts), batch_size):
            part = prompts[start:start + batch_size]
            pairs = [cap_length(*encode_pair(tok, p, None), max_length, f"background text {start + i}")
                     for i, p in enumerate(part)]
            batch = pad_pairs(pairs, tok.pad_token_id).to(model.device)
            captured.clear()
            run_through(model, site.layer, input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            yield captured[0], query_mask(batch.attention_mask, None)
    finally:
        hook.remove()


def _mean_key(model: PreTrainedModel, tok: PreTrainedTokenizerBase, site: EditSite, prompts: list[str],
              max_length: int, batch_size: int) -> torch.Tensor:
    means = []
    for keys, mask in _query_keys(model, tok, site, prompts, max_length, batch_size):
        weights = mask.to(keys.dtype)
        means.append((keys * weights[..., None]).sum(1) / weights.sum(1, keepdim=True))
    return torch.cat(means).mean(0)


@torch.no_grad()
def token_keys(model: PreTrainedModel, tok: PreTrainedTokenizerBase, site: EditSite, weight: torch.Tensor,
               prompts: list[str], max_length: int, batch_size: int = 16) -> torch.Tensor:
    """(N, d_in) the key of every token of every prompt at ``site`` (the pool of :mod:`wise_edit.matching`),
    cached on disk like :func:`background_mean`."""
    path = cache_dir() / "token_keys" / f"{_cache_key(site, weight, prompts)}-{max_length}.pt"
    return cached_tensor(path, lambda: torch.cat([keys[mask.bool()] for keys, mask in _query_keys(
        model, tok, site, prompts, max_length, batch_size)]), weight.device).to(weight.device)


def background_texts(requests: list[EditRequest], count: int, model: PreTrainedModel,
                     tok: PreTrainedTokenizerBase, prefix_length: int, source: str = "loc_prompt") -> list[str]:
    """The first ``count`` distinct texts of the stream's ``source`` (named as in EasyEdit and the hparams'
    ``background_from``: irrelevant ``loc_prompt`` texts, or ``negative_prompt`` questions of the edits' own
    form), or, without any, the model's own prefixes."""
    texts = list(dict.fromkeys(r.text(source) for r in requests if r.text(source)))[:count]
    return texts or generate_prefixes(model, tok, 20, prefix_length)
