r"""Partial coverage on a multi-token tree, swept: where does gradient-trained DPO move its mass onto completions
π_ref never generates, does RLHF over the same class stay off them, and does covering them in D undo it?
(Lecture notes §22.3; the bandit version is :mod:`proofs_check.partial_coverage`.)

Setting: one prompt, A = 3, H = 2. Token 2 is out of distribution: π_ref(2|s) = 0 at every state, and π_ref
over tokens {0, 1} is random (logits N(0, 1) per state). D = every pair of covered completions (tokens in
{0, 1}) with different counts of token 0, the one with more 0s preferred (hard labels, equal weights). The
policy class shares parameters across states: logits(s, a) = θᵀψ_k(a) with ψ(0) = (1, 0, 0), ψ(1) = (0, 1, 0),
ψ(2) = (k, 0, 1), so k is how strongly the OOD token shares a direction with the preferred token 0. It is the
same set of policies for every k (the token logits (θ_0, θ_1, kθ_0 + θ_2) are a bijection of θ); k only
changes the coordinates gradient descent moves in. DPO: full-batch Adam (torch's update, default betas and
eps) on the DPO loss (Eq. 22.2) from θ = (0, 0, z0), learning rate lr, for ``steps`` steps.

Grid (:data:`GRID`): k ∈ {0, 0.5, 1, 1.5, 2, 3} × z0 ∈ {−8, −6, −3} × β ∈ {0.25, 0.5, 1, 2, 4} × lr ∈ {0.03, 0.1,
0.3} × steps ∈ {100, 300, 1000}: 810 settings (the three step counts are snapshots of one run), one random
π_ref per (k, z0, β, lr), drawn from the check's seed.

**The argument, and the region it predicts (written before the sweep was run).** Every completion has H
tokens and the features do not depend on the state, so log π_θ(ξ) = θᵀΣ_h ψ(a_h) − H·log Z(θ), and log Z
cancels inside each DPO pair. Covered pairs never contain token 2, so the DPO loss is a function of (θ_0, θ_1)
alone — the same function as on the *covered problem*, the tree with token 2 removed (A = 2, ψ(0) = (1, 0),
ψ(1) = (0, 1)). ∂L/∂θ_2 ≡ 0, and Adam, being elementwise, never moves θ_2 (in float64 rounding moves it
by < 1e-9). So DPO does not constrain the mass
on token 2 at all: it ends at (θ̄_0, θ̄_1, z0), where (θ̄_0, θ̄_1) is what the same Adam run reaches on the
covered problem, and the parametrisation decides what that does to token 2:

    q = e^{kθ̄_0 + z0} / (e^{θ̄_0} + e^{θ̄_1} + e^{kθ̄_0 + z0}),    predicted uncovered mass  m̂ = 1 − (1 − q)^H.

Predicted region: the effect (DPO's mass on uncovered completions ≥ 1/2) where m̂ ≥ 1/2 + :data:`BAND`, no
effect where m̂ ≤ 1/2 − BAND; settings in between are reported, not scored. In words: the effect needs k > 1
(the OOD logit must grow faster than the preferred token's; for k ≤ 1 and θ̄_0 ≥ 0, q ≤ e^{z0}/(1 + e^{z0}),
so m̂ ≤ 0.1 at z0 ≤ −3) and enough training, roughly (k − 1)·θ̄_0 ≥ −z0 + 0.9, where θ̄_0 grows with lr·steps
until β·(θ_0 − θ_1) saturates the loss (earlier at larger β).

RLHF over the same class: r̂ = tabular BT MLE on D with L2 0.1 (so r̂ = 0 on unseen completions), then soft RL
with a reference (MinRelEnt, Lemma A.1) over the same shared class, fitted to its optimum (``fit_soft_rl``),
against the ε-support reference π_ref^ε = (1 − ε)·π_ref + ε·[a = 2] at every state (ε = :data:`EPS`) so that
KL(π ‖ π_ref^ε) is finite. Expected: its uncovered mass stays < 1/2 in every setting (the KL term charges
log(q/ε) per unit of mass on token 2).

Control (covered losers): D plus one pair (0, 0) ≻ ξ for each uncovered completion ξ, with π_ref^ε as the
reference of every pair. The loss now reads token 2 and pushes θ_2 down, so inside the predicted region the
effect should vanish.

Error = the largest of: the fraction of in-region settings without the effect, the fraction of out-of-region
settings with it, the fraction of settings where RLHF puts ≥ 1/2 on uncovered completions; tolerance 0.05.
Negative control = the fraction of in-region settings *without* the effect under covered losers; it must
reach 0.5 (10× the tolerance). The sweep runs once per invocation (``Check.once``), whatever ``--instances``.
"""
from __future__ import annotations

