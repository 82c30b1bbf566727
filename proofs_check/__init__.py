r"""Numerical checks of every statement of Swamy et al., "All Roads Lead to Likelihood" (arXiv 2503.01067),
Sections 2–3 and Appendix A, on random exact tree MDPs (the :mod:`allroads.tabular` engine, float64).

One module per statement; each module's docstring quotes the statement, its assumptions, the equation
numbers, the tolerance and why, and the negative control:

========================  ====================================================================================
module                    statement
========================  ====================================================================================
lemma_2_1                 Lemma 2.1: soft RL = reverse-KL projection of P*_r (Eq. 10–11, 15–20)
lemma_a_1                 Lemma A.1: MinRelEnt RL = RKL projection onto P*_r·P_ref (Eq. 21–28)
bt_gibbs                  BT–Gibbs identity after Eq. 11 (with Eq. 4)
thm_2_2                   Theorem 2.2: R = R(Π) ⇒ π̂_mle = π̂_rlhf (Eq. 6, 9, 10; 29–34)
thm_2_3                   Theorem 2.3: with π_ref, under realizability, DPO = RLHF (Eq. 35–40)
thm_2_4                   Theorem 2.4: linear SPIN = SFT, exact (``thm_2_4``) and Monte Carlo (``thm_2_4_mc``)
thm_3_1                   Theorem 3.1: RLHF with R_sim = MLE over Π(R_sim) (Eq. 48–50)
partial_coverage          lecture notes §22.3 / slides: DPO breaks under partial coverage (bandit)
partial_coverage_sweep    the same, multi-token with shared parameters, swept against a predicted region
q_logits                  Section 3.4, Eq. 12–14: soft Q of π*_r = its logits; local reward = r
========================  ====================================================================================

Run ``python -m proofs_check`` (options ``--instances N --seed S --only NAME --start K --json PATH``); it exits
with status 0 iff every check passes *and* every negative control fails by its stated margin (100× the
tolerance, 4× the critical z for the Monte-Carlo check).

Cost. The default is 40 random instances per check (10 checks; the partial-coverage sweep runs once, 810
settings, ≈ 4 s). Each instance of the optimiser-based checks runs a handful of L-BFGS fits of ≤ 100
parameters; random starts of one objective run as one batched fit (``common.fit_starts``), and the
saturation guard and multi-start only where they were measured to change answers (``common.fit``,
``common.fit_both_cross_seeded``). Measured on the shared 2-core development machine with one torch
thread: the default run (40 instances, seed 0) takes 12–14 s. ``--instances 1000`` takes 258 CPU s (seed 0;
298 s wall with two other jobs sharing the two cores; 287–292 CPU s with three) and passes every check with
every negative control failing as designed, with seed 0 and with seed 1. Earlier 1000-instance runs failed
for causes that 40 instances do not reach (local optima of the non-convex log-linear fits, a prompt of mass
5e-4, random controls of low power in ``thm_2_4`` and ``lemma_a_1``, a zero-variance sampler in
``thm_2_4_mc``, a reverse-KL fit stopped at a saturated softmax), fixed as described in
``common.fit_both_cross_seeded``, ``common.random_prompt_probs``, ``thm_2_4``, ``lemma_a_1`` and
``common.fit``. A failing
run prints the command that replays the instance it names (``--start K --instances 1``), and so does a NaN
or infinite value on any instance. ``python -m proofs_check.mutants`` breaks the library on purpose and
reports which checks catch each mutation (≈ 45 s).
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy/scipy load: one BLAS
    os.environ.setdefault(_v, "1")  # thread (scipy L-BFGS-B); a second one on a busy 2-core machine is ~10x slower

from . import (  # noqa: E402
    bt_gibbs, lemma_2_1, lemma_a_1, partial_coverage, partial_coverage_sweep, q_logits, thm_2_2, thm_2_3, thm_2_4, thm_3_1,
)
from .common import Check, CheckResult, NegativeControl, format_table, run_check  # noqa: E402

MODULES = (lemma_2_1, lemma_a_1, bt_gibbs, thm_2_2, thm_2_3, thm_2_4, thm_3_1, partial_coverage, partial_coverage_sweep, q_logits)
ALL_CHECKS: list[Check] = [c for m in MODULES for c in m.CHECKS]


def select_checks(names=()) -> list[Check]:
    """The checks named (by check or module name) in ``names``, in table order; all when empty."""
    if not names:
        return list(ALL_CHECKS)
    by_module = {m.__name__.rsplit(".", 1)[1]: [c.name for c in m.CHECKS] for m in MODULES}
    wanted = set()
    for n in names:
        if n in by_module:
            wanted.update(by_module[n])
        elif any(c.name == n for c in ALL_CHECKS):
            wanted.add(n)
        else:
            raise KeyError(f"unknown check {n!r}; choose from {', '.join(sorted(set(by_module) | {c.name for c in ALL_CHECKS}))}")
    return [c for c in ALL_CHECKS if c.name in wanted]


__all__ = ["ALL_CHECKS", "MODULES", "select_checks", "Check", "CheckResult", "NegativeControl", "format_table", "run_check"]
