r"""The GV-gap experiment (paper H6), exact: every method on the same pairs, each validated on its own.

Per regime and for every (seed, N) — all blocks of one method are one batched fit:

* ``rlhf`` — BT MLE r̂ in the shared class (Eq. 5–6), then exact soft VI relative to π_ref (Lemma A.1);
* ``dpo`` — offline DPO through π_θ ∝ π_ref·exp(f_θ) (Eq. 9, Thm 2.3);
* ``local_rm`` — reference-free DPO, π_θ ∝ exp(f_θ) (Eq. 7–9): an RM for Figs. 7/8 and a policy;
* online DPO (Sec. 3, App. B.1.1), pairs from :func:`allroads.online.sample_and_score` and a labelling
  (:func:`allroads.online.best_worst_pairs`, :func:`allroads.online.best_worst_soft_pairs`): for each of the N
  prompts, ``n_online`` samples ranked by r̂, best vs worst — ``online_dpo`` (sampler and reference π_ref,
  hard labels), ``online_dpo_soft`` (labels σ(r̂_w − r̂_l)), and ``*_from_dpo`` (sampler and reference the
  offline DPO policy: the paper's "Online DPO (DPO)").

**Protocol** (:mod:`allroads.tabular.selection`): every fit from preferences picks its own L2 = c/n from
``l2_grid`` on held-out comparisons of its own kind, by its own objective, per (seed, N) — the RM by BT NLL
of held-out pairs, DPO by the DPO loss of the same held-out pairs, the local RM likewise, each online DPO
by its loss on a held-out quarter of its own on-policy prompts — then is refitted on all its data.
**N = ∞**: population fits (every pair, soft labels BT(r*), no L2) of the RM, DPO and the local RM; for the
online variants, the N = ∞ point for each block's r̂ under the best/worst-of-``n_online`` pair law
(:mod:`allroads.tabular.online_limit`). **Frontier** (:mod:`allroads.tabular.frontier`): every method's policy at
every c of its path, at (KL to π_ref, E[r*], KL to P*).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch

from allroads.online import best_worst_pairs, best_worst_soft_pairs, sample_and_score
from allroads.tabular.backend import TabularBackend
from allroads.tabular.data import PreferenceData, bt_nll, sample_preferences
from allroads.tabular.fit import bt_objective, dpo_objective, minimize_lbfgs, policy_mle_loss, population_bt_objective
from allroads.tabular.frontier import complete_path, oracle_summary, path_metrics
from allroads.tabular.gv_gap import GVGapProblem, design_statistics
from allroads.tabular.metrics import best_of_n_log_probs, exact_win_rate, heldout_bt_nll, kl_to_optimum
from allroads.tabular.online_limit import frontier_metrics, online_population_summary
from allroads.tabular.policy import TabularPolicy
from allroads.tabular.selection import fresh_split, holdout_splits, select_and_refit

__all__ = ["GVGapConfig", "ONLINE_METHODS", "RegimeResult", "run_regime", "nested_datasets", "bandit_rm_from_tree"]

ONLINE_METHODS = ("online_dpo", "online_dpo_soft", "online_dpo_from_dpo", "online_dpo_soft_from_dpo")


@dataclass(frozen=True)
class GVGapConfig:
    """Every setting of the GV-gap experiment (the script's flags are these fields)."""

    n_pairs: tuple = (25, 50, 100, 200, 400, 800)
    """Dataset sizes N (preference pairs from π_ref, BT-labelled with r*); nested per seed."""
    seeds: int = 3
    """Number of data seeds (mean ± s.e.m. over them)."""
    regimes: tuple = ("gv_gap", "bandit_h1", "lookup_reward")
    """Which regimes to run: gv_gap, bandit_h1, lookup_reward."""
    n_prompts: int = 4
    """Prompts P."""
    n_actions: int = 3
    """Tokens A of the gv_gap tree."""
    horizon: int = 5
    """Horizon H of the gv_gap tree (bandit_h1 turns each length-H sequence into one action)."""
    lookup_n_actions: int = 6
    """Tokens of the lookup_reward tree (few completions per prompt, so a table is learnable)."""
    lookup_horizon: int = 2
    """Horizon of the lookup_reward tree."""
    reward_scale: float = 2.0
    """Std of the per-(prompt, token) weights w of r*(ξ) = Σ_k w_k [k ∈ ξ]."""
    ref_scale: float = 0.5
    """Std of π_ref's per-node scores (a state-dependent SFT-like reference in the class)."""
    feature_scale: float = 1.0
    """Prior scale of the simple features (presence, counts, length)."""
    tabular_scale: float = 0.1
    """Prior scale c of the per-prefix one-hot table (10x smaller: prefix functions are 'complex')."""
    problem_seed: int = 0
    """Seed of the problem instance (r* weights, lookup table, π_ref)."""
    beta: float = 1.0
    """KL weight β of the RLHF / DPO objective (Eq. 2): the optimum P* ∝ P_ref·exp(r*/β) (Lemma A.1), DPO's and
    the local RM's β, RLHF's soft-VI temperature."""
    l2_grid: tuple = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
    """Candidates c for L2 = c/n (n training rows, mean loss); every fit picks its own per (seed, N)."""
    selection: str = "split"
    """Validation data: 'split' (a held-out share of each dataset's own rows), 'kfold', or 'fresh' (n_heldout
    new pairs from π_ref, and for online DPO n_heldout new on-policy prompts)."""
    val_fraction: float = 0.25
    """'split': share of each dataset held out for selection."""
    min_val: int = 10
    """'split': at least this many held-out rows."""
    folds: int = 4
    """'kfold': number of folds."""
    n_heldout: int = 4000
    """'fresh': size of the fresh validation set."""
    online_methods: tuple = ("online_dpo",)
    """Which online DPO variants to run (each validated on its own on-policy prompts): online_dpo (the paper's
    recipe: π_ref samples, hard labels), online_dpo_soft, online_dpo_from_dpo, online_dpo_soft_from_dpo
    (--full runs all four; the soft-label fits pick little L2 and are slow)."""
    n_online: int = 25
    """Online DPO: completions sampled per prompt and ranked by the learned RM (paper: 25)."""
    population_tol: float = 1e-6
    """L-BFGS tolerance of the N = ∞ fits (no L2; RLHF and DPO then reach P* to KL ≈ 1e-11)."""
    local_rm: bool = True
    """Fit the local RM (reference-free DPO) too: an RM for Figs. 7/8 and a policy."""
    population: bool = True
    """Fit the N = ∞ point (population data, no L2) for rlhf, dpo and local_rm."""
    reuse_identical: bool = True
    """Reuse fits whose objective is identical as a function of θ: at H = 1 with β = 1 the DPO and local-RM fits
    are the RM's, and bandit_h1's RM is gv_gap's (same pairs, r*, π_ref law and leaf features)."""
    bon_n: tuple = (1, 2, 4, 8, 16, 32, 64)
    """Best-of-n sizes for the Fig. 8 analogue (samples from π_ref)."""
    tol: float = 1e-7
    """L-BFGS tolerance on max|gradient| of each batched objective."""
    grid_tol: float = 1e-6
    """L-BFGS tolerance of the selection-grid fits (they only rank the candidates; refits use ``tol``)."""
    history: int = 10
    """L-BFGS memory (curvature pairs)."""
    precondition_below: float = 0.1
    """Fits with c below this run L-BFGS with the table in the units of f (``SharedScorer.param_scale``): far
    fewer iterations when the data term dominates; the problem and its minimiser are unchanged."""
    patience: int = 1
    """Each (seed, N) leaves the c path (largest c first) once its validation loss has been above its best for
    this many candidates in a row (0 or less: every (seed, N) visits the whole grid)."""
    frontier_paths: str = "largest"
    """Reward–KL frontier (results.json 'frontier', frontier.png): 'largest' fits, at the largest N, the c that a
    seed skipped after leaving its selection path, so every seed has a point at every c; 'all' does so at every N;
    'none' keeps the visited c only."""
    kl_budgets: tuple = (0.5, 1.5, 3.0, 5.0, 10.0)
    """KL(π‖π_ref) budgets of the frontier's best-value table (issue 23's; the toy's policies span KL ≈ 0–5)."""
    kl_budget_scales: tuple = (0.25, 0.5, 1.0, 2.0, 4.0)
    """Budgets scaled to each problem: these multiples of KL(P*‖P_ref), the KL to π_ref of the optimum at ``beta``."""
    online_limit_l2: tuple = (1e-2, 1e-4, 1e-6)
    """L2 path of the exact N = ∞ hard-label online-DPO fits (seed 0, largest N; no λ = 0 minimiser exists);
    an empty --online-limit-l2 skips them."""

    def problem_kwargs(self) -> dict:
        """Keyword arguments of :func:`make_problem`."""
        return {f: getattr(self, f) for f in ("n_prompts", "n_actions", "horizon", "reward_scale", "ref_scale",
                                              "feature_scale", "tabular_scale", "lookup_n_actions", "lookup_horizon",
                                              "beta")} | {
            "seed": self.problem_seed}

    def __post_init__(self):
        if self.frontier_paths not in ("largest", "all", "none"):
            raise ValueError(f"frontier_paths must be 'largest', 'all' or 'none', got {self.frontier_paths!r}")
        if self.selection not in ("split", "kfold", "fresh"):
            raise ValueError(f"selection must be 'split', 'kfold' or 'fresh', got {self.selection!r}")
        bad = set(self.online_methods) - set(ONLINE_METHODS)
        if bad:
            raise ValueError(f"unknown online methods {sorted(bad)}; choose from {ONLINE_METHODS}")
        if min(self.n_pairs) < 2 * self.min_val or self.seeds < 1 or not self.l2_grid:
            raise ValueError("need N ≥ 2·min_val for every N, seeds ≥ 1 and a non-empty l2_grid")


@dataclass
class RegimeResult:
    """One regime: per-method metrics (n_seeds, n_N), the choices made, the N = ∞ point, diagnostics."""

    name: str
    n_pairs: list
    seeds: list
    design: dict
    metrics: dict = field(default_factory=dict)
    """metrics[method][metric] → (n_seeds, n_N)."""
    selected_c: dict = field(default_factory=dict)
    """selected_c[method] → (n_seeds, n_N)."""
    selections: dict = field(default_factory=dict)
    """The :class:`Selection` of every fitted method."""
    population: dict = field(default_factory=dict)
    """population[method] → {rkl_to_optimum, winrate, n_iter, converged}."""
    extra: dict = field(default_factory=dict)


def nested_datasets(problem: GVGapProblem, n_pairs, seeds) -> PreferenceData:
    """Nested datasets: per seed, max(N) pairs from π_ref labelled by BT(r*); size-N sets are prefixes."""
    ref_lp, out = problem.ref_log_probs, []
    for s in seeds:
        g = torch.Generator().manual_seed(10_007 * (s + 1))
        full = sample_preferences(problem.mdp, ref_lp, problem.r_star, max(n_pairs), g)
        out += [PreferenceData(full.prompt[:n], full.xi_w[:n], full.xi_l[:n]) for n in n_pairs]
    return PreferenceData.stack(out)


def _splits(cfg: GVGapConfig, data: PreferenceData, seed: int, fresh=None):
    if cfg.selection == "fresh":
        return fresh_split(data, fresh())
    g = torch.Generator().manual_seed(seed)
    return holdout_splits(data, generator=g, fraction=cfg.val_fraction, min_val=cfg.min_val,
                          folds=cfg.folds if cfg.selection == "kfold" else 1)


def _online_data(data, sampler, r_hat, n_online, seed_offset, prompts=None):
    """Online-DPO pairs of every block b: for each prompt of block b (its dataset's prompts, or ``prompts``),
    ``n_online`` samples from ``sampler(b)`` ranked by r̂_b (``allroads.online.sample_and_score``), labelled hard
    and soft (``best_worst_pairs``, ``best_worst_soft_pairs``).
    Returns (hard-label data, soft-label data, prompts dropped per block), batched."""
    backend, hard, soft, dropped = TabularBackend(), [], [], []
    for b in range(r_hat.shape[0]):
        g = torch.Generator().manual_seed(20_011 * (b + 1) + seed_offset)
        pr = data.block(b).prompt if prompts is None else prompts
        scored = sample_and_score(backend, sampler(b), r_hat[b].detach(), pr, n=n_online, temperature=1.0, generator=g)
        hp, sp = best_worst_pairs(scored), best_worst_soft_pairs(scored)
        dropped.append(hp.n_dropped)
        hard.append(PreferenceData(hp.prompts, hp.chosen, hp.rejected))
        soft.append(PreferenceData(sp.prompts, sp.chosen, sp.rejected, p_w=sp.p_w))
    return PreferenceData.stack(hard), PreferenceData.stack(soft), dropped


def _sub(x, blocks):
    return x[blocks] if x is not None and x.ndim == 3 else x


def _dpo(cls, beta, ref_lp):
    """(objective builder, validation loss) of DPO over ``cls`` with reference log-probs ``ref_lp`` (None:
    reference-free), both restricted to a subset of blocks (:func:`select_and_refit`)."""
    return (lambda d, l2, b: dpo_objective(cls.select_blocks(b), d, beta=beta, ref_logp=_sub(ref_lp, b), l2=l2),
            lambda th, v, b: policy_mle_loss(cls.select_blocks(b).traj_log_probs(th), v, beta, _sub(ref_lp, b)))


def run_regime(problem: GVGapProblem, cfg: GVGapConfig, progress=None, rm: tuple | None = None) -> RegimeResult:
    """Every method of the module docstring on the same pairs, each selected on its own; exact metrics.

    ``rm`` = (Selection, population entry) of an identical RM fit to reuse: ``bandit_h1``'s RM is ``gv_gap``'s
    (same pairs, r*, π_ref law and leaf features; the tree's inner-node parameters never reach the reward),
    mapped onto the bandit's parameters by :func:`bandit_rm_from_tree`."""
    seeds, S, K, beta = list(range(cfg.seeds)), cfg.seeds, len(cfg.n_pairs), problem.beta
    out = RegimeResult(problem.name, list(cfg.n_pairs), seeds, design_statistics(problem))
    data = nested_datasets(problem, cfg.n_pairs, seeds)
    B, m = S * K, problem.mdp
    ref_lp = problem.ref_log_probs
    rm_cls, pol_cls = problem.scorer(), problem.ref_policy_class
    zeros = torch.zeros(B, rm_cls.n_params, dtype=torch.float64)
    fresh = lambda: sample_preferences(m, ref_lp, problem.r_star, cfg.n_heldout, torch.Generator().manual_seed(999))  # noqa: E731
    splits = _splits(cfg, data, seed=31, fresh=fresh)
    sel, policies = out.selections, {}
    scale = rm_cls.param_scale()
    frontier_blocks = torch.tensor([s * K + k for s in seeds for k in {"largest": [K - 1], "all": range(K), "none": []}[
        cfg.frontier_paths]], dtype=torch.int64)

    def select(name, builder, val_loss, d, sp, theta0=zeros):
        precondition = name in ("rm", "dpo", "local_rm") or "soft" in name  # measured: it slows the hard-label fits
        scale_at = lambda c: scale if precondition and c < cfg.precondition_below else None  # noqa: E731
        s = select_and_refit(builder, val_loss, d, sp, cfg.l2_grid, theta0=theta0, tol=cfg.tol, grid_tol=cfg.grid_tol,
                             history=cfg.history, patience=cfg.patience if cfg.patience > 0 else None, scale_at=scale_at)
        path = complete_path(builder, sp[0], s.grid_theta, cfg.l2_grid, frontier_blocks, tol=cfg.grid_tol,
                             history=cfg.history, scale_at=scale_at)
        sel[name] = replace(s, path_theta=path)
        if progress is not None:
            progress.set_postfix_str(f"{problem.name}:{name}")
            progress.update(1)
        return sel[name].theta

    rm_obj = lambda d, l2, b: bt_objective(rm_cls, d, l2=l2)  # noqa: E731
    rm_val = lambda th, v, b: bt_nll(rm_cls.reward(th), v)  # noqa: E731
    if rm is None:
        r_hat = rm_cls.reward(select("rm", rm_obj, rm_val, data, splits)).detach()
    else:
        sel["rm"], out.population["rlhf"] = rm[0], dict(rm[1], reused="gv_gap")
        out.extra.setdefault("reused", {})["rm"] = "gv_gap's rm (identical objective)"
        progress is not None and progress.update(1)
        r_hat = rm_cls.reward(sel["rm"].theta).detach()
    policies["rlhf"] = lambda th: torch.log_softmax(ref_lp + rm_cls.reward(th) / beta, -1)  # soft VI (Lemma A.1)
    # At H = 1 and β = 1 the DPO and local-RM objectives are the RM's as functions of θ (tested): the implicit
    # rewards β·(log π_θ − log π_ref) = f_θ − log Z(θ) and β·log π_θ = f_θ − log Z'(θ), and BT ignores Z.
    same = cfg.reuse_identical and m.horizon == 1 and beta == 1.0
    loc_cls = problem.scorer()
    for name, cls, ref in (("dpo", pol_cls, ref_lp), ("local_rm", loc_cls, None)):
        if name == "local_rm" and not cfg.local_rm:
            continue
        if same:
            sel[name] = sel["rm"]
            out.extra.setdefault("reused", {})[name] = "rm (H = 1, β = 1: the same objective of θ)"
            progress is not None and progress.update(1)
        else:
            select(name, *_dpo(cls, beta, ref), data, splits)
        policies[name] = cls.traj_log_probs
    _online(problem, cfg, data, r_hat, sel["dpo"].theta, select, policies, out)
    _metrics(problem, cfg, policies, r_hat, loc_cls, out)
    _limits(problem, cfg, policies["dpo"](sel["dpo"].theta).detach(), r_hat, out)
    if cfg.population:
        _population(problem, cfg, {"rm": rm_cls, "dpo": pol_cls, **({"local_rm": loc_cls} if cfg.local_rm else {})}, out)
    return out


def _online(problem, cfg, data, r_hat, th_dpo, select, policies, out):
    """The online DPO variants, each selected on a held-out share of its own on-policy prompts."""
    m, beta, ref_lp = problem.mdp, problem.beta, problem.ref_log_probs
    want = set(cfg.online_methods)
    fresh_prompts = torch.multinomial(m.prompt_probs, cfg.n_heldout, replacement=True,
                                      generator=torch.Generator().manual_seed(997))
    ref, pol_cls = problem.ref, problem.ref_policy_class
    for tag, offset in (("", 7), ("_from_dpo", 11)):
        names = (f"online_dpo{tag}", f"online_dpo_soft{tag}")
        if not want & set(names):
            continue
        if tag:  # the offline DPO policy is the sampler and the new reference: π_θ ∝ exp(dpo logits + f_θ)
            base = [(s + b).detach() for s, b in zip(pol_cls.scores(th_dpo), pol_cls.base)]
            cls = problem.scorer(base)
            lp0 = cls.traj_log_probs(torch.zeros_like(th_dpo)).detach()
            sampler = lambda b: TabularPolicy.from_logits(  # noqa: E731
                m, [s[b].reshape(m.n_prompts, m.n_actions**h, m.n_actions) for h, s in enumerate(base)])
        else:
            cls, lp0, sampler = pol_cls, ref_lp, (lambda b: ref)
        hard, soft, dropped = _online_data(data, sampler, r_hat, cfg.n_online, offset)
        out.extra[f"online{tag}_dropped_prompts"] = torch.tensor(dropped, dtype=torch.float64).reshape(cfg.seeds, -1)
        fresh = (_online_data(data, sampler, r_hat, cfg.n_online, offset + 1, fresh_prompts)[:2]
                 if cfg.selection == "fresh" else (None, None))
        for name, d, val in zip(names, (hard, soft), fresh):
            if name in want:
                sp = _splits(cfg, d, seed=41 + offset, fresh=lambda val=val: val)
                select(name, *_dpo(cls, beta, lp0), d, sp)
                policies[name] = cls.traj_log_probs


def _limits(problem, cfg, dpo_log_probs, r_hat, out):
    """The frontier's exact ceiling and the online variants' N = ∞ points (samplers π_ref and the offline DPO policy)."""
    ref_lp, K = problem.ref_log_probs, len(cfg.n_pairs)
    out.extra["oracle"] = oracle_summary(ref_lp, problem.r_star, problem.optimum_log_probs, cfg.kl_budgets, cfg.kl_budget_scales)
    with torch.no_grad():
        out.extra["online_population"] = online_population_summary(
            problem, r_hat, {"": ref_lp, "_from_dpo": dpo_log_probs}, n=cfg.n_online, shape=(cfg.seeds, K),
            fit_block=(K - 1, problem.ref_policy_class), hard_l2=cfg.online_limit_l2)


def _metrics(problem, cfg, policies, r_hat, loc_cls, out):
    """KL to P* and win rate of every method's policy, its choices, its KL at every candidate c; Figs. 7/8."""
    S, K, beta, sel = cfg.seeds, len(cfg.n_pairs), problem.beta, out.selections
    ref_lp, log_star = problem.ref_log_probs, problem.optimum_log_probs
    with torch.no_grad():
        for name, pol in policies.items():
            s = sel["rm" if name == "rlhf" else name]
            lp = pol(s.theta)
            out.metrics[name] = {"rkl_to_optimum": kl_to_optimum(lp, log_star).reshape(S, K),
                                 "winrate": exact_win_rate(lp, ref_lp, problem.r_star).reshape(S, K),
                                 **{k: v.reshape(S, K) for k, v in frontier_metrics(lp, ref_lp, problem.r_star, log_star).items()
                                    if k != "rkl_to_optimum"}}
            out.selected_c[name] = s.c.reshape(S, K)
            out.extra.setdefault("frontier", {})[name] = path_metrics(pol, s.frontier_theta, ref_lp, problem.r_star,
                                                                      log_star, (S, K))
            out.extra.setdefault("sensitivity", {})[name] = [  # NaN where the block had left the path
                torch.where(torch.isfinite(th).all(-1), kl_to_optimum(pol(th), log_star), torch.nan).reshape(S, K)
                for th in s.grid_theta]
        rms = {"global": r_hat, "dpo": beta * (policies["dpo"](sel["dpo"].theta) - ref_lp)}
        if "local_rm" in policies:
            rms["local"] = beta * policies["local_rm"](sel["local_rm"].theta)
        _fig7_fig8(problem, cfg, rms, out)


def _fig7_fig8(problem, cfg, rms, out):
    S, K, ref_lp = cfg.seeds, len(cfg.n_pairs), problem.ref_log_probs
    out.extra["fig7"] = {k: heldout_bt_nll(v, ref_lp, problem.r_star).reshape(S, K) for k, v in rms.items()}
    out.extra["fig7_bayes_floor"] = out.design["bayes_heldout_nll"]
    fig8 = {}
    B = S * K
    for k, v in list(rms.items()) + [("oracle_r_star", problem.r_star.unsqueeze(0).expand(B, -1, -1))]:
        fig8[k] = torch.stack([exact_win_rate(best_of_n_log_probs(v, ref_lp, n), ref_lp, problem.r_star).reshape(S, K)
                               for n in cfg.bon_n], -1)
    out.extra["fig8"] = fig8
    out.extra["ref_policy"] = {"rkl_to_optimum": out.design["kl_ref_to_optimum"], "winrate": 0.5}
    out.extra["optimum"] = {"rkl_to_optimum": 0.0, "winrate": float(
        exact_win_rate(problem.optimum_log_probs.unsqueeze(0), ref_lp, problem.r_star)[0])}


def _population(problem, cfg, classes, out):
    r"""N = ∞: every distinct pair of every prompt, weighted by π_ref, soft labels σ(r*(ξ) − r*(ξ')), no L2;
    each fit warm-started at seed 0's largest-N fit. RLHF and DPO must both reach P* (the class holds it)."""
    beta, ref_lp, r_star = problem.beta, problem.ref_log_probs, problem.r_star
    last = len(cfg.n_pairs) - 1
    implicit = {"rm": lambda c: c.reward, "dpo": lambda c: (lambda th: beta * (c.traj_log_probs(th) - ref_lp)),
                "local_rm": lambda c: (lambda th: beta * c.traj_log_probs(th))}
    for key, cls in classes.items():
        t0 = time.perf_counter()
        if key == "dpo" and out.selections["dpo"] is out.selections["rm"]:  # H = 1, β = 1: the same objective
            out.population["dpo"] = dict(out.population["rlhf"], reused="rlhf")
            continue
        if key == "rm" and "rlhf" in out.population:  # reused with the RM's selection
            continue
        res = minimize_lbfgs(population_bt_objective(implicit[key](cls), ref_lp, r_star), out.selections[key].theta[last],
                             tol=cfg.population_tol, history=30, scale=cls.param_scale(), raise_on_failure=False,
                             what=f"population {key}")
        with torch.no_grad():
            lp = (torch.log_softmax(ref_lp + cls.reward(res.theta) / beta, -1) if key == "rm"
                  else cls.traj_log_probs(res.theta)).unsqueeze(0)
        out.population["rlhf" if key == "rm" else key] = {
            "rkl_to_optimum": float(kl_to_optimum(lp, problem.optimum_log_probs)[0]),
            "winrate": float(exact_win_rate(lp, ref_lp, problem.r_star)[0]),
            "n_iter": res.n_iter, "converged": bool(res.converged), "seconds": time.perf_counter() - t0}


def bandit_rm_from_tree(tree: RegimeResult, tree_problem: GVGapProblem) -> tuple:
    r"""``gv_gap``'s RM selection expressed in ``bandit_h1``'s parameters θ = (w, u_leaf): the tree's θ without its
    inner-node table entries (which no reward depends on, so the L2 keeps them at 0)."""
    d = tree_problem.node_features[0].shape[-1]
    n_leaf = tree_problem.mdp.n_prompts * tree_problem.mdp.n_traj
    cut = lambda th: torch.cat([th[..., :d], th[..., -n_leaf:]], -1)  # noqa: E731
    s = tree.selections["rm"]
    path = None if s.path_theta is None else [cut(t) for t in s.path_theta]
    return (replace(s, theta=cut(s.theta), grid_theta=[cut(t) for t in s.grid_theta], path_theta=path),
            tree.population.get("rlhf", {}))
