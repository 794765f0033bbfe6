"""Independent re-statements of OpenRLHF's and verl's RL formulas, written from reading their source.

Each function states the formula the named peer function computes, in plain (often loop-based) torch, so that the
tests can check trl_basics against it. Nothing here is imported by trl_basics. The commits read:

- OpenRLHF/OpenRLHF @ 3c3be6234e0cb353e76bb8019947db9dfe99fca7
- volcengine/verl @ b178a3cd56f58b2d502255daba591e92833930a7
- verl-project/verl @ 1dda039b9c6311889a9c9a26040677e1254814f9 (the same repository, renamed; REINFORCE++'s returns
  over holes in the mask changed since b178a3c, every other function re-stated here is unchanged)
"""

from __future__ import annotations

import torch
from torch import Tensor

OPENRLHF = "OpenRLHF/OpenRLHF@3c3be6234e0cb353e76bb8019947db9dfe99fca7"
VERL = "volcengine/verl@b178a3cd56f58b2d502255daba591e92833930a7"
VERL_CURRENT = "verl-project/verl@1dda039b9c6311889a9c9a26040677e1254814f9"


# --- OpenRLHF ---------------------------------------------------------------------------------------------------


# OpenRLHF/OpenRLHF, openrlhf/models/utils.py, compute_approx_kl, @3c3be62.
# ℓ = logp - logp_ref in float32; k1 = ℓ, k2 = ℓ²/2, k3 = e^{-ℓ} - 1 + ℓ; the *output* is clamped to [-10, 10].
def openrlhf_approx_kl(logp: Tensor, ref: Tensor, estimator: str, dtype=torch.float32) -> Tensor:
    ell = logp.to(dtype) - ref.to(dtype)  # OpenRLHF works in float32; dtype=float64 compares the formula alone
    if estimator == "k1":
        value = ell
    elif estimator == "k2":
        value = 0.5 * ell * ell
    elif estimator == "k3":
        value = torch.exp(-ell) - 1.0 + ell
    else:
        raise ValueError(estimator)
    return torch.clamp(value, -10.0, 10.0)


# OpenRLHF/OpenRLHF, openrlhf/models/utils.py, compute_reward, @3c3be62.
# Optional clamp of the scalar reward to (lo, hi), then r at the last active token plus -β·kl at every token.
def openrlhf_token_rewards(r: Tensor, kl_coef: float, kl: Tensor, mask: Tensor, clip_range=None) -> Tensor:
    kl_coef = max(kl_coef, 0.0)
    if clip_range is not None:
        r = r.clamp(clip_range[0], clip_range[1])
    out = -kl_coef * kl.clone()
    for i in range(mask.shape[0]):
        active = [t for t in range(mask.shape[1]) if mask[i, t] > 0.5]
        last = active[-1] if active else mask.shape[1] - 1  # argmax over an all-zero row picks index 0 of the flip
        out[i, last] = out[i, last] + r[i].to(out.dtype)
    return out


# OpenRLHF/OpenRLHF, openrlhf/trainer/ppo_utils/experience_maker.py, get_cumulative_returns, @3c3be62.
# Masked rewards, G_t = r_t + γ G_{t+1} over every position: a hole carries the running sum on but spends a factor γ
# per masked position (equal to a transparent hole only at γ = 1).
def openrlhf_cumulative_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    rewards = rewards * mask
    out = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype)
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = rewards[:, t] + gamma * running
        out[:, t] = running
    return out


# OpenRLHF/OpenRLHF, openrlhf/trainer/ppo_utils/experience_maker.py, get_advantages_and_returns, @3c3be62.
# Values and rewards masked to 0; δ_t = r_t + γ V_{t+1} - V_t (V past the end = 0); A_t = δ_t + γλ A_{t+1}; R = A + V.
# Over a hole the recursion runs on with V = r = 0 there: the token before a hole bootstraps from 0, the hole adds
# δ = γ V_next and spends γλ per masked position.
def openrlhf_gae(values: Tensor, rewards: Tensor, mask: Tensor, gamma: float, lambd: float) -> tuple[Tensor, Tensor]:
    values = values * mask
    rewards = rewards * mask
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype)
    for t in range(length - 1, -1, -1):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lambd * running
        advantages[:, t] = running
    return advantages, advantages + values


