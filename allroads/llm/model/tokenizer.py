r"""Tokenizers of every stage: the GPT-NeoX-20B BPE of Pythia (a hub id or a ``tokenizer.json``), or the word-level
``tiny`` tokenizer over the synthetic tasks' vocabulary; and :func:`tokenizer_digest`, what a stage's cache key holds
of its tokenizer (its content, so the stage code need not import this module or the synthetic tasks)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from allroads.llm.data.synthetic import synthetic_vocabulary
from allroads.llm.model.models import hub_error

__all__ = ["build_tiny_tokenizer", "load_tokenizer", "tokenizer_digest"]


def build_tiny_tokenizer(words: list[str] | None = None):
    """An offline word-level tokenizer over the synthetic vocabulary (whitespace-split words).

    Ids: ``<|endoftext|>`` = 0 (EOS, as in Pythia), ``<|padding|>`` = 1, ``<unk>`` = 2, then ``words``.
    Decoding joins words with single spaces (newlines are not kept).
    """
    words = words if words is not None else synthetic_vocabulary()
    vocab = {"<|endoftext|>": 0, "<|padding|>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|padding|>",
                                   unk_token="<unk>")


def load_tokenizer(name: str):
    """``"tiny"`` → :func:`build_tiny_tokenizer`; a ``tokenizer.json`` path → the GPT-NeoX-20B BPE from a
    file; otherwise ``AutoTokenizer.from_pretrained(name)``. A pad token
    distinct from EOS is ensured (Pythia: ``<|padding|>`` = 1)."""
    if name == "tiny":
        return build_tiny_tokenizer()
    if name.endswith(".json"):
        return PreTrainedTokenizerFast(tokenizer_file=name, eos_token="<|endoftext|>", pad_token="<|padding|>")
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except Exception as err:  # noqa: BLE001
        if Path(name).exists():
            raise
        raise hub_error(name, "tokenizer", err) from err
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        if "<|padding|>" in tok.get_vocab():
            tok.pad_token = "<|padding|>"
        else:
            tok.add_special_tokens({"pad_token": "<|padding|>"})
    return tok


def tokenizer_digest(tokenizer) -> str:
    """SHA-256 of what a tokenizer maps text to: its serialized fast tokenizer (vocabulary, merges, normalizer,
    pre-tokenizer) and its special tokens. Two tokenizers with one digest give every text the same ids."""
    body = {"tokenizer": tokenizer.backend_tokenizer.to_str(), "special": tokenizer.special_tokens_map,
            "len": len(tokenizer)}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
