"""Every proof check passes on a few random instances and its negative control fails by its margin;
the CLI's exit status, --only and --json behave as documented."""
import json
import math

import pytest
import torch

from allroads.tabular import LogLinearPolicy, policy_mle_loss

import proofs_check
from proofs_check import ALL_CHECKS, select_checks
from proofs_check.__main__ import main
from proofs_check.common import Check, instance_generator, run_check

N_INSTANCES = 2


@pytest.mark.parametrize("check", ALL_CHECKS, ids=[c.name for c in ALL_CHECKS])
def test_check_passes_and_control_fails(check):
    res = run_check(check, N_INSTANCES, seed=123, progress=False)
    assert res.passed, f"{check.name}: max error {res.max_error:.3e} > tolerance {res.tolerance:.1e}"
    nc = res.negative_control
    assert nc.failed_as_expected, f"{check.name}: negative control error {nc.error:.3e} only {nc.margin:.1f}× tolerance"
    assert res.ok


def test_instances_are_reproducible():
    check = select_checks(["bt_gibbs"])[0]
    a = check.instance(instance_generator(7, check.name, 3))
    b = check.instance(instance_generator(7, check.name, 3))
    assert a == b


def test_worst_instance_is_replayed_by_start():
    """The report names the worst instance; ``start=K, n=1`` reruns exactly that instance."""
    check = select_checks(["bt_gibbs"])[0]
    full = run_check(check, 6, seed=5, progress=False)
    errs = [check.instance(instance_generator(5, check.name, k))[0] for k in range(6)]
    assert full.worst_instance == max(range(6), key=errs.__getitem__)
    one = run_check(check, 1, seed=5, progress=False, start=full.worst_instance)
    assert one.max_error == full.max_error and one.worst_instance == full.worst_instance


def test_select_checks_by_module_and_name():
    assert [c.name for c in select_checks(["thm_2_4"])] == ["thm_2_4", "thm_2_4_mc"]
    assert [c.name for c in select_checks(["thm_2_4_mc"])] == ["thm_2_4_mc"]
    assert len(select_checks()) == len(ALL_CHECKS) == 11
    with pytest.raises(KeyError):
        select_checks(["no_such_check"])


def test_every_module_docstring_quotes_its_statement():
    for m in proofs_check.MODULES:
        doc = m.__doc__
        assert doc and "Negative control" in doc and "olerance" in doc, m.__name__


