r"""Policies, global and local reward models, and the two LLM primitives: sequence log-probs and scores.

* Policy π: a causal LM (Pythia deduped 1.4B / 2.8B / 6.9B, App. B.2), or the tiny GPT-NeoX of
  :func:`tiny_config` for CPU tests.
* Global RM: the same backbone with the LM head removed and one linear head to a scalar (App. B.2:
  "We remove the final softmax and add in a single linear layer"), stored as a
  ``GPTNeoXForSequenceClassification`` with ``num_labels=1`` so any tool can open it. The reward is
  read at the **last real token** located with the attention mask (:func:`rewards`), which is
  correct under left and right padding. (transformers' own pooling finds the last token by searching
  for ``pad_token_id`` in ``input_ids``; that fails when pad == EOS, as with Pythia's default
  tokenizer and an EOS-terminated response, so we do not use it.)
* Local RM: a policy; its reward is β·log π(ξ) (Eq. 1, Table 4).

Everything is saved with ``save_pretrained`` and loaded with ``from_pretrained``.
"""
from __future__ import annotations

import functools
import inspect
from pathlib import Path

import torch

__all__ = [
    "check_packing",
    "packed_logps",
    "packed_rewards",
    "PackedRewardModel",
    "forward_takes",
    "HubUnreachableError",
    "tiny_config",
    "tiny_shape",
    "load_policy",
    "load_reward_model",
    "reward_model_from_policy",
    "set_attention",
    "position_ids_from_mask",
    "last_token_index",
    "sequence_logps",
    "rewards",
]

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HubUnreachableError(RuntimeError):
    """A hub model/tokenizer id could not be opened (offline, no cache)."""


def hub_error(name: str, what: str, err: Exception) -> HubUnreachableError:
    """The error for a hub model or tokenizer that could not be opened. Its advice names only options that both entry
    points have (the figure runner ``experiments/llm/run.py`` and the stage CLI ``python -m allroads.llm``): ``--model
    DIR`` and ``--preset tiny``."""
    return HubUnreachableError(
        f"could not load {what} {name!r}: {type(err).__name__}: {str(err)[:300]}\n"
        f"No hub reachable (or HF_HUB_OFFLINE=1)? Download it where the hub is reachable "
        f"(`huggingface-cli download {name} --local-dir DIR`) and pass the directory, e.g. `--model DIR` (the "
        f"tokenizer is read from it unless another is set), or use `--preset tiny` for the CPU test model."
    )


def tiny_config(vocab_size: int, *, hidden: int = 64, layers: int = 2, heads: int = 4, max_positions: int = 1024,
                pad_token_id: int = 1, eos_token_id: int = 0):
    """A small GPT-NeoX (Pythia's architecture: rotary, parallel residual) for CPU tests."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, max_position_embeddings=max_positions, rotary_pct=1.0,
        use_parallel_residual=True, tie_word_embeddings=False, pad_token_id=pad_token_id,
        eos_token_id=eos_token_id, bos_token_id=eos_token_id,
    )


def quiet_progress_bars() -> None:
    """Turn off the load/save progress bars of transformers and huggingface_hub (stage logs keep their own lines)."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    disable_progress_bars()


def _from_pretrained(cls, name: str, what: str, **kw):
    try:
        return cls.from_pretrained(name, **kw)
    except Exception as err:  # noqa: BLE001
        if Path(name).exists():
            raise
        raise hub_error(name, what, err) from err


def tiny_shape(name: str) -> tuple[int, int] | None:
    """``(hidden, layers)`` of a tiny model name: ``"tiny"`` = (64, 2), ``"tiny:HIDDENxLAYERS"`` (e.g.
    ``"tiny:96x2"``, the tiny stand-ins of the Pythia sizes in Fig. 9); None for any other name.
    HIDDEN must be a positive multiple of the 4 attention heads."""
    if name == "tiny":
        return 64, 2
    if not name.startswith("tiny:"):
        return None
    try:
        hidden, layers = (int(v) for v in name[len("tiny:"):].split("x"))
    except ValueError:
        raise ValueError(f"model {name!r}: a tiny model is 'tiny' or 'tiny:HIDDENxLAYERS', e.g. 'tiny:96x2'") from None
    if hidden <= 0 or hidden % 4 or layers <= 0:
        raise ValueError(f"model {name!r}: HIDDEN must be a positive multiple of 4 (heads) and LAYERS >= 1")
    return hidden, layers


def load_policy(name: str, *, tokenizer=None, dtype: str = "float32", seed: int = 0, gradient_checkpointing: bool = False):
    """A causal LM: ``"tiny"`` or ``"tiny:HIDDENxLAYERS"`` (random init from ``seed``, vocabulary of
    ``tokenizer``; :func:`tiny_shape`), a directory,
    or a hub id (``EleutherAI/pythia-1.4b-deduped`` …)."""
    from transformers import AutoModelForCausalLM, GPTNeoXForCausalLM

    shape = tiny_shape(name)
    if shape is not None:
        if tokenizer is None:
            raise ValueError(f"load_policy({name!r}) needs the tokenizer to size the vocabulary")
        torch.manual_seed(seed)
        cfg = tiny_config(len(tokenizer), hidden=shape[0], layers=shape[1], pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id)
        model = GPTNeoXForCausalLM(cfg).to(_DTYPES[dtype])
    else:
        model = _from_pretrained(AutoModelForCausalLM, name, "policy model", dtype=_DTYPES[dtype])
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model


