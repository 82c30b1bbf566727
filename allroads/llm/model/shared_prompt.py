r"""Several responses to one prompt with the prompt run once: sequence log-probs and global-RM scores.

A causal LM's states at the prompt's positions do not depend on what follows the prompt, so the chosen and
rejected response of a pair (or the n samples of a prompt) can share one forward pass of the prompt:

    1. the prompts (B, P), left-padded, run once; their key/value cache and the logits of their last position
       (which predict each response's first token) are kept;
    2. the cache rows are gathered by ``prompt_index`` (N,) — response i continues prompt ``prompt_index[i]`` —
       and the responses (N, R), right-padded, run on top of it, with positions continuing the prompt's.

The values are those of :func:`allroads.llm.model.models.sequence_logps` / :func:`~allroads.llm.model.models.rewards`
on the concatenated ``prompt + response`` sequences (same maths, tested to 1e-10 in float64); gradients reach the
prompt's states from every response that reads them, summed, as in the separate forward passes. A pair then costs
P + 2R positions instead of 2(P + R): on TL;DR (P ≈ 400–550, R ≤ 53) close to half.
"""
from __future__ import annotations

import torch

from allroads.llm.model.models import RewardModel, forward_takes, position_ids_from_mask

__all__ = ["shared_prompt_logps", "shared_prompt_rewards", "cache_argument", "SharedPromptRewardModel"]


def cache_argument(model) -> str:
    """The name under which ``model``'s forward takes a key/value cache: ``cache`` (transformers ≥ 5.2x) or
    ``past_key_values`` (earlier). DDP / FSDP wrappers are looked through."""
    return "cache" if forward_takes(model, "cache") else "past_key_values"


def _cache_of(out, key: str):
    return out[key] if key in out else out.past_key_values


def _check(prompt_ids, prompt_mask, prompt_index, response_ids, response_mask) -> None:
    if prompt_ids.shape != prompt_mask.shape or response_ids.shape != response_mask.shape:
        raise ValueError(f"ids and masks differ in shape: prompts {tuple(prompt_ids.shape)} vs "
                         f"{tuple(prompt_mask.shape)}, responses {tuple(response_ids.shape)} vs {tuple(response_mask.shape)}")
    if prompt_index.shape != response_ids.shape[:1]:
        raise ValueError(f"prompt_index has shape {tuple(prompt_index.shape)}; one entry per response "
                         f"({response_ids.shape[0]}) expected")
    if not bool(response_mask[:, 0].all()):
        raise ValueError("every response needs ≥ 1 token, right-padded (response_mask[:, 0] all True)")


def _continue(model, prompt_mask, prompt_index, response_ids, response_mask, cache, key: str, **kw):
    """Forward the responses on the prompts' cache, gathered by ``prompt_index``."""
    cache.reorder_cache(prompt_index)  # index_select along the batch: out of place, so autograd sees it
    mask = torch.cat([prompt_mask[prompt_index], response_mask.to(prompt_mask.dtype)], 1)  # (N, P + R)
    start = prompt_mask.sum(1)[prompt_index].unsqueeze(1)  # (N, 1): real prompt tokens = first response position
    pos = start + torch.arange(response_ids.shape[1], device=response_ids.device).unsqueeze(0)
    return model(input_ids=response_ids, attention_mask=mask, position_ids=pos, use_cache=True, **{key: cache}, **kw)


def shared_prompt_logps(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, prompt_index: torch.Tensor,
                        response_ids: torch.Tensor, response_mask: torch.Tensor,
                        temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""log π_T(ξ_i | s_0) = Σ_h log softmax(logits_h / T)[a_h] for every response i, the prompt run once
    (module docstring); logits in float32 (float64 for a float64 model), as in ``sequence_logps``.

    Args: ``prompt_ids`` / ``prompt_mask`` (B, P) left-padded; ``prompt_index`` (N,) long, the prompt row of each
    response; ``response_ids`` / ``response_mask`` (N, R) right-padded, EOS included.
    Returns ``(logp, n_tokens)``, shape (N,) each.
    """
    _check(prompt_ids, prompt_mask, prompt_index, response_ids, response_mask)
    key = cache_argument(model)
    keep = {"logits_to_keep": 1} if forward_takes(model, "logits_to_keep") else {}
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids_from_mask(prompt_mask),
                use_cache=True, **keep)
    first = out.logits[:, -1][prompt_index]  # (N, V): the prompt's last position predicts the response's first token
    rest = _continue(model, prompt_mask, prompt_index, response_ids, response_mask, _cache_of(out, key), key).logits
    compute = torch.float64 if rest.dtype == torch.float64 else torch.float32
    logits = torch.cat([first.unsqueeze(1), rest[:, :-1]], 1).to(compute)  # (N, R, V): position j predicts token j
    if temperature != 1.0:
        logits = logits / temperature
    token_logp = torch.gather(logits, 2, response_ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
    mask = response_mask.to(token_logp.dtype)
    return (token_logp * mask).sum(-1), response_mask.sum(-1)


def shared_prompt_rewards(reward_model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                          prompt_index: torch.Tensor, response_ids: torch.Tensor,
                          response_mask: torch.Tensor) -> torch.Tensor:
    r"""Global RM score r(ξ_i) = w · h_L(ξ_i)[last real token] + b of every response, the prompt run once
    (shapes as :func:`shared_prompt_logps`). Returns (N,) in float32 (float64 for a float64 model)."""
    _check(prompt_ids, prompt_mask, prompt_index, response_ids, response_mask)
    base = reward_model.base_model
    key = cache_argument(base)
    out = base(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids_from_mask(prompt_mask),
               use_cache=True)
    hidden = _continue(base, prompt_mask, prompt_index, response_ids, response_mask, _cache_of(out, key),
                       key).last_hidden_state  # (N, R, d)
    last = response_mask.long().sum(1) - 1  # right-padded: the last real token
    h = hidden.gather(1, last.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])).squeeze(1)  # (N, d)
    r = reward_model.score(h).squeeze(-1)
    return r if r.dtype == torch.float64 else r.float()


class SharedPromptRewardModel(RewardModel):
    """:class:`~allroads.llm.model.models.RewardModel` whose ``forward`` takes the shared-prompt layout
    (``prompt_ids, prompt_mask, prompt_index, response_ids, response_mask``; :func:`shared_prompt_rewards`), so
    DDP / FSDP see one call; the same parameters and state-dict names (``hf.…``)."""

    def forward(self, prompt_ids, prompt_mask, prompt_index, response_ids, response_mask) -> torch.Tensor:
        return shared_prompt_rewards(self.hf, prompt_ids, prompt_mask, prompt_index, response_ids, response_mask)