# OpenRLHF/OpenRLHF, openrlhf/trainer/ppo_utils/experience_maker.py, compute_advantages_and_returns (the final
# "normalize advantages across all experiences" block, used for gae / reinforce / reinforce_baseline), @3c3be62.
# μ = Σ m·A / Σ m, Var = Σ m (A - μ)² / Σ m (population), A ← (A - μ) · max(Var, 1e-8)^{-1/2}.
def openrlhf_whiten(advantages: Tensor, mask: Tensor, std_norm: bool = True, dtype=torch.float32) -> Tensor:
    advantages = advantages.to(dtype)
    count = mask.sum()
    mean = (advantages * mask).sum() / count
    if not std_norm:
        return advantages - mean
    var = ((advantages - mean) ** 2 * mask).sum() / count
    return (advantages - mean) * torch.rsqrt(torch.clamp(var, min=1e-8))


# OpenRLHF/OpenRLHF, openrlhf/trainer/ppo_utils/experience_maker.py, compute_advantages_and_returns (the
# "baseline subtraction" block), @3c3be62. rewards is (prompts, k).
# rloo: r - (Σ_group r - r)/(k - 1); reinforce_baseline: r - mean_group; reinforce: unchanged.
def openrlhf_shape_rewards(rewards: Tensor, estimator: str) -> Tensor:
    k = rewards.shape[1]
    if estimator == "rloo":
        return rewards - (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    if estimator == "reinforce_baseline":
        return rewards - rewards.mean(dim=1, keepdim=True)
    return rewards


# The whole advantage path of OpenRLHF's experience maker for the critic-free estimators, pieced together from
# make_experience (KL, zero when kl.use_loss), compute_advantages_and_returns and the functions above.
def openrlhf_advantages(
    estimator: str,
    rewards: Tensor,
    k: int,
    logp: Tensor,
    ref: Tensor,
    mask: Tensor,
    kl_coef: float,
    kl_estimator: str = "k1",
    kl_use_loss: bool = False,
    clip_range=None,
    dtype=torch.float32,
    whiten: bool = True,
    gamma: float = 1.0,
) -> Tensor:
    kl = torch.zeros_like(logp, dtype=dtype) if kl_use_loss else openrlhf_approx_kl(logp, ref, kl_estimator, dtype)
    shaped = openrlhf_shape_rewards(rewards.to(dtype).reshape(-1, k), estimator).reshape(-1)
    token_rewards = openrlhf_token_rewards(shaped, kl_coef, kl, mask, clip_range)
    advantages = openrlhf_cumulative_returns(token_rewards, mask, gamma)
    if whiten and estimator in ("reinforce", "reinforce_baseline"):
        advantages = openrlhf_whiten(advantages, mask, dtype=dtype)
    return advantages


# OpenRLHF/OpenRLHF, openrlhf/models/loss.py, PolicyLoss.forward (policy_loss_type="ppo", before aggregate_loss),
# @3c3be62. ρ = exp(clamp(logp - old, ±20)); s1 = ρA, s2 = clip(ρ, 1-ε_l, 1+ε_h)A;
# loss = -min(s1, s2), and with dual clip c: for A < 0, loss = -max(min(s1, s2), c·A).
def openrlhf_policy_loss(logp, old, adv, eps_low, eps_high, dual_clip=None) -> Tensor:
    ratio = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
    s1 = ratio * adv
    s2 = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    inner = torch.min(s1, s2)
    if dual_clip is None:
        return -inner
    return -torch.where(adv < 0, torch.max(inner, dual_clip * adv), inner)


# OpenRLHF/OpenRLHF, openrlhf/models/loss.py, ValueLoss.forward (token_level_loss=True, no global token count),
# @3c3be62. V_c = V_old + clip(V - V_old, ±ε); loss = ½ · masked token mean of max((V_c - R)², (V - R)²).
def openrlhf_value_loss(values, old_values, returns, mask, clip_eps) -> Tensor:
    clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    per_token = torch.max((clipped - returns) ** 2, (values - returns) ** 2)
    return 0.5 * (per_token * mask).sum() / mask.sum()


# OpenRLHF/OpenRLHF, openrlhf/trainer/ppo_utils/kl_controller.py, AdaptiveKLController.update, @3c3be62
# (identical formula in volcengine/verl, verl/trainer/ppo/core_algos.py, AdaptiveKLController.update, @b178a3c).
# e = clip(KL/target - 1, ±0.2); β ← β · (1 + e · n / horizon).
class PeerAdaptiveKL:
    def __init__(self, init: float, target: float, horizon: float) -> None:
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, current: float, n_steps: int) -> None:
        error = min(max(current / self.target - 1.0, -0.2), 0.2)
        self.value = self.value * (1.0 + error * n_steps / self.horizon)


