r"""The Hugging Face path's decode loop: one random stream per (seed, prompt, sample), rows that stop leave the batch.

:func:`decode` samples ``n`` continuations of each of ``b`` left-padded prompts from a causal LM with a key/value
cache, written here instead of calling ``model.generate`` for three reasons:

* **A random stream per (seed, prompt, sample).** The token of row (prompt i, sample j) at step t is drawn by the
  inverse CDF of softmax(logits / T) at one uniform u(seed, i, j, t), a counter-based hash of those four integers
  (:func:`stream_uniforms`; integer arithmetic, so the same on every device). A sample therefore depends on its own
  indices only: not on the batch it is decoded in, the other prompts, how many processes share the prompts, or which
  rows have finished — sharding or re-batching never changes a sample (floating-point rounding of the logits aside,
  which moves a token only when u falls within that rounding of a CDF boundary). ``generate`` draws every row from
  one generator, so any change of batch changes every sample after it.
* **Finished rows leave the batch.** A row that has produced EOS is dropped from the next step's forward pass and
  from the cache (``batch_select_indices``), so short samples stop costing compute.
* **The prompt is run once for its n samples** (the prefill of all but its last token, repeated n times in the cache;
  :func:`allroads.llm.model.sample.sample` documented this before the loop was its own).

``T = 0`` is greedy (argmax; no draw). Positions are those ``generate`` gives left-padded rows (cumulative sum of the
attention mask), so a model sees what it would see under ``generate``.
"""
from __future__ import annotations

import torch

from allroads.llm.model.models import forward_takes

__all__ = ["stream_keys", "uniforms_at", "stream_uniforms", "decode"]

_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` for int64 tensors holding uint32 values, with no int64 overflow (c in 16-bit halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (lowbias32: xor-shift / multiply rounds) on int64 tensors holding uint32 values."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def stream_keys(seed: int, prompt_index: torch.Tensor, sample_index: torch.Tensor) -> torch.Tensor:
    """Each row's stream key, a 32-bit hash of (``seed``, its prompt index, its sample index); int64 (R,)."""
    key = _hash32(torch.full_like(prompt_index, seed & _M32) ^ _hash32(torch.full_like(prompt_index, seed >> 32)))
    for part in (prompt_index, sample_index):
        key = _hash32(key ^ (part & _M32))
    return key


def uniforms_at(keys: torch.Tensor, step: int) -> torch.Tensor:
    """u ∈ (0, 1), float64, one per row: draw ``step`` of the streams ``keys`` (:func:`stream_keys`), with 53 random
    bits (two chained 32-bit hashes)."""
    key = _hash32(keys ^ (step & _M32))
    hi, lo = _hash32(key ^ 0x9E3779B9) >> 6, _hash32(key ^ 0x7F4A7C15) >> 5  # 26 and 27 bits
    return ((hi * (1 << 27) + lo).double() + 0.5) / float(1 << 53)


def stream_uniforms(seed: int, prompt_index: torch.Tensor, sample_index: torch.Tensor, step: int) -> torch.Tensor:
    """u ∈ (0, 1), float64, one per row: a function of (``seed``, the row's prompt index, its sample index, ``step``)
    only. ``prompt_index`` / ``sample_index``: int64 (R,). The decode loop hashes the keys once and then only the
    step (:func:`stream_keys`, :func:`uniforms_at`)."""
    return uniforms_at(stream_keys(seed, prompt_index, sample_index), step)


def _draw(scores: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """The token of each row: argmax when ``u`` is None (greedy), else the inverse CDF of softmax(scores) at u."""
    if u is None:
        return scores.argmax(-1)
    cdf = torch.softmax(scores.float(), dim=-1).double().cumsum(-1)  # (R, V)
    tok = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1)).squeeze(1)
    return tok.clamp_(max=scores.shape[-1] - 1)


def _step(model, cache, **inputs):
    """One forward pass with the key/value cache (the argument is ``cache`` from transformers 5.2x, else
    ``past_key_values``), logits of the last position only where the model can skip the others: (logits, cache)."""
    key = "cache" if forward_takes(model, "cache") else "past_key_values"
    extra = {"logits_to_keep": 1} if forward_takes(model, "logits_to_keep") else {}
    if cache is not None:
        extra[key] = cache
    out = model(**inputs, use_cache=True, **extra)
    return out.logits[:, -1], (out[key] if key in out else out.past_key_values)


def _prefill(model, ids: torch.Tensor, mask: torch.Tensor, n: int):
    """The cache of every prompt's tokens but its last, repeated n times (None when the prompts are one token)."""
    if ids.shape[1] < 2:
        return None
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    _, cache = _step(model, None, input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1])
    if n > 1:
        cache.batch_repeat_interleave(n)
    return cache


@torch.no_grad()
def decode(model, ids: torch.Tensor, mask: torch.Tensor, *, n: int, max_new_tokens: int, temperature: float,
           eos: int, pad: int, seed: int, prompt_index: torch.Tensor, record_logp: bool = False):
    """``n`` samples of each left-padded prompt ``ids`` / ``mask`` (b, P) (module docstring). ``prompt_index`` (b,):
    each prompt's index in the whole set it belongs to (its stream's key). Returns ``tokens`` (b·n, max_new_tokens)
    long, ``pad`` after a row's EOS (rows ``i·n … i·n + n − 1`` are prompt i's samples), and, with
    ``record_logp``, ``logp`` (b·n, max_new_tokens) float64: log softmax(logits / T) of each drawn token (untempered
    for T = 0), 0 after EOS."""
    device, R = ids.device, ids.shape[0] * n
    inv_t = 1.0 if temperature == 0 else 1.0 / temperature
    rows = torch.arange(R, device=device)                  # the active rows' places in the output
    keys = stream_keys(seed, prompt_index.to(device).repeat_interleave(n),
                       torch.arange(n, device=device).repeat(ids.shape[0]))  # each row's stream
    attn = mask.repeat_interleave(n, 0)
    pos = attn.sum(-1) - 1                                  # position of each row's next input (its last prompt token)
    cur = ids[:, -1].repeat_interleave(n)
    cache = _prefill(model, ids, mask, n)
    tokens = torch.full((R, max_new_tokens), pad, dtype=torch.long, device=device)
    logp = torch.zeros((R, max_new_tokens), dtype=torch.float64, device=device) if record_logp else None
    for t in range(max_new_tokens):
        logits, cache = _step(model, cache, input_ids=cur[:, None], attention_mask=attn, position_ids=pos[:, None])
        scores = logits.float() * inv_t                     # (R_active, V)
        u = None if temperature == 0 else uniforms_at(keys, t)
        tok = _draw(scores, u)
        tokens[rows, t] = tok
        if record_logp:
            logp[rows, t] = torch.log_softmax(scores.double(), -1).gather(1, tok[:, None]).squeeze(1)
        going = tok != eos
        if t + 1 == max_new_tokens or not bool(going.any()):
            break
        if not bool(going.all()):                           # finished rows leave the batch and the cache
            keep = going.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, keys, attn, pos, tok = rows[keep], keys[keep], attn[keep], pos[keep], tok[keep]
        attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=1)
        pos, cur = pos + 1, tok
    return tokens, logp
