"""The second moment C = E[k kᵀ] of the keys entering an edited matrix, from a local text corpus.

ROME and MEMIT spread their update along C⁻¹k so that keys seen in ordinary text are disturbed least.
C depends only on the unedited model below the matrix, the corpus and the token budget, so it is computed
once and cached on disk; the cache key hashes the input embeddings (never edited) rather than the edited
matrix, so a resumed or continued edit stream finds the statistics of the original model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..cache import cached_tensor
from ..models import cache_dir
from ..sites import EditSite, run_through


def corpus_token_stream(tok: PreTrainedTokenizerBase, corpus: Path, n_tokens: int) -> list[int]:
    """The first ``n_tokens`` tokens of the corpus' non-empty, non-heading lines."""
    ids: list[int] = []
    with corpus.open(encoding="utf-8") as handle:
        for line in handle:
            text = line.strip()
            if not text or (text.startswith("=") and text.endswith("=")):
                continue
            ids += tok(" " + text, add_special_tokens=False)["input_ids"]
            if len(ids) >= n_tokens:
                break
    if len(ids) < n_tokens:
        raise ValueError(f"{corpus} has {len(ids)} tokens, fewer than the {n_tokens} asked for (mom2_n_tokens)")
    return ids[:n_tokens]


def _cache_key(model: PreTrainedModel, site: EditSite, corpus: Path, n_tokens: int, seq_length: int) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    digest.update(model.get_input_embeddings().weight.detach().cpu().contiguous().numpy().tobytes())
    digest.update(f"{site.module_path}|{n_tokens}|{seq_length}".encode())
    digest.update(hashlib.sha256(corpus.read_bytes()).digest())
    return digest.hexdigest()[:24]


@torch.no_grad()
def key_second_moment(model: PreTrainedModel, tok: PreTrainedTokenizerBase, sites: list[EditSite], corpus: Path,
                      n_tokens: int, seq_length: int = 128, batch_size: int = 8,
                      progress: bool = True) -> list[torch.Tensor]:
    """E[k kᵀ] over ``n_tokens`` corpus tokens for each site's input, (d_in, d_in) each, cached on disk."""
    if not corpus.is_file():
        raise FileNotFoundError(f"key-statistics corpus not found: {corpus} (hparams key 'mom2_dataset')")
    paths = [cache_dir() / "mom2" / f"{_cache_key(model, s, corpus, n_tokens, seq_length)}.pt" for s in sites]
    computed: list[torch.Tensor] = []

    def moment(i: int) -> torch.Tensor:  # one corpus pass serves every site whose cache file is missing
        if not computed:
            computed.extend(_second_moments(model, tok, sites, corpus, n_tokens, seq_length, batch_size, progress))
        return computed[i]

    return [cached_tensor(path, lambda i=i: moment(i), model.device).to(model.device)
            for i, path in enumerate(paths)]


def _second_moments(model: PreTrainedModel, tok: PreTrainedTokenizerBase, sites: list[EditSite], corpus: Path,
                    n_tokens: int, seq_length: int, batch_size: int, progress: bool) -> list[torch.Tensor]:
    ids = torch.tensor(corpus_token_stream(tok, corpus, n_tokens))
    rows = ids[: len(ids) // seq_length * seq_length].view(-1, seq_length)
    sums = [torch.zeros(s.linear.weight.shape[1], s.linear.weight.shape[1], dtype=torch.float64,
                        device=model.device) for s in sites]
    deepest = max(sites, key=lambda site: site.layer_index)  # the layers above it need not run

    def accumulate(i: int):
        def hook(module, args, out):
            keys = args[0].reshape(-1, args[0].shape[-1]).double()
            sums[i].add_(keys.T @ keys)
        return hook

    hooks = [s.linear.register_forward_hook(accumulate(i)) for i, s in enumerate(sites)]
    try:
        for start in tqdm(range(0, rows.shape[0], batch_size), desc="key statistics", unit="batch",
                          disable=not progress):
            run_through(model, deepest.layer, input_ids=rows[start:start + batch_size].to(model.device))
    finally:
        for hook in hooks:
            hook.remove()
    return [(s / rows.numel()).float() for s in sums]