# --- verl -------------------------------------------------------------------------------------------------------


# volcengine/verl, verl/trainer/ppo/core_algos.py, kl_penalty_forward, @b178a3c.
# k1 = ℓ, k2 = ℓ²/2 unclamped; k3 ("low_var_kl"): x = clamp(-ℓ, ±20), k3 = clamp(e^x - x - 1, ±10).
def verl_kl_penalty(logp: Tensor, ref: Tensor, estimator: str) -> Tensor:
    if estimator == "k1":
        return logp - ref
    if estimator == "k2":
        return 0.5 * (logp - ref) ** 2
    if estimator == "k3":
        x = torch.clamp(ref - logp, -20.0, 20.0)
        return torch.clamp(torch.exp(x) - x - 1.0, -10.0, 10.0)
    raise ValueError(estimator)


# volcengine/verl, verl/utils/torch_functional.py, masked_mean / masked_var / masked_whiten, @b178a3c.
# μ = Σ m x / (Σ m + 1e-8); Var = Σ m (x - μ)² / (Σ m + 1e-8) · n/(n - 1) (unbiased); out = (x - μ) · (Var + 1e-8)^{-1/2}.
def verl_masked_whiten(x: Tensor, mask: Tensor) -> Tensor:
    n = mask.sum()
    mean = (torch.where(mask.bool(), x, 0.0) * mask).sum() / (n + 1e-8)
    centered = x - mean
    var = (torch.where(mask.bool(), centered**2, 0.0) * mask).sum() / (n + 1e-8)
    var = var * n / (n - 1)
    return centered * torch.rsqrt(var + 1e-8)


# volcengine/verl, verl/trainer/ppo/ray_trainer.py, apply_kl_penalty, @b178a3c.
# token_level_rewards = scores - β · kl · mask; the controller sees the batch mean of per-sequence token-mean KL.
def verl_kl_reward(scores: Tensor, logp: Tensor, ref: Tensor, mask: Tensor, beta: float, estimator: str):
    kld = verl_kl_penalty(logp, ref, estimator) * mask
    per_sequence = (kld * mask).sum(dim=-1) / (mask.sum(dim=-1) + 1e-8)
    return scores - beta * kld, float(per_sequence.mean())


def verl_scores(r: Tensor, mask: Tensor) -> Tensor:
    """The reward manager's token_level_scores: the scalar reward at the last response token."""
    out = torch.zeros(mask.shape, dtype=r.dtype)
    for i in range(mask.shape[0]):
        active = [t for t in range(mask.shape[1]) if mask[i, t] > 0]
        out[i, active[-1]] = r[i]
    return out


