"""Prompts in the tokenizer's chat template (``use_chat_template``), as an instruction-tuned model is served.

Every question a run feeds — the edit prompt, its rephrasing, the locality, portability, same-form and named-kind probes —
becomes one user turn followed by the assistant's opening (``add_generation_prompt``), so editing, routing and
every metric see the text a chat user's question becomes. Irrelevant training texts (``irrelevant_text``) are
text, not questions, and stay as they are.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from transformers import PreTrainedTokenizerBase

from .request import EditRequest

#: request fields that hold a question put to the model
QUESTION_FIELDS = ("prompt", "rephrase", "locality_question", "portability_question", "same_form_negative")


def chat_prompt(tok: PreTrainedTokenizerBase, question: str) -> str:
    """``question`` as a user turn, followed by the opening of the assistant's answer."""
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"use_chat_template is set but the tokenizer ({tok.name_or_path or type(tok).__name__}) "
                         "has no chat template")
    return tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                   tokenize=False)


def chat_prompts(tok: PreTrainedTokenizerBase, questions: Sequence[str]) -> list[str]:
    return [chat_prompt(tok, q) for q in questions]


def chat_requests(tok: PreTrainedTokenizerBase, requests: Sequence[EditRequest]) -> list[EditRequest]:
    """Copies of ``requests`` with every question field in the chat template."""
    return [r.replace(**{f: chat_prompt(tok, getattr(r, f)) for f in QUESTION_FIELDS if getattr(r, f)},
                      probes=tuple(dataclasses.replace(p, question=chat_prompt(tok, p.question)) for p in r.probes))
            for r in requests]
