r"""The TL;DR text format, in one place (Swamy et al. 2025, Table 1; Stiennon et al. 2020 / REBEL).

    prompt   = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
    response = " " + summary + EOS

The post is cut at its last newline (repeatedly) until the prompt fits its token budget (512); with no
newline left it is cut at its last whitespace, and a post with no whitespace left token by token
(:func:`format_prompt`). Fig. 10's prompt ends in "Two-Word TL;DR:" instead. Every module that turns text
into model input or back goes through this one: training data (:mod:`allroads.llm.data.rows`), reference
summaries scored as completions (:func:`completion_from_text`), the generated preference datasets.
"""
from __future__ import annotations

import re

__all__ = ["PROMPT_TEMPLATE", "TWO_WORD_PROMPT_TEMPLATE", "format_prompt", "cut_post_once", "encode_prompt",
           "encode_response"]

PROMPT_TEMPLATE = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
"""The paper's prompt (Table 1)."""
TWO_WORD_PROMPT_TEMPLATE = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTwo-Word TL;DR:"
"""Fig. 10 (App. B.1): the standard prompt with "TL;DR:" replaced by "Two-Word TL;DR:"."""
PROMPT_RE = re.compile(r"^SUBREDDIT: r/(?P<subreddit>.*?)\n\nTITLE: (?P<title>.*?)\n\nPOST: (?P<post>.*)\n\nTL;DR:\s*$", re.S)


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def format_prompt(subreddit: str, title: str, post: str, tokenizer, max_tokens: int = 512, where: str = "", *,
                  template: str = PROMPT_TEMPLATE) -> tuple[str, bool]:
    r"""The paper's prompt, with the post cut until the prompt fits ``max_tokens`` tokens (Table 1).

        "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"

    (``template=TWO_WORD_PROMPT_TEMPLATE`` ends in "Two-Word TL;DR:" instead, Fig. 10.)

    Cutting rule, applied repeatedly until it fits: drop the post's text from its last newline on
    (Stiennon et al.'s preprocessing); if the post has no newline, drop it from its last whitespace;
    if it has no whitespace either, keep only as many of its leading tokens as fit. Trailing
    whitespace of the cut post is stripped. Returns ``(prompt, was_cut)``; raises a ValueError naming
    ``where`` if even an empty post does not fit (title too long).
    """
    cut = False
    while True:
        prompt = template.format(subreddit=subreddit, title=title, post=post)
        n = _n_tokens(tokenizer, prompt)
        if n <= max_tokens:
            return prompt, cut
        if not post:
            raise ValueError(
                f"{where or 'prompt'}: does not fit {max_tokens} tokens even with an empty post ({n} tokens); "
                "the title/subreddit are too long: raise max_prompt_tokens or drop the row"
            )
        cut = True
        post = cut_post_once(post, tokenizer, n - max_tokens)


def cut_post_once(post: str, tokenizer, excess: int) -> str:
    """One step of :func:`format_prompt`'s cutting rule, for a prompt ``excess`` tokens over its budget: the post
    up to its last newline; else up to its last whitespace; else its leading tokens less ``excess``."""
    if "\n" in post:
        return post[: post.rindex("\n")].rstrip()
    if re.search(r"\s", post):
        return post[: max(i for i, ch in enumerate(post) if ch.isspace())].rstrip()
    ids = tokenizer(post, add_special_tokens=False)["input_ids"]
    keep = max(0, len(ids) - excess)
    return tokenizer.decode(ids[:keep]) if keep else ""


def encode_prompt(prompt: str, tokenizer) -> list[int]:
    """Token ids of a formatted prompt (no special tokens added)."""
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def encode_response(text: str, tokenizer, max_tokens: int | None = None) -> tuple[list[int], bool]:
    """Token ids of ``" " + text + EOS``, cut to ``max_tokens`` (None: not cut); returns ``(ids, was_cut)``.
    A cut response carries no EOS."""
    ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if max_tokens is None:
        return ids, False
    return ids[:max_tokens], len(ids) > max_tokens