# verl-project/verl, verl/trainer/ppo/core_algos.py, compute_reinforce_plus_plus_outcome_advantage, @1dda039.
# G_t = r_t + γ G_{next active}: at a masked position the running sum is carried over unchanged (no γ, no reward) and
# the return there is 0; advantages = whiten(G) · mask.
def verl_reinforce_pp(token_rewards: Tensor, mask: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    returns = torch.zeros_like(token_rewards)
    running = torch.zeros(token_rewards.shape[0], dtype=token_rewards.dtype)
    for t in range(token_rewards.shape[1] - 1, -1, -1):
        candidate = token_rewards[:, t] + gamma * running
        returns[:, t] = candidate * mask[:, t]
        running = candidate * mask[:, t] + running * (1 - mask[:, t])
    return verl_masked_whiten(returns, mask) * mask, returns


# volcengine/verl, verl/trainer/ppo/core_algos.py, compute_reinforce_plus_plus_outcome_advantage, @b178a3c (before
# the change above). G_t = r_t + γ G_{t+1}, the running sum reset to 0 at every masked position.
def verl_reinforce_pp_b178a3c(token_rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    returns = torch.zeros_like(token_rewards)
    running = torch.zeros(token_rewards.shape[0], dtype=token_rewards.dtype)
    for t in range(token_rewards.shape[1] - 1, -1, -1):
        running = token_rewards[:, t] + gamma * running
        returns[:, t] = running
        running = running * mask[:, t]
    return returns


def _groups(index: list[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for row, key in enumerate(index):
        groups.setdefault(key, []).append(row)
    return groups


# volcengine/verl, verl/trainer/ppo/core_algos.py, compute_reinforce_plus_plus_baseline_outcome_advantage, @b178a3c.
# s_i = Σ_t token_rewards_i; s_i ← s_i - mean of its group (a group of one keeps s_i: its mean is taken as 0);
# A = whiten(s_i tiled over the response · mask) · mask.
def verl_reinforce_pp_baseline(token_rewards: Tensor, mask: Tensor, index: list[int]) -> tuple[Tensor, Tensor]:
    scores = token_rewards.sum(dim=-1).clone()
    for rows in _groups(index).values():
        mean = scores[rows].mean() if len(rows) > 1 else torch.zeros((), dtype=scores.dtype)
        scores[rows] = scores[rows] - mean
    tiled = scores.unsqueeze(-1) * mask
    return verl_masked_whiten(tiled, mask) * mask, tiled


# volcengine/verl, verl/trainer/ppo/core_algos.py, compute_rloo_outcome_advantage, @b178a3c.
# s_i = Σ_t token_rewards_i; groups of n > 1: A_i = n/(n-1) · (s_i - mean_group); a group of one keeps s_i.
def verl_rloo(token_rewards: Tensor, mask: Tensor, index: list[int]) -> Tensor:
    scores = token_rewards.sum(dim=-1).clone()
    out = scores.clone()
    for rows in _groups(index).values():
        n = len(rows)
        if n > 1:
            out[rows] = (scores[rows] - scores[rows].mean()) * n / (n - 1)
    return out.unsqueeze(-1) * mask


# volcengine/verl, verl/trainer/ppo/core_algos.py, compute_gae_advantage_return, @b178a3c (unchanged @1dda039).
# Backwards over positions: δ_t = r_t + γ V_next - V_t, A = δ_t + γλ A_next; at masked positions V_next and A_next
# are carried through unchanged (observation tokens are skipped). R = A + V; the advantages are whitened.
def verl_gae(token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float):
    batch, length = token_rewards.shape
    next_value = torch.zeros(batch, dtype=values.dtype)
    running = torch.zeros(batch, dtype=values.dtype)
    raw = torch.zeros_like(values)
    for t in range(length - 1, -1, -1):
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        candidate = delta + gamma * lam * running
        m = mask[:, t]
        next_value = values[:, t] * m + (1 - m) * next_value
        running = candidate * m + (1 - m) * running
        raw[:, t] = running
    return verl_masked_whiten(raw, mask), raw + values, raw


# volcengine/verl, verl/trainer/ppo/core_algos.py, compute_policy_loss_vanilla (per-token pg_losses before agg_loss),
# @b178a3c. ρ = exp(clamp(logp - old, ±20)); l = max(-Aρ, -A clip(ρ, 1-ε_l, 1+ε_h)); for A < 0, l = min(l, -c·A).
def verl_policy_loss(logp, old, adv, eps_low, eps_high, clip_ratio_c=3.0) -> Tensor:
    ratio = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
    clipped = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - eps_low, 1 + eps_high))
    return torch.where(adv < 0, torch.minimum(-adv * clip_ratio_c, clipped), clipped)


# volcengine/verl, verl/trainer/ppo/core_algos.py, compute_value_loss (loss_agg_mode="token-mean"), @b178a3c.
# V_c = clip(V, V_old - ε, V_old + ε); loss = ½ · masked mean of max((V - R)², (V_c - R)²).
def verl_value_loss(vpreds, returns, values, mask, cliprange_value) -> Tensor:
    clipped = torch.maximum(torch.minimum(vpreds, values + cliprange_value), values - cliprange_value)
    per_token = torch.max((vpreds - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * (per_token * mask).sum() / (mask.sum() + 1e-8)


# --- TRL ----------------------------------------------------------------------------------------------------------


# huggingface/trl 1.16.0 (installed), trl/trainer/rloo_trainer.py, RLOOTrainer._generate_and_score_completions
# (normalize_advantages): A ← (A - nanmean A) / (nanstd A + 1e-4), nanstd unbiased, one weight per completion.
def trl_rloo_normalize(advantages: Tensor) -> Tensor:
    return (advantages - advantages.mean()) / (advantages.std(unbiased=True) + 1e-4)