def set_attention(model, kernel: str) -> None:
    """Switch the Hugging Face ``model`` to attention ``kernel`` (``eager``, ``sdpa``, ``flash_attention_2`` …);
    empty: keep it. A kernel that cannot run here (flash-attn not installed, no CUDA) raises transformers' error."""
    if not kernel:
        return
    if not hasattr(model, "set_attn_implementation"):
        raise ValueError(f"attn_implementation={kernel!r}: this transformers version cannot switch a loaded model's "
                         "attention; upgrade transformers or leave attn_implementation empty")
    model.set_attn_implementation(kernel)


def reward_model_from_policy(policy):
    """Global RM from a policy: same backbone weights, LM head dropped, a fresh linear head (B.2).

    The head is initialised N(0, 1/(d+1)) as in Stiennon et al. / REBEL; returns a
    ``*ForSequenceClassification`` with ``num_labels=1``.
    """
    from transformers import AutoModelForSequenceClassification

    cfg = policy.config.__class__.from_dict(policy.config.to_dict())
    cfg.num_labels = 1
    rm = AutoModelForSequenceClassification.from_config(cfg).to(next(policy.parameters()).dtype)
    rm.base_model.load_state_dict(policy.base_model.state_dict())
    d = cfg.hidden_size
    with torch.no_grad():
        head = _score_head(rm)
        head.weight.normal_(0.0, 1.0 / (d + 1) ** 0.5)
        if head.bias is not None:
            head.bias.zero_()
    return rm


def load_reward_model(name: str, *, tokenizer=None, dtype: str = "float32", seed: int = 0, gradient_checkpointing: bool = False):
    """A global RM: a saved ``*ForSequenceClassification`` directory, or a policy (``tiny``, a causal-LM
    directory, a hub id) turned into one by :func:`reward_model_from_policy`."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if tiny_shape(name) is None and Path(name).is_dir():
        cfg = AutoConfig.from_pretrained(name)
        if any(a.endswith("ForSequenceClassification") for a in (cfg.architectures or [])):
            rm = AutoModelForSequenceClassification.from_pretrained(name, dtype=_DTYPES[dtype])
            if gradient_checkpointing:
                rm.gradient_checkpointing_enable()
            return rm
    torch.manual_seed(seed)
    rm = reward_model_from_policy(load_policy(name, tokenizer=tokenizer, dtype=dtype, seed=seed))
    if gradient_checkpointing:
        rm.gradient_checkpointing_enable()
    return rm


def _score_head(rm):
    head = getattr(rm, "score", None)
    if head is None:
        raise ValueError(f"{type(rm).__name__} has no 'score' head; use a *ForSequenceClassification model")
    return head


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (0 at the first real token), so left padding does not
    shift them: ``cumsum(mask) − 1`` clamped at 0. Shape (B, T)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token per row from the attention mask (any padding side). Shape (B,)."""
    T = attention_mask.shape[-1]
    idx = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), idx, torch.full_like(idx, -1)).max(-1).values


def forward_takes(model, name: str) -> bool:
    """Whether the (possibly DDP/FSDP-wrapped) model's ``forward`` takes argument ``name`` (``logits_to_keep`` from
    transformers 4.50, ``cache`` from 5.2x); looked up once per model class."""
    return name in _forward_parameters(type(getattr(model, "module", model)))