import itertools
import math

import torch

from allroads.tabular import LogLinearPolicy, PreferenceData, TabularPolicy, TabularReward, TreeMDP, fit_bt_reward, fit_soft_rl, policy_mle_loss

from .common import Check, fit

#: The swept settings (see the module docstring).
GRID = dict(k=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0), z0=(-8.0, -6.0, -3.0), beta=(0.25, 0.5, 1.0, 2.0, 4.0),
            lr=(0.03, 0.1, 0.3), steps=(100, 300, 1000))
#: Mass of the OOD token under the ε-support reference (RLHF's KL and the control).
EPS = 1e-3
#: Half-width of the unscored band around m̂ = 1/2.
BAND = 0.1
#: Uncovered mass at which a policy counts as having moved onto uncovered completions.
THRESHOLD = 0.5
TOLERANCE = 0.05
MDP3, MDP2 = TreeMDP(1, 3, 2), TreeMDP(1, 2, 2)


def adam_path(loss, theta0: torch.Tensor, lr: torch.Tensor, snapshots) -> dict[int, torch.Tensor]:
    r"""Full-batch Adam on B independent problems at once, θ of shape (B, n), per-block learning rate ``lr``
    (B, 1); torch.optim.Adam's update with its defaults (β_1 = 0.9, β_2 = 0.999, ε = 1e-8, no decay):

        m ← β_1 m + (1 − β_1) g,   v ← β_2 v + (1 − β_2) g²,   θ ← θ − lr · (m / (1 − β_1^t)) / (√(v / (1 − β_2^t)) + ε)

    ``loss(θ)`` returns the per-block losses (B,); blocks do not interact. Returns θ after each step count in
    ``snapshots``.
    """
    b1, b2, eps = 0.9, 0.999, 1e-8
    theta, m, v = theta0.clone(), torch.zeros_like(theta0), torch.zeros_like(theta0)
    out = {}
    for t in range(1, max(snapshots) + 1):
        th = theta.requires_grad_(True)
        (g,) = torch.autograd.grad(loss(th).sum(), th)
        theta = theta.detach()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        theta = theta - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        if t in snapshots:
            out[t] = theta.clone()
    return out


def token_features(psi: torch.Tensor, mdp: TreeMDP) -> list[torch.Tensor]:
    """State-independent features ψ(a) at every state: per block, ``psi`` (B, A, d) → [(B, 1, A**h, A, d)]."""
    return [psi[:, None, None].expand(-1, 1, mdp.n_actions**h, -1, -1) for h in range(mdp.horizon)]


def preference_pairs(mdp: TreeMDP, covered_losers: bool) -> PreferenceData:
    """D: covered pairs, more 0s preferred; with ``covered_losers``, also (0, 0) ≻ every uncovered completion."""
    traj = torch.as_tensor(mdp.trajectories)
    covered, zeros = (traj != 2).all(-1), (traj == 0).sum(-1)
    w, l = [], []
    for a, b in itertools.permutations(torch.nonzero(covered)[:, 0].tolist(), 2):
        if zeros[a] > zeros[b]:
            w.append(a)
            l.append(b)
    if covered_losers:
        for u in torch.nonzero(~covered)[:, 0].tolist():
            w.append(0)  # (0, 0): index 0 in lexicographic order
            l.append(u)
    return PreferenceData(torch.zeros(len(w), dtype=torch.int64), torch.tensor(w), torch.tensor(l))


def covered_data(data3: PreferenceData) -> PreferenceData:
    """The same pairs on the covered problem's tree (A = 2): trajectory indices re-mapped."""
    index2 = {tuple(t): i for i, t in enumerate(MDP2.trajectories.tolist())}
    remap = torch.tensor([index2.get(tuple(t), -1) for t in MDP3.trajectories.tolist()])
    return PreferenceData(data3.prompt, remap[data3.xi_w], remap[data3.xi_l])


