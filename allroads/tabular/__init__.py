"""The exact tree-MDP engine: enumerate every trajectory, compute every quantity of Section 2 in float64."""
from allroads.tabular.classes import (LinearReward, LocalReward, LogLinearPolicy, SharedScorer, SoftOptimalPolicyClass, TabularReward, TabularSoftmaxPolicy)
from allroads.tabular.data import (PreferenceData, bt_nll, bt_probability, label_pairs, population_preferences, restrict_to_coverage, sample_preferences)
from allroads.tabular.divergence import forward_kl, kl_divergence, policy_kl, reverse_kl, tv_distance
from allroads.tabular.fit import (ConvergenceError, FitResult, fit_bt_reward, fit_policy_mle, fit_soft_rl, minimize_lbfgs, policy_mle_loss, rkl_projection)
from allroads.tabular.mdp import TreeMDP
from allroads.tabular.policy import TabularPolicy, sample_from_log_probs, sample_prompts, sample_trajectories
from allroads.tabular.soft_rl import SoftVIResult, gibbs_log_probs, soft_rl_objective, soft_value_iteration

__all__ = [name for name in dir() if not name.startswith("_")]