@functools.lru_cache(maxsize=None)
def _forward_parameters(cls) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Sequence log-probability of each response under ``model`` (the LLM primitive ``seq_logp``).

        log π(ξ) = Σ_{h ∈ response} log softmax(logits_{h−1} / T)[a_h]

    Logits are cast to float32 (float64 if the model is float64) before the division by the
    temperature T and the log-softmax. Only tokens with ``response_mask`` count. The LM head runs only
    on the last ``k`` positions of the batch, from the earliest position that predicts a response token
    (``logits_to_keep``; the whole sequence on older transformers): with left padding that is the
    longest response + 1 instead of the whole prompt (TL;DR: ~54 of ~565 positions), which saves the
    head's FLOPs and the (B, T, V) float32 logits' memory. The values are the same either way. The log-softmax
    is taken as ``logits[a] − logsumexp(logits)``, without a second (B, T, V) tensor.

    Args: ``input_ids``, ``attention_mask``, ``response_mask`` shape (B, T).
    Returns ``(logp, n_tokens)``: shape (B,) each.
    """
    T = input_ids.shape[1]
    targets = response_mask[:, 1:].any(0)  # positions t+1 that are response tokens in some row
    first = int(targets.nonzero()[0]) if bool(targets.any()) else T - 1  # earliest predicting position t
    kw = {}
    if forward_takes(model, "logits_to_keep"):
        kw["logits_to_keep"] = T - first
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids_from_mask(attention_mask), use_cache=False, **kw).logits  # (B, ≤T, V)
    logits = logits[:, logits.shape[1] - (T - first):]  # positions first … T−1
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logits = logits[:, :-1].to(compute)  # (B, T−1−first, V): position t predicts token t+1 (a view in float32/64)
    if temperature != 1.0:
        logits = logits / temperature
    labels = input_ids[:, first + 1:]
    mask = response_mask[:, first + 1:]
    # log softmax(z)[a] = z[a] − logsumexp(z): no second (B, T, V) tensor of log-probs is made
    token_logp = torch.gather(logits, 2, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)  # (B, T')
    return (token_logp * mask).sum(-1), response_mask[:, 1:].sum(-1)


def check_packing() -> None:
    """Refuse padding-free batches (:mod:`allroads.llm.data.padding_free`) where transformers would let packed
    sequences attend to each other: the per-sequence masks come from ``masking_utils.find_packed_sequence_indices``."""
    try:
        from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError as e:
        raise RuntimeError("packing needs transformers' packed-sequence masks (transformers.masking_utils."
                           "find_packed_sequence_indices, transformers >= 4.56): upgrade transformers or set "
                           "packing=False") from e


def packed_logps(model, input_ids: torch.Tensor, position_ids: torch.Tensor, response_mask: torch.Tensor,
                 seq_index: torch.Tensor, n_seq: int, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    r""":func:`sequence_logps` of a padding-free batch (:func:`allroads.llm.data.padding_free.collate_packed`):

        log π(ξ_i) = Σ_{h ∈ response of sequence i} log softmax(logits_{h−1} / T)[a_h]

    summed per sequence by ``seq_index``. No attention mask: the position ids that restart at 0 confine each token
    to its own sequence. The LM head runs only on the columns that predict a response token in some row.
    Returns ``(logp, n_tokens)``, shape (``n_seq``,) each.
    """
    check_packing()
    targets = response_mask[:, 1:]  # (R, L−1): position t predicts token t+1
    cols = targets.any(0).nonzero().squeeze(1)  # columns t whose prediction counts in some row
    kw = {"logits_to_keep": cols} if forward_takes(model, "logits_to_keep") else {}
    logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False, **kw).logits
    if not kw:
        logits = logits[:, cols]
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logits = logits.to(compute)
    if temperature != 1.0:
        logits = logits / temperature
    labels = input_ids[:, cols + 1]
    token_logp = torch.gather(logits, 2, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)  # (R, C)
    keep = targets[:, cols]
    owner = seq_index[:, cols + 1][keep]  # a response token's sequence (never a tail: tails hold no response)
    logp = token_logp.new_zeros(n_seq).index_add(0, owner, token_logp[keep])
    n_tok = torch.zeros(n_seq, dtype=torch.long, device=owner.device).index_add(0, owner, torch.ones_like(owner))
    return logp, n_tok


class RewardModel(torch.nn.Module):
    """A module whose ``forward`` is :func:`rewards` of the wrapped ``*ForSequenceClassification``
    (``.hf``), so DDP / FSDP see the real forward (their hooks need the call to go through the wrapper)."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return rewards(self.hf, input_ids, attention_mask)


def rewards(reward_model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    r"""Global RM score r(ξ) read at the last real token (attention mask, any padding side).

        r(ξ) = w · h_L(ξ)[last real token] + b

    Args: ``input_ids``, ``attention_mask`` shape (B, T). Returns shape (B,) in float32 (float64 for a
    float64 model).
    """
    hidden = reward_model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                     position_ids=position_ids_from_mask(attention_mask), use_cache=False
                                     ).last_hidden_state  # (B, T, d)
    values = _score_head(reward_model)(hidden).squeeze(-1)  # (B, T)
    last = last_token_index(attention_mask)
    r = values.gather(1, last.unsqueeze(1)).squeeze(1)
    return r.to(torch.float64 if r.dtype == torch.float64 else torch.float32)


def packed_rewards(reward_model, input_ids: torch.Tensor, position_ids: torch.Tensor,
                   last_index: torch.Tensor) -> torch.Tensor:
    r""":func:`rewards` of a padding-free batch (:func:`allroads.llm.data.padding_free.collate_packed`): r(ξ_i)
    read at sequence i's last token (``last_index``, flat into (R · L)). Shape (n_seq,)."""
    check_packing()
    hidden = reward_model.base_model(input_ids=input_ids, position_ids=position_ids, use_cache=False
                                     ).last_hidden_state  # (R, L, d)
    r = _score_head(reward_model)(hidden.flatten(0, 1)[last_index]).squeeze(-1)
    return r.to(torch.float64 if r.dtype == torch.float64 else torch.float32)


class PackedRewardModel(RewardModel):
    """:class:`RewardModel` for padding-free batches: ``forward`` is :func:`packed_rewards` of ``.hf``."""

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,  # type: ignore[override]
                last_index: torch.Tensor) -> torch.Tensor:
        return packed_rewards(self.hf, input_ids, position_ids, last_index)