def references(logits01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[TabularPolicy]]:
    """From per-setting logits over tokens {0, 1} at the 4 states (B, 4, 2): trajectory log-probs of π_ref on
    the A = 3 tree (−inf off the support), of π_ref^ε, of π_ref on the A = 2 tree, and the π_ref^ε policies."""
    lp01 = torch.log_softmax(logits01, -1)  # (B, 4, 2); state 0 = root, states 1..3 = after token 0, 1, 2
    B = lp01.shape[0]
    full = torch.cat([lp01, torch.full((B, 4, 1), -math.inf, dtype=torch.float64)], -1)
    eps_lp = torch.logaddexp(full + math.log1p(-EPS), torch.tensor([-math.inf, -math.inf, math.log(EPS)], dtype=torch.float64))
    eps_pols = [TabularPolicy.from_logits(MDP3, [e[None, :1], e[None, 1:]]) for e in eps_lp]

    def traj(lp, A):
        return (lp[:, 0, :, None] + lp[:, 1:A + 1, :]).reshape(B, 1, A * A)
    return traj(full, 3), traj(eps_lp, 3), traj(lp01, 2), eps_pols


def uncovered_mass(cls: LogLinearPolicy, theta: torch.Tensor) -> torch.Tensor:
    """Per block, the probability of completions that contain token 2."""
    unc = (torch.as_tensor(MDP3.trajectories) == 2).any(-1)
    return torch.exp(cls.traj_log_probs(theta))[:, 0, unc].sum(-1)


def settings() -> list[dict]:
    return [dict(k=k, z0=z0, beta=beta, lr=lr) for k, z0, beta, lr in
            itertools.product(GRID["k"], GRID["z0"], GRID["beta"], GRID["lr"])]


def sweep(g: torch.Generator) -> list[dict]:
    """Every grid setting with its predicted (m̂) and measured uncovered masses: DPO, DPO with covered losers,
    RLHF over the shared class."""
    runs = settings()
    B = len(runs)
    col = {key: torch.tensor([r[key] for r in runs], dtype=torch.float64)[:, None] for key in ("k", "z0", "beta", "lr")}
    ref3, ref_eps, ref2, eps_pols = references(torch.randn(B, 4, 2, dtype=torch.float64, generator=g))
    psi = torch.zeros(B, 3, 3, dtype=torch.float64)
    psi[:, 0, 0], psi[:, 1, 1], psi[:, 2, 2], psi[:, 2, 0] = 1.0, 1.0, 1.0, col["k"][:, 0]
    cls3 = LogLinearPolicy(MDP3, token_features(psi, MDP3))
    cls2 = LogLinearPolicy(MDP2, token_features(torch.eye(2, dtype=torch.float64).expand(B, 2, 2), MDP2))
    data, data_c = preference_pairs(MDP3, False), preference_pairs(MDP3, True)
    theta0 = torch.cat([torch.zeros(B, 2, dtype=torch.float64), col["z0"]], -1)
    snaps = GRID["steps"]
    dpo = adam_path(lambda th: policy_mle_loss(cls3.traj_log_probs(th), data, col["beta"], ref3), theta0, col["lr"], snaps)
    ctrl = adam_path(lambda th: policy_mle_loss(cls3.traj_log_probs(th), data_c, col["beta"], ref_eps), theta0, col["lr"], snaps)
    data2 = covered_data(data)
    cov = adam_path(lambda th: policy_mle_loss(cls2.traj_log_probs(th), data2, col["beta"], ref2),
                    torch.zeros(B, 2, dtype=torch.float64), col["lr"], snaps)
    rlhf = rlhf_masses(runs, eps_pols, data)
    out = []
    for steps in snaps:
        t0, t1 = cov[steps][:, 0], cov[steps][:, 1]
        u = col["k"][:, 0] * t0 + col["z0"][:, 0]
        q = torch.exp(u - torch.logsumexp(torch.stack([t0, t1, u], -1), -1))
        m_hat = 1 - (1 - q) ** MDP3.horizon
        m_dpo, m_ctrl = uncovered_mass(cls3, dpo[steps]), uncovered_mass(cls3, ctrl[steps])
        for i, r in enumerate(runs):
            out.append(dict(r, steps=steps, predicted=float(m_hat[i]), dpo=float(m_dpo[i]),
                            covered_losers=float(m_ctrl[i]), rlhf=rlhf[i]))
    return out


def rlhf_masses(runs: list[dict], eps_pols: list[TabularPolicy], data: PreferenceData) -> list[float]:
    """RLHF's uncovered mass per setting: soft RL with π_ref^ε over the shared class on the tabular BT r̂."""
    R = TabularReward(MDP3)
    r_hat = R.reward(fit_bt_reward(R, data, l2=0.1, tol=1e-10).theta).detach()
    out = []
    for r, ref in zip(runs, eps_pols):
        psi = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [r["k"], 0.0, 1.0]], dtype=torch.float64)
        cls = LogLinearPolicy(MDP3, [f[0] for f in token_features(psi[None], MDP3)])
        res = fit(fit_soft_rl, cls, r_hat, beta=r["beta"], ref=ref, theta0=cls.init(), tol=1e-8, shrink=False)
        out.append(float(uncovered_mass(cls, res.theta[None])[0]))
    return out


