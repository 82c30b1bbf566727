"""The frontier figure's parts (`allroads.llm.figures.frontier`, `frontier_rules`, the soft-label DPO path and the online
data's diversity): every point is the stage it stands for, oracle pairs rank by r*, soft labels train as their
closed form says, and each rule picks the point its definition names on constructed curves."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from allroads.llm.core.config import DPOConfig
from allroads.llm.data.rows import TokenizedPair
from allroads.llm.figures.frontier import evaluate_point, frontier_curve
from allroads.llm.figures.frontier_rules import aggregate, budget_table, pareto, pick, rule_report
from allroads.llm.model.sample import Completion
from allroads.llm.pipeline import data_stages as G
from allroads.llm.pipeline import train_stages as T
from allroads.llm.pipeline.context import Pipeline
from allroads.llm.pipeline.selection import patience_spent
from allroads.llm.train.methods import train_dpo, train_dpo_soft
from allroads.llm.train.online_data import is_prefix_pair, online_diversity
from allroads.online import OnlinePairs, Scored

from . import _tiny


def _pipe(tmp_path) -> Pipeline:
    return Pipeline(tmp_path / "runs", _tiny.small_settings(), log=lambda _: None)


# ------------------------------------------------------------------ a sweep point is the stage it stands for
def test_frontier_points_equal_separate_single_runs(tmp_path):
    """Epoch 1 of a 2-epoch sweep run (stopped at the epoch boundary, resumed) evaluates exactly like a separate
    1-epoch DPO stage at that lr, and epoch 2 like a 2-epoch stage (tolerance 1e-9: the same weights give the same
    samples and log-probs on CPU); the online sweep likewise against an online DPO stage."""
    pipe = _pipe(tmp_path)
    sft = T.sft(pipe)
    rm = T.rm(pipe, sft, 0)
    lr = 3e-3
    points = json.loads((frontier_curve(pipe, "dpo", sft, sft, rm, 0, lr, 2).path / "points.json").read_text())
    assert [p["epochs"] for p in points] == [1, 2]
    sft_model, rm_model = pipe.policy(sft), pipe.reward_model(rm)
    for p in points:
        single = pipe.with_settings(dataclasses.replace(pipe.settings, dpo=dataclasses.replace(pipe.settings.dpo, lr=lr,
                                                                                         epochs=p["epochs"])))
        alone = evaluate_point(pipe, pipe.policy(T.dpo(single, sft, 0)).eval(), sft_model, rm_model, 0)
        for k in ("known_score", "kl", "on_policy_r_star", "implicit_loglik", "rm_score"):
            assert abs(alone[k] - p[k]) <= 1e-9, (k, p["epochs"], alone[k], p[k])
    assert points[0]["kl"] != points[1]["kl"]  # the two epochs are different policies

    pairs = G.online_pairs(pipe, sft, rm, "global", 0)
    online = json.loads((frontier_curve(pipe, "online_dpo", sft, sft, rm, 0, lr, 1, pairs).path / "points.json")
                        .read_text())
    single = pipe.with_settings(dataclasses.replace(pipe.settings, online_dpo=dataclasses.replace(pipe.settings.dpo, lr=lr, epochs=1)))
    alone = evaluate_point(pipe, pipe.policy(T.online_dpo(single, sft, pairs, 0)).eval(), sft_model, rm_model, 0)
    assert abs(alone["known_score"] - online[0]["known_score"]) <= 1e-9 and abs(alone["kl"] - online[0]["kl"]) <= 1e-9


def test_sft_point_has_zero_kl_and_the_sweep_moves_away(tmp_path):
    pipe = _pipe(tmp_path)
    sft = T.sft(pipe)
    rm = T.rm(pipe, sft, 0)
    model = pipe.policy(sft).eval()
    p = evaluate_point(pipe, model, pipe.policy(sft), pipe.reward_model(rm), 0)
    assert p["kl"] == 0.0 and p["implicit_loglik"] == pytest.approx(-0.6931471805599453, abs=1e-12)  # log ½


# ------------------------------------------------------------------ oracle labels rank by r*
def test_oracle_labelled_pairs_rank_by_the_known_score(tmp_path):
    """Pairs of the oracle stage (rm_kind ``known``) are, per row, the highest- and lowest-r* sample of that row's
    saved samples (ties to the lowest index); the global-RM pairs of the same samples disagree somewhere (control)."""
    pipe = _pipe(tmp_path)
    sft = T.sft(pipe)
    known = pipe.known_score()
    art = G.online_pairs(pipe, sft, None, "known", 0)
    rows = [json.loads(line) for line in (art.path / "scored.jsonl").read_text().splitlines()]
    pairs = [json.loads(line) for line in (art.path / "pairs.jsonl").read_text().splitlines()]
    expected = []
    for row in rows:
        r = [known(row["prompt"], c["text"]) for c in row["completions"]]
        assert [c["score"] for c in row["completions"]] == r  # the stored scores are r*
        if max(r) > min(r):
            expected.append((row["completions"][r.index(max(r))]["token_ids"],
                             row["completions"][r.index(min(r))]["token_ids"]))
    assert len(expected) == len(pairs) > 0
    assert [(p["chosen_ids"], p["rejected_ids"]) for p in pairs] == expected
    report = json.loads((art.path / "report.json").read_text())
    assert {"mean_distinct", "prefix_pair_share", "tied_share"} <= set(report)
    rm_art = G.online_pairs(pipe, sft, T.rm(pipe, sft, 0), "global", 0)
    rm_pairs = [json.loads(line) for line in (rm_art.path / "pairs.jsonl").read_text().splitlines()]
    assert [(p["chosen_ids"], p["rejected_ids"]) for p in rm_pairs] != [(p["chosen_ids"], p["rejected_ids"]) for p in
                                                                      pairs]


# ------------------------------------------------------------------ soft labels
def _pairs(tk, n=8, p_w=1.0, swap=False):
    texts, rows = _tiny.prompts(tk, n=n)
    out = []
    for t, r in zip(texts, rows):
        w = tk(" " + r.summary)["input_ids"] + [tk.eos_token_id]
        l = tk(" mother")["input_ids"] + [tk.eos_token_id]
        out.append(TokenizedPair(tk(t)["input_ids"], *((l, w) if swap else (w, l)), p_w))
    return out


def _cfg(tmp_path, name, **kw):
    return DPOConfig(output_dir=str(tmp_path / name), batch_size=4, micro_batch_size=4, epochs=2, lr=1e-2,
                     schedule="constant", progress=False, beta=0.1, **kw)


def test_soft_dpo_labels_are_the_mixture_of_the_two_hard_labels(tmp_path):
    """dpo_soft_loss(p) = p·(hard loss of ξ_w ≻ ξ_l) + (1 − p)·(hard loss of ξ_l ≻ ξ_w). So train_dpo_soft with every
    p_w = 1 trains as train_dpo, and with every p_w = 0 as train_dpo on the swapped pairs (float64, parameters to
    1e-10); p_w = ½ trains to neither (control), and hard-label training refuses soft labels."""
    tk = _tiny.tok()

    def run(fit, name, p_w, swap=False):
        pol = _tiny.policy(tk, seed=1, dtype="float64")
        fit(pol, _tiny.policy(tk, seed=1, dtype="float64"), _pairs(tk, p_w=p_w, swap=swap), _cfg(tmp_path, name))
        return pol.state_dict()

    def close(a, b):
        return all(torch.allclose(a[k], b[k], atol=1e-10, rtol=0) for k in a)

    hard, swapped = run(train_dpo, "hard", 1.0), run(train_dpo, "swapped", 1.0, swap=True)
    assert close(hard, run(train_dpo_soft, "soft1", 1.0))
    assert close(swapped, run(train_dpo_soft, "soft0", 0.0))
    half = run(train_dpo_soft, "half", 0.5)
    assert not close(half, hard) and not close(half, swapped) and not close(hard, swapped)
    with pytest.raises(ValueError, match="soft label"):
        train_dpo(_tiny.policy(tk), _tiny.policy(tk), _pairs(tk, p_w=0.7), _cfg(tmp_path, "refused"))
    with pytest.raises(ValueError, match="outside"):
        train_dpo_soft(_tiny.policy(tk), _tiny.policy(tk), _pairs(tk, p_w=1.5), _cfg(tmp_path, "bad"))


# ------------------------------------------------------------------ diversity of online data
def _c(text, ids):
    return Completion(text, tuple(ids), True)


def test_online_diversity_counts_distinct_prefix_pairs_and_ties():
    assert is_prefix_pair("mother lost", "mother") and is_prefix_pair("mother", "mother lost car")
    assert not is_prefix_pair("mother lost", "mother lost") and not is_prefix_pair("lost mother", "mother")
    rows = [[_c("a", [1]), _c("a b", [1, 2]), _c("a", [1])], [_c("c", [3]), _c("c", [3]), _c("c", [3])]]
    scored = Scored(["p", "q"], rows, torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0]]), 1.0)
    pairs = OnlinePairs(["p"], [rows[0][1]], [rows[0][0]], torch.tensor([2.0]), torch.tensor([1.0]), None,
                        torch.tensor([True, False]), 1)
    d = online_diversity(scored, pairs)
    assert d == {"mean_distinct": 1.5, "n_samples": 3, "prefix_pair_share": 1.0, "tied_share": 0.5}


# ------------------------------------------------------------------ rules on constructed curves
def _pt(lr, epochs, seed, kl, known, loglik, rm):
    return {"lr": lr, "epochs": epochs, "seed": seed, "kl": kl, "known_score": known, "on_policy_r_star": known,
            "implicit_loglik": loglik, "rm_score": rm}


CURVE = [  # an online method that collapses: the RM keeps rising, r* and the implicit likelihood fall past KL 2
    _pt(1e-4, 1, 0, 0.2, 1.5, -0.60, 0.1), _pt(1e-4, 2, 0, 0.9, 2.0, -0.50, 0.4),
    _pt(1e-3, 1, 0, 2.0, 2.6, -0.40, 0.8), _pt(1e-3, 2, 0, 6.0, 1.0, -0.55, 2.5),
    _pt(3e-3, 1, 0, 20.0, -1.4, -0.90, 4.0),
]


def test_rules_pick_the_documented_points():
    curve = aggregate(CURVE)
    assert (pick("implicit_loglik", curve, 3.0)["lr"], pick("implicit_loglik", curve, 3.0)["epochs"]) == (1e-3, 1)
    assert pick("kl_budget", curve, 3.0)["kl"] == 2.0 and pick("kl_budget", curve, 1.0)["kl"] == 0.9
    assert pick("kl_budget", curve, 0.1)["kl"] == 0.2  # nothing inside: the least KL
    assert pick("rm_score", curve, 3.0)["lr"] == 3e-3  # the RM's own score picks the collapsed point
    report = rule_report({"m": curve}, 3.0, ("known_score",))["m"]
    assert report["implicit_loglik"]["shortfall"]["known_score"] == 0.0
    assert report["rm_score"]["shortfall"]["known_score"] == pytest.approx(4.0)
    assert [p["kl"] for p in pareto(curve, "known_score")] == [0.2, 0.9, 2.0]
    sft = {"kl": 0.0, "known_score": 1.3}
    table = budget_table({"m": curve}, sft, (0.5, 1.5, 10.0), "known_score")
    assert table["0.5"]["m"]["known_score"] == 1.5 and table["1.5"]["m"]["known_score"] == 2.0
    assert table["10"]["m"]["known_score"] == 2.6 and budget_table({"m": curve}, sft, (0.1,), "known_score")["0.1"][
        "m"] is None


def test_aggregate_means_over_seeds_with_their_standard_error():
    pts = [_pt(1e-3, 1, 0, 1.0, 2.0, -0.5, 0.0), _pt(1e-3, 1, 1, 3.0, 4.0, -0.7, 1.0)]
    (row,) = aggregate(pts)
    assert row["kl"] == 2.0 and row["known_score"] == 3.0 and row["n_seeds"] == 2
    assert row["known_score_se"] == pytest.approx(1.0)  # sd √2 / √2


class _Worker:
    """The part of a Pipeline ``_sweep`` uses: the order this worker takes the lrs in, here rotated by ``rank / n``
    (any order can happen when other workers hold some of them)."""

    def __init__(self, rank: int, n: int):
        self.rank, self.n = rank, n

    def in_turn(self, items, what, **_):
        k = (self.rank * len(items)) // self.n
        return items[k:] + items[:k]


def test_sweep_prunes_the_same_lrs_whatever_the_worker_order(tmp_path):
    """A run whose first epoch is beyond prune_kl ends the method's sweep: every worker order gives the one-process
    points and pruned lrs; the one process never builds a pruned lr, a rotated worker may (and its run is dropped)."""
    from types import SimpleNamespace

    from allroads.llm.figures.frontier import _sweep

    first_kl = {1e-5: 1.0, 1e-4: 2.0, 1e-3: 45.0, 3e-3: 3.0}  # KL need not grow with the lr
    fig = SimpleNamespace(frontier_lrs=tuple(first_kl), prune_kl=30.0)

    def run(rank, n):
        built = []

        def curve(lr):
            built.append(lr)
            d = tmp_path / f"{rank}-{n}-{lr:g}"
            d.mkdir(exist_ok=True)
            (d / "points.json").write_text(json.dumps([{"lr": lr, "epochs": 1, "kl": first_kl[lr]}]))
            return SimpleNamespace(path=d)

        points, pruned = _sweep(_Worker(rank, n), fig, curve, "m seed 0")
        return [(p["lr"], p["kl"]) for p in points], pruned, built

    one = run(0, 1)
    assert one[0] == [(1e-5, 1.0), (1e-4, 2.0), (1e-3, 45.0)] and one[1] == [3e-3]
    assert 3e-3 not in one[2]
    rotated = run(3, 4)  # order 3e-3, 1e-5, 1e-4, 1e-3: it builds 3e-3 before it knows
    assert rotated[:2] == one[:2] and 3e-3 in rotated[2]
    late = run(1, 4)  # order 1e-4, 1e-3, 3e-3, …: knows 1e-3 is beyond before reaching 3e-3, so skips it
    assert late[:2] == one[:2] and 3e-3 not in late[2]


def test_patience_stops_after_the_best_epoch():
    assert not patience_spent([3.0, 2.0, 1.0], 2)
    assert not patience_spent([3.0, 1.0, 1.5], 2) and patience_spent([3.0, 1.0, 1.5, 1.2], 2)
    assert not patience_spent([3.0, 1.0, 1.5, 1.2], 0)


def test_frontier_figure_writes_every_method_budgets_rules_and_a_png(tmp_path):
    """The whole figure on the smallest tiny settings (2 lrs × 1 epoch): the JSON has the issue's schema, every KL
    is to π_sft (SFT's is 0), Online DPO (DPO) starts from the DPO point the rule names, and the PNG is drawn."""
    from allroads.llm.figures.paper import FigureConfig, run_figure

    pipe = _pipe(tmp_path)
    fig = FigureConfig("frontier", seeds=(0,), frontier_lrs=(1e-4, 3e-3), frontier_max_epochs=1)
    r = run_figure(pipe, fig, tmp_path / "out", preset="tiny")
    assert set(r["methods"]) == {"DPO", "Online DPO (SFT)", "Online DPO (SFT), soft labels",
                                 "Online DPO (SFT), oracle labels", "Online DPO (DPO)"}
    for m in r["methods"].values():
        for p in m["points"]:
            assert {"lr", "epochs", "seed", "known_score", "known_score_se", "on_policy_r_star", "kl", "kl_se",
                    "objective"} <= set(p)
            # the point is traceable: its sweep run's directory, finished, of this method's kind and lr
            spec = json.loads((tmp_path / "runs" / p["stage"] / "stage.json").read_text())
            assert (tmp_path / "runs" / p["stage"] / "DONE").is_file() and spec["kind"].startswith("frontier_")
            assert dict(spec["spec"]["args"])["cfg"]["lr"] == p["lr"]
    assert r["sft"]["kl"] == 0.0
    assert set(r["budgets"]["known_score"]) == {"0.5", "1.5", "3", "5", "10"}
    dpo = r["methods"]["DPO"]["curve"]
    inside = [p for p in dpo if p["kl"] <= 3.0]  # the default rule, kl_budget: the most KL within 3 nats
    picked = max(inside, key=lambda p: p["kl"]) if inside else min(dpo, key=lambda p: p["kl"])
    assert r["online_dpo_start"]["rule"] == "kl_budget"
    assert (r["online_dpo_start"]["lr"], r["online_dpo_start"]["epochs"]) == (picked["lr"], picked["epochs"])
    assert r["premise"]["verifier_easier"] == (r["premise"]["global_rm"]["loglik"] >
                                               r["premise"]["dpo_implicit_best"]["loglik"])
    assert {"mean_distinct", "prefix_pair_share", "tied_share"} <= set(r["online_data"]["Online DPO (SFT)"][0])
    assert (tmp_path / "out" / "frontier.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="distinct"):
        FigureConfig("frontier", seeds=(0, 0)).validate()
    with pytest.raises(ValueError, match="frontier_methods"):
        FigureConfig("frontier", frontier_methods=("DPO", "PPO")).validate()

    # one method again (with DPO, whose curve its start and the premise read): the same points, nothing rebuilt
    before = len(pipe.cache.records)
    one = run_figure(pipe, dataclasses.replace(fig, frontier_methods=("Online DPO (DPO)",)), tmp_path / "one",
                     preset="tiny")
    assert list(one["methods"]) == ["DPO", "Online DPO (DPO)"]
    for m in one["methods"]:
        assert one["methods"][m]["points"] == r["methods"][m]["points"]
    assert set(one["budgets"]["known_score"]["3"]) == {"SFT", "DPO", "Online DPO (DPO)"}
    assert all(rec["status"] == "reused" for rec in pipe.cache.records[before:])
    assert one["online_dpo_start"] == r["online_dpo_start"] and one["premise"] == r["premise"]
