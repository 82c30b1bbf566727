r"""Ground-truth evaluation of a policy when the reward is known (the synthetic presets; :mod:`allroads.llm.data.synthetic`).

With the known score r* in place of a judge, the quantities the paper can only estimate are measured directly:

* ``known_score`` — mean r*(x, y) of one sample per test prompt at the evaluation temperature (B.4: 0.01);
* ``win_rate`` — against the reference summaries under r*: wins + ½·ties over all prompts (``wins``, ``ties``,
  ``losses`` counted);
* ``kl`` — on-policy KL(π‖π_sft) = E_{y∼π}[log π(y|x) − log π_sft(y|x)] from samples at T = 1;
* ``objective`` — the regularised known score E_{y∼π}[r*(x, y)] − β·KL(π‖π_sft) from the same samples: Eq. 2's
  reverse-KL projection with r* as the reward (Lemma A.1: ``objective`` = −β·KL(P_π‖P*) + β·log Z, where
  P* ∝ π_sft·exp(r*/β) is the policy the objective is maximised by), higher is better.

Each mean comes with its standard error over prompts (samples of one prompt are averaged first).

:func:`rm_score_eval` scores the same evaluation samples with a learned RM, so that a policy which climbs the RM
while r* falls (over-optimisation of the RM that ranks the online pairs) shows in the numbers.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from allroads.llm.evaluation.evaluate import on_policy_log_ratio, policy_samples, standard_error

__all__ = ["ground_truth_eval", "known_win_counts", "rm_score_eval"]


def _mean_se(x: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of the mean of a 1-D tensor (se NaN for one value)."""
    x = x.double()
    return float(x.mean()), standard_error(x)


def known_win_counts(scores: Sequence[float], ref_scores: Sequence[float]) -> dict:
    """Wins, ties and losses of ``scores[i]`` against ``ref_scores[i]``; ``win_rate`` = (wins + ties/2) / n."""
    if len(scores) != len(ref_scores) or not scores:
        raise ValueError(f"known_win_counts: {len(scores)} scores and {len(ref_scores)} reference scores; need equal, "
                         "non-zero")
    wins = sum(a > b for a, b in zip(scores, ref_scores))
    ties = sum(a == b for a, b in zip(scores, ref_scores))
    n = len(scores)
    return {"wins": wins, "ties": ties, "losses": n - wins - ties, "n": n, "win_rate": (wins + 0.5 * ties) / n}


def ground_truth_eval(backend, policy, sft, score: Callable[[str, str], float], prompts: Sequence[str],
                      references: Sequence[str], *, beta: float, temperature: float, n_kl_samples: int,
                      seed: int = 0, scorer=None) -> dict:
    """The module's four quantities for ``policy`` (π_sft = ``sft``, r* = ``score(prompt, text)``) on ``prompts``
    with reference summaries ``references``: one sample per prompt at ``temperature``, ``n_kl_samples`` per prompt
    at T = 1 (seeded by ``seed``). With a backend ``scorer`` (e.g. ``GlobalRM``) also ``rm_score`` ± ``rm_score_se``:
    its mean score of the same ``temperature`` samples — :func:`rm_score_eval`'s numbers without drawing them again."""
    if beta <= 0 or n_kl_samples < 1:
        raise ValueError(f"beta ({beta}) must be > 0 and n_kl_samples ({n_kl_samples}) >= 1")
    prompts = list(prompts)
    comps, unfinished = policy_samples(backend, policy, prompts, n=1, temperature=temperature, seed=seed)
    texts = [row[0].text for row in comps]
    r = torch.tensor([score(p, t) for p, t in zip(prompts, texts)], dtype=torch.float64)
    r_ref = [score(p, t) for p, t in zip(prompts, references)]
    known, known_se = _mean_se(r)
    out = {"known_score": known, "known_score_se": known_se, "reference_known_score": sum(r_ref) / len(r_ref),
           **known_win_counts(r.tolist(), r_ref), "unfinished": unfinished, "samples": texts}
    if scorer is not None:
        out["rm_score"], out["rm_score_se"] = _mean_se(backend.score(scorer, prompts, comps)[:, 0])
    ratio, on, on_unfinished = on_policy_log_ratio(backend, policy, sft, prompts, n=n_kl_samples, seed=seed + 1)
    r_on = torch.tensor([[score(p, c.text) for c in row] for p, row in zip(prompts, on)], dtype=torch.float64)
    kl, kl_se = _mean_se(ratio.double().mean(1))
    on_score, on_score_se = _mean_se(r_on.mean(1))
    obj, obj_se = _mean_se((r_on - beta * ratio.double()).mean(1))
    out.update({"kl": kl, "kl_se": kl_se, "on_policy_known_score": on_score, "on_policy_known_score_se": on_score_se,
                "objective": obj, "objective_se": obj_se, "beta": beta, "n_kl_samples": n_kl_samples,
                "kl_unfinished": on_unfinished})
    return out


def rm_score_eval(backend, policy, scorer, score: Callable[[str, str], float], prompts: Sequence[str], *,
                  temperature: float, seed: int = 0) -> dict:
    """The mean reward ``rm_score`` (± ``rm_score_se`` over prompts) that ``scorer`` (a backend scorer, e.g.
    ``GlobalRM``) gives one sample of ``policy`` per prompt at ``temperature``, and the mean known score
    ``known_score`` of the same samples. With the same ``seed`` and ``temperature`` these are the samples whose known
    score :func:`ground_truth_eval` reports."""
    prompts = list(prompts)
    comps, unfinished = policy_samples(backend, policy, prompts, n=1, temperature=temperature, seed=seed)
    rm, rm_se = _mean_se(backend.score(scorer, prompts, comps)[:, 0])
    known = torch.tensor([score(p, row[0].text) for p, row in zip(prompts, comps)], dtype=torch.float64)
    return {"rm_score": rm, "rm_score_se": rm_se, "known_score": float(known.mean()), "unfinished": unfinished,
            "samples": [row[0].text for row in comps]}
