r"""``python -m allroads.llm evaluate``: one evaluation of a model directory → ``result.json`` (App. B.4; the numbers the
runner's evaluation stages compute, through the same functions).

    --metric winrate     judge win rate of one T = 0.01 sample per test prompt against the reference summaries
                         (:func:`allroads.llm.evaluation.judged.judged_win_rate`; an OpenAI-compatible ``--base_url``,
                         key from ``OPENAI_API_KEY``), plus the known score on the synthetic tasks
    --metric known       known score, known-score win rate, KL(π‖π_sft) and E[r*] − β·KL (synthetic tasks;
                         :func:`allroads.llm.evaluation.ground_truth.ground_truth_eval`; needs ``--sft``)
    --metric validation  BT validation log-likelihood and accuracy of an RM on the preference validation split (Fig. 7;
                         ``--rm_kind global|local|dpo``, ``--ref`` for dpo)

The test prompts are ``--n_test`` SFT-test rows drawn with ``--eval_prompt_seed``
(:func:`allroads.llm.evaluation.judged.test_prompts`), as the runner draws them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from allroads.llm.cli.common import (
    REQUIRED,
    CommandError,
    fresh_output_dir,
    model_dir,
    parse_args,
    run_command,
    write_command,
)
from allroads.llm.core.atomic import write_json
from allroads.llm.core.config import DEFAULT_JUDGE_MODEL
from allroads.llm.data import load as L
from allroads.llm.data.synthetic import task_score
from allroads.llm.data.tldr_format import format_prompt
from allroads.llm.evaluation.evaluate import validation_likelihood
from allroads.llm.evaluation.ground_truth import ground_truth_eval
from allroads.llm.evaluation.judged import judged_win_rate, test_prompts
from allroads.llm.judge.judge import Judge, JudgeConfig
from allroads.llm.model import models as M
from allroads.llm.model import tokenizer as TK
from allroads.llm.model.backend import DPORM, GlobalRM, LLMBackend, LocalRM
from allroads.llm.model.sample import SamplingConfig
from allroads.llm.pipeline.settings import tiny_settings

__all__ = ["EvaluateArgs", "evaluate", "main", "METRICS"]

METRICS = ("winrate", "known", "validation")
"""The evaluations of ``--metric``."""


@dataclass(frozen=True)
class EvaluateArgs:
    """Arguments of ``python -m allroads.llm evaluate``."""

    model: str = REQUIRED
    """The evaluated model (policy, or the RM of ``--metric validation``): a model or stage directory."""
    metric: str = "winrate"
    """``winrate``, ``known`` or ``validation`` (see the command's description)."""
    sft_data: str = ""
    """Data source of the test prompts and references (its ``test`` split); winrate and known."""
    pft_data: str = ""
    """Preference data source of ``--metric validation`` (its ``validation`` split)."""
    n_test: int = 600
    """Test prompts (B.4: 600 randomly sampled)."""
    eval_prompt_seed: int = 0
    """Seed of the choice of the test prompts."""
    valid_limit: int = 0
    """Validation pairs of ``--metric validation`` (0 = all)."""
    temperature: float = 0.01
    """Sampling temperature of the evaluated samples (B.4: 0.01)."""
    seed: int = 0
    """Sampling seed."""
    max_new_tokens: int = 53
    """Response budget including EOS (Table 1)."""
    max_prompt_tokens: int = 512
    """Prompt token budget (the post is cut to fit)."""
    sample_batch_size: int = 8
    """Prompts per generate call."""
    micro_batch_size: int = 16
    """Sequences per forward pass when scoring."""
    sft: str = ""
    """``known``: the SFT policy of KL(π‖π_sft); ``validation`` with ``--rm_kind dpo``: π_ref."""
    beta: float = 0.05
    """β of E[r*] − β·KL (known) and of the DPO implicit reward (validation, dpo); local RMs use ``--local_beta``."""
    local_beta: float = 1.0 / 53.0
    """β of a local RM's β·log π (Table 4: 1/53)."""
    known_kl_samples: int = 4
    """``known``: T = 1 samples per prompt for the KL estimate."""
    known_score: bool = False
    """``winrate``: also report the known score of the judged samples (synthetic tasks)."""
    task: str = "facts"
    """The synthetic task of the known score."""
    rm_kind: str = "global"
    """``validation``: ``global``, ``local`` or ``dpo``."""
    judge_model: str = DEFAULT_JUDGE_MODEL
    """``winrate``: the judge model."""
    base_url: str = ""
    """``winrate``: the OpenAI-compatible endpoint; empty = ``OPENAI_BASE_URL``, else OpenAI's."""
    judge_failure_budget: int = 0
    """``winrate``: judge errors plus unparseable answers accepted; more and no result is written (rerun re-asks
    only those pairs: answers are cached in ``--output_dir``)."""
    dtype: str = "float32"
    """Parameter dtype of the loaded models."""
    device: str = ""
    """Device; empty = CUDA when available."""
    output_dir: str = REQUIRED
    """Directory for ``result.json``."""


def _preset() -> dict:
    """The tiny preset's evaluation settings (what the runner's tiny evaluation stages use)."""
    s = tiny_settings()
    return dict(sft_data=s.sft_data, pft_data=s.pft_data, n_test=s.n_test, eval_prompt_seed=s.eval_prompt_seed,
                valid_limit=s.valid_limit, temperature=s.eval_sampling_temperature, max_new_tokens=s.max_response_tokens,
                max_prompt_tokens=s.max_prompt_tokens, sample_batch_size=s.online.sample_batch_size,
                micro_batch_size=s.eval_micro_batch, beta=s.dpo.beta, local_beta=s.local_rm.beta,
                known_kl_samples=s.known_kl_samples, known_score=s.known_score, device=s.device, dtype=s.dtype)


def _check(a: EvaluateArgs) -> None:
    """Every argument the metric needs, before any work."""
    if a.metric not in METRICS:
        raise CommandError(f"evaluate: --metric {a.metric!r}; use one of {list(METRICS)}")
    need = {"winrate": ("sft_data",), "known": ("sft_data", "sft"),
            "validation": ("pft_data",) + (("sft",) if a.rm_kind == "dpo" else ())}[a.metric]
    missing = [f"--{k}" for k in need if not getattr(a, k)]
    if missing:
        raise CommandError(f"evaluate --metric {a.metric}: {', '.join(missing)} required")
    if a.metric == "validation" and a.rm_kind not in ("global", "local", "dpo"):
        raise CommandError(f"evaluate: --rm_kind {a.rm_kind!r}; use global, local or dpo")
    model_dir(a.model)
    if a.sft:
        model_dir(a.sft, "--sft")


def _backend(a: EvaluateArgs, tok) -> LLMBackend:
    return LLMBackend(tok, SamplingConfig(max_new_tokens=a.max_new_tokens, backend="hf", batch_size=a.sample_batch_size,
                                          compute_logp=False), micro_batch_size=a.micro_batch_size,
                      device=a.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _policy(path: str, a: EvaluateArgs, be: LLMBackend):
    return M.load_policy(model_dir(path), dtype=a.dtype).to(be.device)


def _validation(a: EvaluateArgs, be: LLMBackend) -> dict:
    rows, report = L.load_comparison_rows(a.pft_data, "validation", a.valid_limit)
    print(f"[evaluate] {report}")
    prompts = [format_prompt(r.subreddit, r.title, r.post, be.tokenizer, a.max_prompt_tokens, r.where)[0] for r in rows]
    if a.rm_kind == "global":
        scorer = GlobalRM(M.load_reward_model(model_dir(a.model), dtype=a.dtype).to(be.device))
    elif a.rm_kind == "local":
        scorer = LocalRM(_policy(a.model, a, be), a.local_beta)
    else:
        scorer = DPORM(_policy(a.model, a, be), _policy(a.sft, a, be), a.beta)
    return validation_likelihood(be, scorer, prompts, [r.chosen for r in rows], [r.rejected for r in rows]).to_dict()


def evaluate(argv: list[str]) -> int:
    """``python -m allroads.llm evaluate``: one metric of a model → ``result.json``."""
    a = parse_args("evaluate", __doc__, EvaluateArgs, argv, _preset)
    _check(a)
    out = fresh_output_dir(a.output_dir, ("result.json",))
    out.mkdir(parents=True, exist_ok=True)
    be = _backend(a, TK.load_tokenizer(model_dir(a.model)))
    if a.metric == "validation":
        result = _validation(a, be)
    else:
        rows, report = L.load_sft_rows(a.sft_data, "test", 0)
        print(f"[evaluate] {report}")
        prompts, posts, refs = test_prompts(rows, be.tokenizer, n=a.n_test, seed=a.eval_prompt_seed,
                                            max_prompt_tokens=a.max_prompt_tokens)
        if a.metric == "known":
            result = ground_truth_eval(be, _policy(a.model, a, be), _policy(a.sft, a, be), task_score(a.task), prompts,
                                       refs, beta=a.beta, temperature=a.temperature, n_kl_samples=a.known_kl_samples,
                                       seed=a.seed)
        else:
            judge = Judge(JudgeConfig(model=a.judge_model, base_url=a.base_url,
                                      cache_path=str(out / "judge-cache.sqlite")))
            result = judged_win_rate("evaluate", be, _policy(a.model, a, be), judge, prompts, posts, refs,
                                     temperature=a.temperature, seed=a.seed, budget=a.judge_failure_budget,
                                     known=task_score(a.task) if a.known_score else None,
                                     budget_name="--judge_failure_budget")
    write_json(out / "result.json", {**result, "metric": a.metric, "model": a.model})
    write_command(out, "evaluate", a)
    print(f"[evaluate] {a.metric}: {Path(out / 'result.json')}")
    return 0


def main(argv: list[str]) -> int:
    """The ``evaluate`` command (exit status 2 on bad input)."""
    return run_command("evaluate", lambda: evaluate(argv))