def test_cli_json_and_exit_status(tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = main(["--instances", "1", "--seed", "5", "--only", "bt_gibbs", "--only", "q_logits", "--json", str(out), "--no-progress"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["all_passed"] is True
    assert [c["name"] for c in report["checks"]] == ["bt_gibbs", "q_logits"]
    for c in report["checks"]:
        assert set(c) >= {"name", "statement", "instances", "max_error", "tolerance", "passed", "negative_control"}
        assert set(c["negative_control"]) == {"description", "error", "margin", "failed_as_expected"}
        assert c["max_error"] <= 1e-8  # identities
    assert "bt_gibbs" in capsys.readouterr().out
    assert main(["--only", "nope", "--no-progress"]) == 2


def test_cli_exit_status_nonzero_on_failure(monkeypatch):
    """A check that fails (or whose control passes) must make the run exit 1."""
    import dataclasses

    bad = dataclasses.replace(select_checks(["bt_gibbs"])[0], tolerance=1e-30)
    monkeypatch.setattr(proofs_check.__main__, "select_checks", lambda names: [bad])
    assert main(["--instances", "1", "--no-progress"]) == 1


@pytest.mark.parametrize("values, bad", [
    ([(1e-9, 1.0), (math.nan, math.nan)], 1),  # NaN after a finite instance: Python's max/min would skip it
    ([(math.nan, 1.0), (1e-9, 1.0)], 0),
    ([(1e-9, 1.0), (1e-9, math.inf)], 1),  # an infinite control value is not a control that failed
    ([(1e-9, 1.0), (-math.inf, 1.0)], 1),
])
def test_nonfinite_values_fail_and_name_the_instance(values, bad):
    it = iter(values)
    r = run_check(Check("x", "s", 1e-6, "d", lambda g: next(it)), len(values), 0, False)
    assert not r.ok and r.nonfinite_instances == [bad]
    assert r.worst_instance == bad or r.weakest_control_instance == bad
    it = iter([(1e-9, 1.0), (1e-8, 2.0)])  # and finite values still pass (1.0 / 1e-6 ≥ 100)
    assert run_check(Check("x", "s", 1e-6, "d", lambda g: next(it)), 2, 0, False).ok


def test_cli_prints_replay_for_nonfinite(monkeypatch, capsys):
    import proofs_check.__main__ as cli

    calls = iter(range(100))

    def instance(g):  # instance 3 of 5 gives NaN
        return (math.nan, 1.0) if next(calls) == 3 else (1e-9, 1.0)

    monkeypatch.setattr(cli, "select_checks", lambda names: [Check("nan_check", "s", 1e-6, "d", instance)])
    assert cli.main(["--instances", "5", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "NaN or inf on instance(s) [3]" in out and "--start 3 --instances 1" in out


def test_bt_gibbs_catches_a_normaliser_that_drops_a_child(monkeypatch):
    """Differences of log P* cannot see a wrong normaliser; the closed-form and Σ P* = 1 parts of bt_gibbs can:
    a soft VI whose logsumexp skips each node's third child must fail the check (it passed before they existed)."""
    import allroads.tabular.soft_rl as sr
    from proofs_check.bt_gibbs import CHECK

    orig = sr.logsumexp_children
    monkeypatch.setattr(sr, "logsumexp_children",
                        lambda x: orig(x[..., [i for i in range(x.shape[-1]) if i != 2]]) if x.shape[-1] > 2 else orig(x))
    assert not run_check(CHECK, 10, 0, False).passed
    monkeypatch.setattr(sr, "logsumexp_children", orig)
    assert run_check(CHECK, 10, 0, False).ok


def test_thm_2_3_catches_a_dpo_loss_with_swapped_references(monkeypatch):
    """A hard-label DPO loss that pairs each sequence with the other member's reference log-prob survived every
    check before the restricted Thm 2.3 case (its hard-label rows have π_ref(ξ_w) ≠ π_ref(ξ_l)); now it fails."""
    import allroads.tabular.fit as fit_module
    from proofs_check.thm_2_3 import CHECK

    orig = fit_module.dpo_loss
    monkeypatch.setattr(fit_module, "dpo_loss", lambda lw, ll, rw, rl, beta: orig(lw, ll, rl, rw, beta))
    assert not run_check(CHECK, 3, 0, False).passed


def test_thm_3_1_catches_a_soft_optimal_class_that_ignores_beta(monkeypatch):
    """With a linear-cone R_sim, Π(R_sim) is the same set at every β, so a SoftOptimalPolicyClass with β fixed to
    1 survived; the affine R_sim of the restricted case makes β matter, and the check fails."""
    import allroads.tabular.classes as classes
    from proofs_check.thm_3_1 import CHECK

    def beta_one(self, theta):
        return list(classes.soft_value_iteration(self.mdp, self.reward_class.reward(theta), ref=self.ref, beta=1.0).policy.log_pi)

    monkeypatch.setattr(classes.SoftOptimalPolicyClass, "log_pi", beta_one)
    assert not run_check(CHECK, 3, 0, False).passed


@pytest.mark.slow
def test_every_mutation_is_caught():
    """``python -m proofs_check.mutants``: each named library mutation makes at least one check fail (≈ 30 s)."""
    from proofs_check.mutants import MUTATIONS, run_mutation

    for m in MUTATIONS:
        assert run_mutation(m, instances=3)["caught"], m.name


def test_mutations_restore_the_library():
    """After a mutation's context the library is the original again (every check passes on one instance)."""
    from proofs_check import ALL_CHECKS
    from proofs_check.mutants import MUTATIONS

    for m in MUTATIONS:
        with m.patch():
            pass
    assert all(run_check(c, 1, 0, False).ok for c in ALL_CHECKS)


def test_adam_path_is_torch_adam_per_block():
    """The sweep's batched Adam (per-block learning rates) = torch.optim.Adam run on each block alone (1e-12)."""
    from proofs_check.partial_coverage_sweep import adam_path

    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 4, 4, dtype=torch.float64, generator=g)
    c = torch.randn(3, 4, dtype=torch.float64, generator=g)

    def loss(th):  # (B, 4) → (B,): a different smooth non-quadratic loss per block
        return torch.log1p(torch.einsum("bij,bj->bi", A, th).pow(2)).sum(-1) + (c * th).sum(-1)

    lr = torch.tensor([[0.3], [0.05], [0.01]], dtype=torch.float64)
    th0 = torch.randn(3, 4, dtype=torch.float64, generator=g)
    got = adam_path(loss, th0, lr, {7, 40})
    for b in range(3):
        p = th0[b].clone().requires_grad_(True)
        opt = torch.optim.Adam([p], lr=float(lr[b]))
        for t in range(1, 41):
            opt.zero_grad()
            full = torch.zeros(3, 4, dtype=torch.float64)
            full[b] = p
            loss(full)[b].backward()
            opt.step()
            if t in (7, 40):
                torch.testing.assert_close(got[t][b], p.detach(), atol=1e-12, rtol=0)


def test_sweep_dpo_never_moves_the_ood_weight_unless_it_is_in_d():
    """The argument of the partial-coverage sweep, on its own code: DPO's θ_2 stays at z0 (to rounding) and
    (θ_0, θ_1) follow the covered problem's run (1e-10); with covered losers θ_2 falls."""
    from proofs_check import partial_coverage_sweep as pcs

    g = torch.Generator().manual_seed(1)
    B = 4
    ref3, ref_eps, ref2, _ = pcs.references(torch.randn(B, 4, 2, dtype=torch.float64, generator=g))
    k = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    psi = torch.zeros(B, 3, 3, dtype=torch.float64)
    psi[:, 0, 0], psi[:, 1, 1], psi[:, 2, 2], psi[:, 2, 0] = 1.0, 1.0, 1.0, k
    cls3 = LogLinearPolicy(pcs.MDP3, pcs.token_features(psi, pcs.MDP3))
    cls2 = LogLinearPolicy(pcs.MDP2, pcs.token_features(torch.eye(2, dtype=torch.float64).expand(B, 2, 2), pcs.MDP2))
    beta, lr = torch.full((B, 1), 0.5, dtype=torch.float64), torch.full((B, 1), 0.1, dtype=torch.float64)
    th0 = torch.tensor([[0.0, 0.0, -6.0]] * B, dtype=torch.float64)
    data = pcs.preference_pairs(pcs.MDP3, False)
    dpo = pcs.adam_path(lambda th: policy_mle_loss(cls3.traj_log_probs(th), data, beta, ref3), th0, lr, {200})[200]
    cov = pcs.adam_path(lambda th: policy_mle_loss(cls2.traj_log_probs(th), pcs.covered_data(data), beta, ref2),
                        th0[:, :2].clone(), lr, {200})[200]
    assert float((dpo[:, 2] + 6.0).abs().max()) < 1e-9, dpo[:, 2] + 6.0  # rounding only: ∂L/∂θ_2 = 0 exactly in exact arithmetic
    torch.testing.assert_close(dpo[:, :2], cov, atol=1e-10, rtol=0)
    assert (dpo[:, 0] > 2).all()  # it did learn: token 0 up (≈ 4.8–5.7 here)
    ctrl = pcs.adam_path(lambda th: policy_mle_loss(cls3.traj_log_probs(th), pcs.preference_pairs(pcs.MDP3, True), beta, ref_eps),
                         th0, lr, {200})[200]
    assert (ctrl[:, 2] < -6.0 - 1.0).all()


def test_once_check_runs_one_instance_and_prints_its_report(capsys):
    """A ``once`` check runs one instance whatever n says, keeps its details, and the CLI prints its report."""
    check = select_checks(["partial_coverage_sweep"])[0]
    res = run_check(check, 5, seed=0, progress=False)
    assert res.instances == 1 and res.ok
    a = res.details["all"]
    assert a["settings"] == 810 and a["inside"] > 0 and a["outside"] > 0
    assert a["effect_inside"] == 1.0 and a["effect_outside"] == 0.0 and a["rlhf_effect"] == 0.0
    assert main(["--only", "partial_coverage_sweep", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Partial coverage sweep" in out and "DPO moves ≥ 1/2" in out


def test_z_of_a_zero_variance_coordinate_is_zero_or_certain_never_nan():
    """thm_2_4_mc's z: se = 0 with an exact estimate → 0, with a biased one → Z_CERTAIN; finite everywhere."""
    from proofs_check.thm_2_4 import Z_CERTAIN, z_max

    assert z_max(torch.tensor([0.0, 0.3]), torch.tensor([0.0, 0.1])) == pytest.approx(3.0)
    assert z_max(torch.tensor([0.2, 0.3]), torch.tensor([0.0, 0.1])) == Z_CERTAIN
    assert z_max(torch.tensor([0.0]), torch.tensor([0.0])) == 0.0


def test_lemma_a_1_control_reference_makes_the_factor_visible():
    """On the instance where a nearly uniform π_ref hid the reference factor (seed 1, instance 122: exact TV
    6.8e-5), the redrawn π_ref moves the MinRelEnt optimum away from P*_r by TV ≥ 1e-3."""
    from allroads.tabular import gibbs_log_probs, soft_value_iteration
    from proofs_check.common import max_tv, random_reward, random_small_mdp, uniform
    from proofs_check.lemma_a_1 import visible_reference

    g = instance_generator(1, "lemma_a_1", 122)
    beta = uniform(g, 0.5, 2.0)
    mdp = random_small_mdp(g)
    r = random_reward(mdp, g)
    ref = visible_reference(mdp, r, beta, g)
    lp = soft_value_iteration(mdp, r, ref=ref, beta=beta).policy.traj_log_probs()
    assert max_tv(lp, gibbs_log_probs(mdp, r, beta)) >= 1e-3