def summarise(rows: list[dict]) -> dict:
    """Fractions inside / outside the predicted region, RLHF, the control; overall and per k, β, steps."""
    def frac(xs):
        return sum(xs) / len(xs) if xs else 0.0

    def block(rs):
        inside = [r for r in rs if r["predicted"] >= THRESHOLD + BAND]
        outside = [r for r in rs if r["predicted"] <= THRESHOLD - BAND]
        return dict(
            settings=len(rs), inside=len(inside), outside=len(outside), band=len(rs) - len(inside) - len(outside),
            effect_inside=frac([r["dpo"] >= THRESHOLD for r in inside]),
            effect_outside=frac([r["dpo"] >= THRESHOLD for r in outside]),
            effect_all=frac([r["dpo"] >= THRESHOLD for r in rs]),
            rlhf_effect=frac([r["rlhf"] >= THRESHOLD for r in rs]), rlhf_max=max(r["rlhf"] for r in rs),
            control_effect_inside=frac([r["covered_losers"] >= THRESHOLD for r in inside]),
            control_max=max(r["covered_losers"] for r in rs),
            max_prediction_gap=max(abs(r["dpo"] - r["predicted"]) for r in rs),
        )
    return dict(all=block(rows), by_k={k: block([r for r in rows if r["k"] == k]) for k in GRID["k"]},
                by_beta={b: block([r for r in rows if r["beta"] == b]) for b in GRID["beta"]},
                by_steps={s: block([r for r in rows if r["steps"] == s]) for s in GRID["steps"]})


def instance(g: torch.Generator) -> tuple[float, float, dict]:
    s = summarise(sweep(g))
    a = s["all"]
    error = max(1 - a["effect_inside"] if a["inside"] else 1.0, a["effect_outside"], a["rlhf_effect"])
    control = 1 - a["control_effect_inside"] if a["inside"] else 0.0
    return error, control, s


def report(details: dict) -> str:
    """The sweep's table, by feature sharing k."""
    head = f"{'k':>5}{'n':>5}{'in':>5}{'out':>5}{'band':>5}{'DPO≥½ in':>10}{'DPO≥½ out':>10}{'RLHF max':>10}{'ctrl≥½ in':>10}{'|m−m̂|':>9}"
    lines = ["Partial coverage sweep (A=3, H=2, shared token features ψ(2) = (k, 0, 1); gradient-trained DPO; "
             f"{len(GRID['z0'])}×{len(GRID['beta'])}×{len(GRID['lr'])}×{len(GRID['steps'])} settings of (z0, β, lr, steps) per k)",
             "fraction of settings with mass ≥ 1/2 on uncovered completions, inside / outside the predicted region; "
             "RLHF over the same class (π_ref^ε); control: covered losers", head]
    rows = [(str(k), b) for k, b in details["by_k"].items()] + [("all", details["all"])]
    for name, b in rows:
        lines.append(f"{name:>5}{b['settings']:>5}{b['inside']:>5}{b['outside']:>5}{b['band']:>5}{b['effect_inside']:>10.3f}"
                     f"{b['effect_outside']:>10.3f}{b['rlhf_max']:>10.2e}{b['control_effect_inside']:>10.3f}{b['max_prediction_gap']:>9.1e}")
    for key, name in (("by_beta", "β"), ("by_steps", "steps")):
        lines.append(f"by {name}: " + "; ".join(f"{v:g}: {b['effect_all']:.0%} of settings ({b['inside']} predicted)"
                                                 for v, b in details[key].items()))
    a = details["all"]
    lines.append(f"DPO moves ≥ 1/2 of its mass onto uncovered completions in {a['effect_all']:.1%} of all settings; "
                 f"RLHF in {a['rlhf_effect']:.1%} (max {a['rlhf_max']:.2e}); with covered losers, DPO's largest uncovered mass is {a['control_max']:.2e}")
    return "\n".join(lines)


CHECK = Check(
    name="partial_coverage_sweep",
    statement="§22.3 multi-token: DPO's OOD mass where the argument predicts, RLHF none",
    tolerance=TOLERANCE,
    negative_description="covered losers (uncovered completions in D as losers): fraction of in-region settings without the effect",
    instance=instance,
    min_margin=10.0,
    once=True,
    report=report,
)
CHECKS = [CHECK]
