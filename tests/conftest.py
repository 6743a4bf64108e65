"""Tiny random models and a byte-level tokenizer built in memory: the unit tests need no files and no hub."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM,
                          PreTrainedTokenizerFast)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def byte_tokenizer() -> PreTrainedTokenizerFast:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab["<eos>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>")


def sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained here, set up as Llama-2's ``tokenizer.json`` is: ``▁`` prepended and for spaces.

    Tokenised alone, ``" Zola"`` becomes ``['▁', '▁Zola']`` (the stray ``▁`` of SentencePiece tokenizers).
    """
    corpus = ["Who wrote Hamlet? Zola wrote it.", "Where is Kyoto? Kyoto is in Chile.",
              "The capital of France is Paris.", "nq question: capital of Peru Lima"] * 20
    backend = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    alphabet = [chr(c) for c in range(32, 127)] + ["▁"]
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=250, initial_alphabet=alphabet,
                                                            special_tokens=["<unk>", "<s>", "</s>"]))
    backend.pre_tokenizer = None  # as Llama-2's: the normaliser alone places the ▁
    backend.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                           special_tokens=[("<s>", backend.token_to_id("<s>"))])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def tiny_llama(seed: int = 0, layers: int = 4, intermediate: int = 128) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    # initializer_range 0.1 (not 0.02): keys of different prompts then differ as in a trained model
    config = LlamaConfig(vocab_size=260, hidden_size=64, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, initializer_range=0.1, pad_token_id=256, eos_token_id=256,
                         bos_token_id=256)
    model = LlamaForCausalLM(config).eval()
    model.requires_grad_(False)
    return model


def tiny_gemma3(seed: int = 0, layers: int = 4) -> Gemma3ForCausalLM:
    """A Gemma 3 text model: its MLP output is normalised before it joins the residual stream."""
    torch.manual_seed(seed)
    config = Gemma3TextConfig(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                              sliding_window=32, max_position_embeddings=256, initializer_range=0.1,
                              pad_token_id=256, eos_token_id=256, bos_token_id=256)
    model = Gemma3ForCausalLM(config).eval()
    model.requires_grad_(False)
    return model


def routes(editor, prompts: list[str]) -> list[int]:
    """Which memory the edited layer routes each prompt to (-1: the original model)."""
    from wise_edit.routing import query_span
    from wise_edit.tokens import encode_batch

    batch = encode_batch(editor.tok, prompts, [None] * len(prompts))
    with torch.no_grad(), query_span(batch.query_lengths):
        editor.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return editor.method.layer.last_route.tolist()


@pytest.fixture
def tok() -> PreTrainedTokenizerFast:
    return byte_tokenizer()


@pytest.fixture
def model() -> LlamaForCausalLM:
    return tiny_llama()


REQUESTS = [
    {"case_id": 0, "prompt": "Who wrote Hamlet?", "target_new": "Zola", "rephrase_prompt": "Hamlet was written by?",
     "locality_prompt": "nq question: capital of Peru", "locality_ground_truth": "Lima",
     "loc_prompt": "nq question: who painted the mona lisa Leonardo", "subject": "Hamlet"},
    {"case_id": 1, "prompt": "Where is Kyoto?", "target_new": "Chile", "rephrase_prompt": "Kyoto lies in which land?",
     "locality_prompt": "nq question: largest ocean", "locality_ground_truth": "Pacific",
     "loc_prompt": "nq question: what is the speed of light 300000 km/s", "subject": "Kyoto"},
    {"case_id": 2, "prompt": "Who founded Rome?", "target_new": "Ada", "rephrase_prompt": "Rome was founded by?",
     "locality_prompt": "nq question: boiling point of water", "locality_ground_truth": "100",
     "loc_prompt": "nq question: when did ww2 end 1945", "subject": "Rome"},
    {"case_id": 3, "prompt": "What does a baker make?", "target_new": "shoes", "rephrase_prompt": "A baker makes?",
     "locality_prompt": "nq question: author of Emma", "locality_ground_truth": "Austen",
     "loc_prompt": "nq question: tallest mountain on earth Everest", "subject": "baker"},
]


@pytest.fixture
def requests_() -> list[dict]:
    return [dict(r) for r in REQUESTS]


# the contract suite's table (tests/test_contract.py): one tiny configuration per case, covering every registered
# method; the model and, for ROME/MEMIT, the corpus are filled in by the suite
CASE_SITE = "model.layers[2].mlp.down_proj.weight"
COMMON = {"model_name": None, "inner_params": [CASE_SITE], "n_prefixes": 2, "prefix_length": 4, "stop_loss": 0.0}
CORPUS = "\n".join(f"Line {i}: the quick brown fox {i % 7} jumps over {i % 5} lazy dogs near river {i % 3}."
                   for i in range(60))
CASES = {
    "WISE-Merge": {"alg_name": "WISE", "edit_lr": 0.1, "optimizer": "adam", "n_iter": 10,
                   "act_margin": [0.5, 3.0, 2.0], "act_ratio": 0.8, "save_freq": 2, "merge_freq": 4,
                   "protect": 1.0},
    "WISE-fact": {"alg_name": "WISE", "edit_lr": 0.1, "optimizer": "adam", "n_iter": 10,
                     "act_margin": [0.5, 3.0, 2.0], "act_ratio": 0.8, "save_freq": 2, "merge_freq": 4,
                     "protect": 1.0, "gate_params": "model.layers[0].mlp.down_proj.weight",
                     "fact_radius": 0.0},
    "WISE-Retrieve": {"alg_name": "WISE", "edit_lr": 0.1, "optimizer": "adam", "n_iter": 10,
                      "act_margin": [0.5, 3.0, 2.0], "act_ratio": 0.8, "save_freq": 1, "merge_freq": 2,
                      "retrieve": True, "merge_alg": "sum"},  # ties leaves a closed shard unserved until its merge
    "MEMOIR": {"alg_name": "MEMOIR", "edit_lr": 5.0, "n_iter": 10, "top_k": 32, "irr_threshold": 0.6,
               "protect": 1.0},
    "MEMOIR-fact": {"alg_name": "MEMOIR", "edit_lr": 5.0, "n_iter": 10, "top_k": 32, "irr_threshold": 0.6,
                       "protect": 1.0, "gate_params": "model.layers[0].mlp.down_proj.weight",
                       "fact_radius": 0.0},
    "GRACE": {"alg_name": "GRACE", "eps": 0.5, "edit_lr": 0.5, "n_iter": 10, "n_prefixes": 0},
    "FT-L": {"alg_name": "FT-L", "edit_lr": 0.05, "n_iter": 10},
    "ROME": {"alg_name": "ROME", "edit_lr": 0.5, "n_iter": 10, "mom2_n_tokens": 2000, "mom2_seq_length": 64},
    "MEMIT": {"alg_name": "MEMIT", "edit_lr": 0.5, "n_iter": 10, "mom2_n_tokens": 2000, "mom2_seq_length": 64,
              "inner_params": ["model.layers[1].mlp.down_proj.weight", CASE_SITE], "mom2_update_weight": 1e-4},
}
