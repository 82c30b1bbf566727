r"""``python -m proofs_check.mutants``: break the library on purpose, one named mutation at a time, and report
which checks catch each.

A check that passes on a broken library tests nothing about what was broken. Each mutation below patches
the library in-process (every module's binding of the patched function, so ``from … import`` copies are
replaced too), runs every check on a few instances, and restores the library. A mutation is *caught* when
at least one check does not pass as designed (its error exceeds its tolerance, its negative control stops
failing, or it raises). Exit status 0 iff every mutation is caught.

    python -m proofs_check.mutants [--instances 3] [--only NAME ...] [--json PATH]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

from . import ALL_CHECKS
from .common import run_check

__all__ = ["Mutation", "MUTATIONS", "run_mutation", "main"]


@dataclass(frozen=True)
class Mutation:
    """One deliberate bug."""

    name: str
    """Short name (``--only`` takes it)."""
    description: str
    """What is broken, in the paper's terms."""
    patch: Callable
    """A zero-argument context manager that applies the bug while active."""


@contextlib.contextmanager
def _replace_everywhere(orig, new):
    """Swap every binding of the function ``orig`` in ``allroads*`` / ``proofs_check*`` modules for ``new``."""
    swapped = []
    for mod in list(sys.modules.values()):
        if mod is None or not mod.__name__.startswith(("allroads", "proofs_check")):
            continue
        for k, v in list(vars(mod).items()):
            if v is orig:
                setattr(mod, k, new)
                swapped.append((mod, k))
    try:
        yield
    finally:
        for mod, k in swapped:
            setattr(mod, k, orig)


@contextlib.contextmanager
def _replace_method(cls, name, new):
    orig = getattr(cls, name)
    setattr(cls, name, new)
    try:
        yield
    finally:
        setattr(cls, name, orig)


def _dpo_ref_swapped():
    from allroads import losses

    f = losses.dpo_loss
    return _replace_everywhere(f, lambda lw, ll, rw, rl, beta=1.0: f(lw, ll, rl, rw, beta))


def _soft_optimal_beta_one():
    from allroads.tabular import classes

    def log_pi(self, theta):
        return list(classes.soft_value_iteration(self.mdp, self.reward_class.reward(theta), ref=self.ref, beta=1.0).policy.log_pi)

    return _replace_method(classes.SoftOptimalPolicyClass, "log_pi", log_pi)


def _lse_drops_third_child():
    from allroads.tabular import soft_rl

    f = soft_rl.logsumexp_children
    return _replace_everywhere(f, lambda x: f(x[..., [i for i in range(x.shape[-1]) if i != 2]]) if x.shape[-1] > 2 else f(x))


def _ref_dropped_last_level():
    from allroads.tabular import soft_rl
    from allroads.tabular.policy import TabularPolicy

    f = soft_rl.soft_value_iteration

    def vi(mdp, reward, ref=None, beta=1.0):
        if ref is not None:  # the last level's π_ref replaced by the uniform policy: its factor is dropped
            last = torch.full_like(ref.log_pi[-1], -torch.log(torch.tensor(float(mdp.n_actions))).item())
            ref = TabularPolicy(ref.mdp, tuple(ref.log_pi[:-1]) + (last,))
        return f(mdp, reward, ref=ref, beta=beta)

    return _replace_everywhere(f, vi)


def _beta_applied_twice():
    from allroads.tabular import soft_rl

    f = soft_rl.soft_value_iteration
    return _replace_everywhere(f, lambda mdp, reward, ref=None, beta=1.0: f(mdp, torch.as_tensor(reward) / beta, ref=ref, beta=beta))


def _wrong_child_reshape():
    from allroads.tabular import policy

    f = policy.traj_log_probs_from_levels

    def wrong(log_pi):  # children of prefix j placed at a·A**h + j (action-major) instead of j·A + a
        lp = log_pi[0].flatten(-2)
        for lph in log_pi[1:]:
            lp = (lp.unsqueeze(-2) + lph.transpose(-1, -2)).flatten(-2)
        return lp

    return _replace_everywhere(f, wrong)


def _rkl_as_fkl():
    from allroads.tabular import divergence

    f = divergence.reverse_kl
    return _replace_everywhere(f, lambda model, target: divergence.kl_divergence(target, model))


@contextlib.contextmanager
def _bt_sign_flipped():
    from allroads import losses

    hard, soft = losses.bt_loss, losses.bt_soft_loss
    with _replace_everywhere(hard, lambda w, l: hard(l, w)), _replace_everywhere(soft, lambda w, l, p: soft(l, w, p)):
        yield


MUTATIONS = [
    Mutation("dpo_ref_swapped", "hard-label DPO loss pairs each sequence with the other member's log π_ref", _dpo_ref_swapped),
    Mutation("soft_optimal_beta_one", "Π(R_sim) built with β fixed to 1 (SoftOptimalPolicyClass ignores β)", _soft_optimal_beta_one),
    Mutation("lse_drops_third_child", "soft VI's logsumexp over a node's children skips the third child", _lse_drops_third_child),
    Mutation("ref_dropped_last_level", "soft VI with π_ref ignores π_ref at the last level", _ref_dropped_last_level),
    Mutation("beta_applied_twice", "soft VI divides the reward by β twice", _beta_applied_twice),
    Mutation("wrong_child_reshape", "trajectory log-probs place a node's children action-major (wrong reshape)", _wrong_child_reshape),
    Mutation("rkl_as_fkl", "the reverse KL computed as the forward KL", _rkl_as_fkl),
    Mutation("bt_sign_flipped", "the BT loss prefers the rejected completion (sign flipped)", _bt_sign_flipped),
]


def run_mutation(m: Mutation, instances: int = 3, seed: int = 0) -> dict:
    """Every check under mutation ``m``: which catch it (not ok, or raise)."""
    caught, t0 = {}, time.perf_counter()
    with m.patch():
        for c in ALL_CHECKS:
            try:
                r = run_check(c, instances, seed, progress=False)
                if not r.ok:
                    caught[c.name] = "fails" if not r.passed else "control passes"
            except Exception as e:  # noqa: BLE001 — a crash under mutation is a catch
                caught[c.name] = f"raises {type(e).__name__}"
    return {"mutation": m.name, "description": m.description, "caught_by": caught, "caught": bool(caught),
            "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m proofs_check.mutants", description=__doc__.split("\n")[0])
    p.add_argument("--instances", type=int, default=3, help="instances per check under each mutation (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this mutation (repeatable)")
    p.add_argument("--json", help="write the report here")
    a = p.parse_args(argv)
    chosen = [m for m in MUTATIONS if not a.only or m.name in a.only]
    if not chosen:
        p.error(f"unknown mutation; choose from {', '.join(m.name for m in MUTATIONS)}")
    rows = [run_mutation(m, a.instances, a.seed) for m in chosen]
    w = max(len(r["mutation"]) for r in rows)
    print(f"{'mutation':<{w}}  caught by")
    for r in rows:
        print(f"{r['mutation']:<{w}}  " + (", ".join(sorted(r["caught_by"])) if r["caught"] else "NOT CAUGHT"))
    ok = all(r["caught"] for r in rows)
    print(f"\n{sum(r['caught'] for r in rows)} of {len(rows)} mutations caught ({a.instances} instances per check)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"mutations": rows, "all_caught": ok}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
