"""How diverse could the small preset's online data be? The SFT data law of each synthetic task, sampled.

A policy that matched its SFT data exactly would draw its 25 online samples per prompt from the law of
``make_synthetic_sft``. This script draws them (``allroads.llm.data.synthetic_rows.sft_law_samples``) and reports
what the online-pairs stages report for a real policy (``online_diversity``): distinct summaries of 25 per prompt,
the share of best/worst pairs in which one summary is a word prefix of the other, and the share of prompts whose
samples all tie — with the pair ranked by the known score r* (ties broken uniformly at random: a stand-in for the
global RM, which is ≈ 97 % right on validation pairs). The expectation pre-registered for ``--task any_order`` in
experiments/llm/README.md was computed with it.

    python experiments/llm/data_law.py                 # every task, 2048 prompts × 25 samples, seed 0
"""
from __future__ import annotations

import argparse

import numpy as np

from allroads.llm.data.synthetic import TASKS, task_score
from allroads.llm.data.synthetic_rows import sft_law_samples
from allroads.llm.train.online_data import is_prefix_pair


def law_diversity(task: str, n_posts: int, n: int, seed: int) -> dict:
    """Mean distinct of ``n`` per post, prefix-pair share of the r*-ranked best/worst pairs, tied share."""
    score, rng = task_score(task), np.random.default_rng(seed + 1)
    distinct, prefix, tied = [], 0, 0
    for post, summaries in sft_law_samples(n_posts, n, seed, task):
        distinct.append(len(set(summaries)))
        r = np.array([score(post, s) for s in summaries])
        if r.max() == r.min():
            tied += 1
            continue
        best = rng.choice(np.flatnonzero(r == r.max()))
        worst = rng.choice(np.flatnonzero(r == r.min()))
        prefix += is_prefix_pair(summaries[best], summaries[worst])
    pairs = n_posts - tied
    return {"mean_distinct": float(np.mean(distinct)), "prefix_pair_share": prefix / max(pairs, 1),
            "tied_share": tied / n_posts}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS), help="synthetic tasks")
    p.add_argument("--prompts", type=int, default=2048, help="prompts (the small preset's 2048 preference rows)")
    p.add_argument("--samples", type=int, default=25, help="samples per prompt (the paper's 25)")
    p.add_argument("--seed", type=int, default=0, help="seed of the posts, the summaries and the tie breaks")
    a = p.parse_args(argv)
    print(f"SFT data law, {a.prompts} prompts × {a.samples} samples, seed {a.seed}")
    print("task        distinct  prefix pairs  tied")
    for task in a.tasks:
        d = law_diversity(task, a.prompts, a.samples, a.seed)
        print(f"{task:10s}  {d['mean_distinct']:8.2f}  {d['prefix_pair_share']:11.1%}  {d['tied_share']:5.1%}")


if __name__ == "__main__":
    main()
