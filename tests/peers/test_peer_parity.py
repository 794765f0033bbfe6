"""trl_basics against OpenRLHF's and verl's formulas (re-stated in reference.py), on seeded random batches.

Each formula is compared twice where it applies: with the functional core (``trl_basics.functional``) and with the
trick pipeline as the trainer configures it (its config class, ``TrickPipeline.from_args`` with the trainer's default
estimator, and REINFORCE++'s token-level request). Batches have random prompt-group sizes 1-8, random lengths with
rows of length 1, tied rewards (values from a small set, whole groups tied) and, where the peer allows them, masks
with interior holes. Log-ratios reach ±40 so that every clamp binds.

Accepted differences (each is mirrored in docs/kl.md and docs/reinforce_pp.md, and the tests below check the exact
relation instead of skipping the comparison):

- WHITEN_VARIANCE: verl's masked_whiten uses the unbiased variance (n/(n-1)); trl_basics and OpenRLHF use the
  population variance. trl_basics' ``masked_whiten(unbiased=True)`` reproduces verl.
- WHITEN_EPS: OpenRLHF divides by sqrt(max(Var, 1e-8)), trl_basics and verl by sqrt(Var + 1e-8); the two differ by
  a relative 1e-8/Var, and only for Var < 1e-8 (all-tied batches) noticeably (both then leave A - μ ≈ 0).
- KL_CLAMP_DEFAULT: OpenRLHF always clamps the KL estimate to ±10 and verl always clamps k3 (ℓ to ±20, estimate to
  ±10); trl_basics clamps only when asked (``kl_clamp``, ``kl_clamp_log_ratio``). With those set the values agree.
- REWARD_CLAMP: OpenRLHF clamps the reward after the baseline (inside compute_reward) with any (lo, hi); trl_basics'
  ``reward_clip`` is symmetric and acts on the raw reward before the estimator (PPO-max order). Equal for estimators
  without a baseline (REINFORCE++, GAE), different with a baseline.
- RPP_BASELINE_KL: verl's REINFORCE++-baseline sums the token rewards (scores and any KL-in-reward) into one scalar
  before the baseline, i.e. a sequence-level KL; OpenRLHF adds the per-token KL after the baseline. trl_basics does
  both: ``kl_placement="sequence_reward"`` is verl's, ``"token_reward"`` OpenRLHF's, ``"loss"`` (the default of
  REINFORCE++-baseline in docs) both peers' ``use_kl_loss``.
- GROUPS_OF_ONE: verl keeps the raw score for a prompt with a single sample (its group mean is taken as 0), in
  RLOO and REINFORCE++-baseline; OpenRLHF's group mean gives 0 (RLOO divides by zero); trl_basics' group mean gives
  0 and its RLOO refuses k < 2 (the config refuses ``baseline="group"`` with one generation).
- HOLES: with interior holes in the mask (tool outputs), trl_basics treats a hole as transparent in every estimator:
  the tokens on either side are consecutive steps (no γ or γλ spent, no reward, value, KL or whitening weight at the
  hole), i.e. the result equals that of the completion with the hole deleted (test_peer_holes.py).
  verl (@1dda039) does the same in REINFORCE++'s returns and in GAE (V and A carried over masked positions); its
  older REINFORCE++ (@b178a3c) reset the return at every masked position. OpenRLHF runs its returns and its GAE over
  every position with r = V = 0 at holes: a factor γ (γλ) per masked position, and GAE bootstraps the token before a
  hole from V = 0 and adds the hole's δ = γ V_next. OpenRLHF equals trl_basics with each hole counted as a
  zero-reward, zero-value token; its returns agree with trl_basics at γ = 1, its GAE at γ = λ = 1. For right-padded
  masks (every TRL completion without tools) all three agree.
- KL_CONTROLLER_INPUT: the adaptive-β update is the same formula, but both peers feed it the batch mean of the
  per-sequence *token-mean* KL; trl_basics feeds the per-sequence *sum* (Ziegler et al. 2019, TRL's PPO), so the
  same ``kl_target`` means a KL per completion, not per token.
- TRL_NORMALIZE: TRL's RLOO ``normalize_advantages`` divides by (unbiased std + 1e-4), one weight per completion;
  with tricks on, trl_basics' RLOOTrainer maps it to ``whiten_advantages`` (population variance, +1e-8 inside the
  root), still one weight per completion.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from trl_basics import Registry, ReinforcePlusPlusConfig, RLOOConfig, TrickArguments, get_plugin_manager
from trl_basics.functional import (
    AdaptiveKLController,
    clipped_policy_loss,
    clipped_value_loss,
    discounted_returns,
    gae_advantages,
    group_mean_advantages,
    interior_holes,
    kl_estimate,
    kl_token_penalty,
    masked_whiten,
    outcome_token_rewards,
    rloo_advantages,
)
from trl_basics.pipeline import TrickPipeline
from trl_basics.tricks.estimators import token_level_estimator
from trl_basics.tricks.kl import KLShaping
from trl_basics.types import Rollout, TrickContext

from . import reference as ref

SEEDS = range(40)
F64 = torch.float64
# Largest |difference| seen per formula, filled by the tests (printed with -s; see the module's last test).
LARGEST: dict[str, float] = {}


def note(name: str, a: torch.Tensor, b: torch.Tensor) -> float:
    diff = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    LARGEST[name] = max(LARGEST.get(name, 0.0), diff)
    return diff


def close(name: str, a, b, atol: float = 1e-9, rtol: float = 1e-9) -> None:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    note(name, a, b)
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def random_batch(seed: int, k: int | None = None, holes: bool = False, length: int = 7):
    """Prompts × k samples; lengths 1..length (row 0 has length 1); tied rewards; log-ratios up to ±40."""
    gen = torch.Generator().manual_seed(seed)
    k = k if k is not None else int(torch.randint(1, 9, (1,), generator=gen))
    prompts = int(torch.randint(1, 4, (1,), generator=gen))
    rows = prompts * k
    lengths = torch.randint(1, length + 1, (rows,), generator=gen)
    lengths[0] = 1
    mask = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).to(F64)
    if holes:
        inner = (torch.rand(rows, length, generator=gen) < 0.3) & (torch.arange(length) > 0)
        inner &= torch.arange(length).unsqueeze(0) < (lengths - 1).unsqueeze(1)  # keep the first and last tokens
        mask = mask * (~inner).to(F64)
    rewards = torch.tensor([0.0, 0.5, 1.0], dtype=F64)[torch.randint(0, 3, (rows,), generator=gen)]
    if seed % 5 == 0:
        rewards[:k] = 1.0  # a fully tied group
    scale = [0.05, 1.0, 40.0][seed % 3]
    logp = -3.0 * torch.rand(rows, length, generator=gen, dtype=F64)
    ref_logp = logp + scale * torch.randn(rows, length, generator=gen, dtype=F64)
    values = torch.randn(rows, length, generator=gen, dtype=F64)
    return {"k": k, "mask": mask, "rewards": rewards, "logp": logp, "ref": ref_logp, "values": values, "gen": gen}


def rollout_of(b) -> Rollout:
    rows = b["rewards"].shape[0]
    return Rollout(
        rewards=b["rewards"].clone(), num_generations=b["k"], process_slice=slice(0, rows),
        completion_mask=b["mask"], logprobs=b["logp"], ref_logprobs=b["ref"], values=b["values"],
    )  # fmt: skip


@functools.cache
def registry() -> Registry:
    """The built-in plugins, as a trainer sees them without third-party plugins installed."""
    return Registry.from_plugin_manager(get_plugin_manager(autoload=False))


@functools.cache
def rpp_config(**flags) -> ReinforcePlusPlusConfig:
    return ReinforcePlusPlusConfig(output_dir="/tmp/unused", use_cpu=True, report_to="none", **flags)


@functools.cache
def rloo_config(**flags) -> RLOOConfig:
    return RLOOConfig(output_dir="/tmp/unused", use_cpu=True, report_to="none", **flags)


def rpp_pipeline(**flags) -> TrickPipeline:
    """As ReinforcePlusPlusTrainer._setup_tricks builds it."""
    config = rpp_config(**flags)
    pipeline = TrickPipeline.from_args(
        config, registry(), default_estimator="group_mean" if config.baseline == "group" else "reinforce"
    )
    pipeline.estimator = token_level_estimator(pipeline.estimator)
    return pipeline


def rloo_pipeline(**flags) -> TrickPipeline:
    """As RLOOTrainer builds it once a trick flag is set (default estimator 'rloo')."""
    return TrickPipeline.from_args(rloo_config(**flags), registry(), default_estimator="rloo")


def on_active(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x[mask.bool()]


def has_holes(mask: torch.Tensor) -> bool:
    """Whether some row has a masked position between two active ones."""
    return bool(interior_holes(mask).any())


def population_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    n = mask.sum()
    mean = (x * mask).sum() / n
    return ((x - mean) ** 2 * mask).sum() / n


def as_openrlhf(ours: torch.Tensor, raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """WHITEN_EPS: trl_basics' whitening of ``raw`` times sqrt(Var + 1e-8)/sqrt(max(Var, 1e-8)) is OpenRLHF's."""
    var = population_var(raw, mask)
    return ours * torch.sqrt(var + 1e-8) / torch.sqrt(var.clamp(min=1e-8))


def as_verl(ours: torch.Tensor, raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """WHITEN_VARIANCE: trl_basics' whitening of ``raw`` times sqrt(Var + 1e-8)/sqrt(Var·n/(n-1) + 1e-8) is verl's."""
    var, n = population_var(raw, mask), mask.sum()
    return ours * torch.sqrt(var + 1e-8) / torch.sqrt(var * n / (n - 1) + 1e-8)


# --- KL estimators and their clamps -------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators_with_clamps(estimator) -> None:
    openrlhf_trick = KLShaping.from_args(TrickArguments(kl_coef=0.1, kl_estimator=estimator, kl_clamp=10.0))
    verl_flags = {"kl_clamp": 10.0, "kl_clamp_log_ratio": 20.0} if estimator == "k3" else {}
    verl_trick = KLShaping.from_args(TrickArguments(kl_coef=0.1, kl_estimator=estimator, **verl_flags))
    for seed in SEEDS:
        b = random_batch(seed)
        mask, logp, ref_logp = b["mask"], b["logp"], b["ref"]
        # OpenRLHF computes in float32: compare at float32 resolution.
        peer = ref.openrlhf_approx_kl(logp, ref_logp, estimator).double()
        ours = kl_estimate(logp.float(), ref_logp.float(), estimator, mask=mask, clamp=10.0)
        close(f"kl_{estimator}_openrlhf", on_active(ours, mask), on_active(peer, mask), atol=1e-5, rtol=1e-5)
        pipe = openrlhf_trick.per_token_kl(logp, ref_logp, mask)
        close(f"kl_{estimator}_openrlhf", on_active(pipe, mask), on_active(peer, mask), atol=1e-5, rtol=1e-5)

        peer = ref.verl_kl_penalty(logp, ref_logp, estimator)
        ours = kl_estimate(logp, ref_logp, estimator, mask=mask, clamp=verl_flags.get("kl_clamp"),
                           log_ratio_clamp=verl_flags.get("kl_clamp_log_ratio"))  # fmt: skip
        close(f"kl_{estimator}_verl", on_active(ours, mask), on_active(peer, mask), atol=1e-12, rtol=1e-12)
        pipe = verl_trick.per_token_kl(logp, ref_logp, mask)
        close(f"kl_{estimator}_verl", on_active(pipe, mask), on_active(peer, mask), atol=1e-12, rtol=1e-12)


def test_kl_clamp_default_is_an_accepted_difference() -> None:
    """KL_CLAMP_DEFAULT: unclamped trl_basics k3 at ℓ = -5 is e⁵ - 6; OpenRLHF and verl give 10."""
    logp, ref_logp = torch.tensor([[-5.0]], dtype=F64), torch.zeros(1, 1, dtype=F64)
    assert kl_estimate(logp, ref_logp, "k3").item() == pytest.approx(math.exp(5) - 6)
    assert ref.openrlhf_approx_kl(logp, ref_logp, "k3").item() == 10.0
    assert ref.verl_kl_penalty(logp, ref_logp, "k3").item() == 10.0


# --- KL reward, returns, GAE, whitening -------------------------------------------------------------------------


def test_kl_reward() -> None:
    for seed in SEEDS:
        b = random_batch(seed, holes=seed % 2 == 1)
        mask, r, beta = b["mask"], b["rewards"], 0.05
        kl = kl_estimate(b["logp"], b["ref"], "k1", mask=mask, clamp=10.0)
        ours = outcome_token_rewards(r, mask) + kl_token_penalty(kl, mask, beta)
        peer = ref.openrlhf_token_rewards(r, beta, ref.openrlhf_approx_kl(b["logp"], b["ref"], "k1", dtype=F64), mask)
        close("kl_reward_openrlhf", on_active(ours, mask), on_active(peer, mask))
        kl = kl_estimate(b["logp"], b["ref"], "k1", mask=mask)
        ours = outcome_token_rewards(r, mask) + kl_token_penalty(kl, mask, beta)
        peer, _ = ref.verl_kl_reward(ref.verl_scores(r, mask), b["logp"], b["ref"], mask, beta, "k1")
        close("kl_reward_verl", ours, peer)  # verl zeroes masked positions too


def test_returns() -> None:
    for seed in SEEDS:
        gamma = [1.0, 0.99, 0.9][seed % 3]
        b = random_batch(seed, holes=seed % 2 == 1)
        mask = b["mask"]
        token_rewards = torch.randn(mask.shape, generator=b["gen"], dtype=F64)
        ours = discounted_returns(token_rewards, mask, gamma)
        _, peer = ref.verl_reinforce_pp(token_rewards, mask, gamma)
        close("returns_verl", on_active(ours, mask), on_active(peer, mask))
        openrlhf = ref.openrlhf_cumulative_returns(token_rewards, mask, gamma)
        if gamma == 1.0 or not has_holes(mask):
            close("returns_openrlhf", on_active(ours, mask), on_active(openrlhf, mask))
        else:  # HOLES: OpenRLHF counts each hole as a zero-reward token, spending γ there
            as_tokens = discounted_returns(token_rewards * mask, torch.ones_like(mask), gamma)
            close("returns_openrlhf_holes_as_tokens", on_active(as_tokens, mask), on_active(openrlhf, mask))
            assert not torch.allclose(on_active(ours, mask), on_active(openrlhf, mask))


def test_returns_over_holes_are_an_accepted_difference() -> None:
    """HOLES, by hand: mask [1, 0, 1], reward 1 at the last token, γ = 0.5. trl_basics and verl @1dda039 spend one
    γ from token 0 to token 2 (the hole is skipped): G_0 = 0.5. OpenRLHF spends γ at the hole too: G_0 = 0.5² = 0.25.
    verl @b178a3c reset the return at the hole: G_0 = 0. At γ = 1 all but the old verl give G_0 = 1."""
    mask = torch.tensor([[1.0, 0.0, 1.0]], dtype=F64)
    rewards = torch.tensor([[0.0, 0.0, 1.0]], dtype=F64)
    assert discounted_returns(rewards, mask, 0.5).tolist() == [[0.5, 0.0, 1.0]]
    assert ref.verl_reinforce_pp(rewards, mask, 0.5)[1].tolist() == [[0.5, 0.0, 1.0]]
    assert ref.openrlhf_cumulative_returns(rewards, mask, 0.5)[0, 0].item() == 0.25
    assert ref.verl_reinforce_pp_b178a3c(rewards, mask, 0.5)[0, 0].item() == 0.0
    assert discounted_returns(rewards, mask, 1.0)[0, 0].item() == 1.0
    assert ref.openrlhf_cumulative_returns(rewards, mask, 1.0)[0, 0].item() == 1.0
    assert ref.verl_reinforce_pp(rewards, mask, 1.0)[1][0, 0].item() == 1.0
    assert ref.verl_reinforce_pp_b178a3c(rewards, mask, 1.0)[0, 0].item() == 0.0


def test_gae() -> None:
    for seed in SEEDS:
        gamma, lam = [(1.0, 0.95), (0.99, 0.9), (0.9, 1.0)][seed % 3]
        b = random_batch(seed)  # HOLES: right-padded masks only
        mask, values = b["mask"], b["values"]
        token_rewards = torch.randn(mask.shape, generator=b["gen"], dtype=F64)
        adv, ret = gae_advantages(token_rewards, values, mask, gamma, lam)
        peer_adv, peer_ret = ref.openrlhf_gae(values, token_rewards, mask, gamma, lam)
        close("gae_openrlhf", on_active(adv, mask), on_active(peer_adv, mask), atol=1e-12, rtol=1e-12)
        close("gae_returns_openrlhf", on_active(ret, mask), on_active(peer_ret, mask), atol=1e-12, rtol=1e-12)
        whitened, peer_ret, raw = ref.verl_gae(token_rewards, values, mask, gamma, lam)
        close("gae_verl", on_active(adv, mask), on_active(raw, mask), atol=1e-12, rtol=1e-12)
        close("gae_returns_verl", on_active(ret, mask), on_active(peer_ret, mask), atol=1e-12, rtol=1e-12)
        if mask.sum() > 1:  # verl refuses a single token
            ours = masked_whiten(adv, mask, unbiased=True)
            close("gae_whitened_verl", on_active(ours, mask), on_active(whitened, mask), atol=1e-7, rtol=1e-7)


def test_gae_over_holes_is_verls_and_differs_from_openrlhf() -> None:
    """HOLES: masked positions inside a completion (tool outputs) are transparent in trl_basics' GAE, as in verl's:
    random batches with interior holes agree with verl to float precision. OpenRLHF runs the recursion over the hole
    with V = r = 0 there, spending a factor γλ and adding the hole's δ = γ V_next: it agrees only for γ = λ = 1 with
    V = 0 before the hole, e.g. mask [1, 0, 1], V = [0, 0, 1], r = 0, where all three give A_0 = 0."""
    for seed in SEEDS:
        gamma, lam = [(1.0, 0.95), (0.99, 0.9), (0.9, 1.0)][seed % 3]
        b = random_batch(seed, holes=True)
        mask, values = b["mask"], b["values"]
        token_rewards = torch.randn(mask.shape, generator=b["gen"], dtype=F64)
        adv, ret = gae_advantages(token_rewards, values, mask, gamma, lam)
        _, peer_ret, raw = ref.verl_gae(token_rewards, values, mask, gamma, lam)
        close("gae_holes_verl", on_active(adv, mask), on_active(raw, mask), atol=1e-12, rtol=1e-12)
        close("gae_holes_returns_verl", on_active(ret, mask), on_active(peer_ret, mask), atol=1e-12, rtol=1e-12)
        # OpenRLHF = trl_basics with every hole counted as a token with r = V = 0.
        peer_adv, peer_ret = ref.openrlhf_gae(values, token_rewards, mask, gamma, lam)
        ones = torch.ones_like(mask)
        as_tokens, as_tokens_ret = gae_advantages(token_rewards * mask, values * mask, ones, gamma, lam)
        close("gae_holes_openrlhf_holes_as_tokens", on_active(as_tokens, mask), on_active(peer_adv, mask))
        close("gae_holes_openrlhf_holes_as_tokens", on_active(as_tokens_ret, mask), on_active(peer_ret, mask))
    mask = torch.tensor([[1.0, 0.0, 1.0]], dtype=F64)
    values = torch.tensor([[0.5, 0.0, 1.0]], dtype=F64)
    rewards = torch.tensor([[0.0, 0.0, 2.0]], dtype=F64)
    ours = gae_advantages(rewards, values, mask, 0.9, 0.9)[0][0, 0].item()
    # The hole is skipped: δ_0 = 0 + 0.9·1 - 0.5 = 0.4, A_2 = 2 - 1 = 1, A_0 = 0.4 + 0.81·1.
    assert ours == pytest.approx(0.4 + 0.81)
    assert ref.verl_gae(rewards, values, mask, 0.9, 0.9)[2][0, 0].item() == pytest.approx(ours)
    assert ref.openrlhf_gae(values, rewards, mask, 0.9, 0.9)[0][0, 0].item() != pytest.approx(ours)
    zero_before = torch.tensor([[0.0, 0.0, 1.0]], dtype=F64)
    for peer in (ref.openrlhf_gae(zero_before, torch.zeros(1, 3, dtype=F64), mask, 1.0, 1.0)[0],
                 ref.verl_gae(torch.zeros(1, 3, dtype=F64), zero_before, mask, 1.0, 1.0)[2]):  # fmt: skip
        assert peer[0, 0].item() == 0.0
    assert gae_advantages(torch.zeros(1, 3, dtype=F64), zero_before, mask, 1.0, 1.0)[0][0, 0].item() == 0.0


def test_gae_in_the_ppo_max_estimator() -> None:
    """The pipeline's gae estimator as PPO-max configures it (γ = 1, λ from the config), token KL in the reward."""
    args = TrickArguments(advantage_estimator="gae", gae_lambda=0.9, kl_coef=0.05, kl_clamp=10.0)
    for seed in SEEDS:
        b = random_batch(seed)
        mask = b["mask"]
        out = TrickPipeline.from_args(args, registry()).process(rollout_of(b), TrickContext())
        kl = ref.openrlhf_approx_kl(b["logp"], b["ref"], "k1", dtype=F64)
        token_rewards = ref.openrlhf_token_rewards(b["rewards"], 0.05, kl, mask)
        peer_adv, peer_ret = ref.openrlhf_gae(b["values"], token_rewards, mask, 1.0, 0.9)
        close("gae_pipeline_openrlhf", on_active(out.advantages, mask), on_active(peer_adv, mask))
        close("gae_pipeline_openrlhf", on_active(out.returns, mask), on_active(peer_ret, mask))


def test_whitening() -> None:
    for seed in SEEDS:
        b = random_batch(seed, holes=seed % 2 == 1)
        mask = b["mask"]
        x = torch.randn(mask.shape, generator=b["gen"], dtype=F64) * [1.0, 1e-3, 50.0][seed % 3]
        ours = masked_whiten(x, mask)
        peer = ref.openrlhf_whiten(x, mask, dtype=F64)
        note("whiten_openrlhf_unadjusted", on_active(ours, mask), on_active(peer, mask))
        close("whiten_openrlhf", on_active(as_openrlhf(ours, x, mask), mask), on_active(peer, mask))
        close("whiten_center_only_openrlhf", on_active(masked_whiten(x, mask, scale=False), mask),
              on_active(ref.openrlhf_whiten(x, mask, std_norm=False, dtype=F64), mask))  # fmt: skip
        if mask.sum() > 1:
            close("whiten_verl", on_active(masked_whiten(x, mask, unbiased=True), mask),
                  on_active(ref.verl_masked_whiten(x, mask), mask), atol=1e-6, rtol=1e-6)  # fmt: skip


def test_whitening_eps_placement_is_an_accepted_difference() -> None:
    """WHITEN_EPS: at Var = 1e-8 trl_basics divides by sqrt(2e-8), OpenRLHF by sqrt(1e-8): a factor √2. For
    Var ≫ 1e-8 the relative difference is about 1e-8 / (2 Var)."""
    x = torch.tensor([[-1e-4, 1e-4]], dtype=F64)
    mask = torch.ones_like(x)
    assert masked_whiten(x, mask).tolist()[0] == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)])
    assert ref.openrlhf_whiten(x, mask, dtype=F64).tolist()[0] == pytest.approx([-1.0, 1.0])


def test_reinforce_pp_matches_openrlhf_reinforce() -> None:
    for seed in SEEDS:
        b = random_batch(seed, holes=seed % 2 == 1)
        mask = b["mask"]
        out = rpp_pipeline(kl_clamp=10.0).process(rollout_of(b), TrickContext())
        args = ("reinforce", b["rewards"], b["k"], b["logp"], b["ref"], mask)
        peer = ref.openrlhf_advantages(*args, kl_coef=0.01, dtype=F64)
        raw = ref.openrlhf_advantages(*args, kl_coef=0.01, dtype=F64, whiten=False)
        note("reinforce_pp_openrlhf_unadjusted", on_active(out.advantages, mask), on_active(peer, mask))
        close("reinforce_pp_openrlhf", on_active(as_openrlhf(out.advantages, raw, mask), mask), on_active(peer, mask))
        # KL_CLAMP_DEFAULT: without kl_clamp the two agree only where no |k1| exceeds 10.
        if (b["logp"] - b["ref"])[mask.bool()].abs().max() < 10:
            out = rpp_pipeline().process(rollout_of(b), TrickContext())
            close("reinforce_pp_openrlhf", on_active(as_openrlhf(out.advantages, raw, mask), mask),
                  on_active(peer, mask))  # fmt: skip


def test_reinforce_pp_matches_verl_up_to_the_unbiased_variance() -> None:
    for seed in SEEDS:
        b = random_batch(seed, holes=seed % 2 == 1)
        mask = b["mask"]
        if mask.sum() < 2:  # verl refuses to whiten a single token
            continue
        out = rpp_pipeline().process(rollout_of(b), TrickContext())
        token_rewards, _ = ref.verl_kl_reward(
            ref.verl_scores(b["rewards"], mask), b["logp"], b["ref"], mask, 0.01, "k1"
        )
        peer, returns = ref.verl_reinforce_pp(token_rewards, mask, 1.0)
        ours_unbiased = masked_whiten(discounted_returns(token_rewards, mask), mask, unbiased=True)
        close("reinforce_pp_verl", on_active(ours_unbiased, mask), on_active(peer, mask), atol=1e-6, rtol=1e-6)
        note("reinforce_pp_verl_unadjusted", on_active(out.advantages, mask), on_active(peer, mask))
        close("reinforce_pp_verl", on_active(as_verl(out.advantages, returns, mask), mask), on_active(peer, mask),
              atol=1e-6, rtol=1e-6)  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "peer_kl"),
    [
        ({"baseline": "group", "kl_placement": "loss", "kl_estimator": "k2"}, "use_loss"),
        ({"baseline": "group", "kl_placement": "token_reward", "kl_estimator": "k1", "kl_clamp": 10.0}, "token"),
        ({"baseline": "group", "kl_coef": None}, "none"),
    ],
    ids=["kl-loss", "kl-token-reward", "no-kl"],
)
def test_reinforce_pp_baseline_matches_openrlhf(flags, peer_kl) -> None:
    for seed in SEEDS:
        k = 2 + seed % 7  # GROUPS_OF_ONE: the config refuses baseline='group' with one generation
        b = random_batch(seed, k=k, holes=seed % 2 == 1)
        mask = b["mask"]
        out = rpp_pipeline(**flags).process(rollout_of(b), TrickContext())
        args = ("reinforce_baseline", b["rewards"], k, b["logp"], b["ref"], mask)
        kwargs = {"kl_coef": 0.01 if peer_kl == "token" else 0.0, "kl_use_loss": peer_kl != "token", "dtype": F64}
        peer = ref.openrlhf_advantages(*args, **kwargs)
        raw = ref.openrlhf_advantages(*args, **kwargs, whiten=False)
        note("reinforce_pp_baseline_openrlhf_unadjusted", on_active(out.advantages, mask), on_active(peer, mask))
        close("reinforce_pp_baseline_openrlhf", on_active(as_openrlhf(out.advantages, raw, mask), mask),
              on_active(peer, mask))  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "kl_in_score"),
    [
        ({"baseline": "group", "kl_placement": "loss", "kl_estimator": "k2"}, False),
        ({"baseline": "group", "kl_placement": "sequence_reward", "kl_estimator": "k1"}, True),
    ],
    ids=["kl-loss", "kl-sequence-reward"],
)
def test_reinforce_pp_baseline_matches_verl(flags, kl_in_score) -> None:
    """RPP_BASELINE_KL: verl's KL in the reward is summed into the score, i.e. trl_basics' 'sequence_reward'."""
    for seed in SEEDS:
        k = 2 + seed % 7
        b = random_batch(seed, k=k, holes=seed % 2 == 1)
        mask = b["mask"]
        out = rpp_pipeline(**flags).process(rollout_of(b), TrickContext())
        scores = ref.verl_scores(b["rewards"], mask)
        if kl_in_score:
            scores, _ = ref.verl_kl_reward(scores, b["logp"], b["ref"], mask, 0.01, "k1")
        peer, raw = ref.verl_reinforce_pp_baseline(scores, mask, [i // k for i in range(mask.shape[0])])
        note("reinforce_pp_baseline_verl_unadjusted", on_active(out.advantages, mask), on_active(peer, mask))
        close("reinforce_pp_baseline_verl", on_active(as_verl(out.advantages, raw, mask), mask),
              on_active(peer, mask), atol=1e-6, rtol=1e-6)  # fmt: skip


def test_groups_of_one_are_an_accepted_difference() -> None:
    """GROUPS_OF_ONE, on the functional core with group sizes 1-8."""
    for seed in SEEDS:
        b = random_batch(seed)
        k, r, mask = b["k"], b["rewards"], b["mask"]
        index = [i // k for i in range(r.shape[0])]
        ours = group_mean_advantages(r, k)
        close(
            "group_mean_openrlhf", ours, ref.openrlhf_shape_rewards(r.reshape(-1, k), "reinforce_baseline").reshape(-1)
        )
        scores = ref.verl_scores(r, mask)
        verl_scalar = ref.verl_rloo(scores, mask, index)[:, 0]
        if k == 1:
            assert (ours == 0).all() and torch.equal(verl_scalar, r)
            with pytest.raises(ValueError, match="num_generations must be >= 2"):
                rloo_advantages(r, k)
        else:
            close("rloo_verl", rloo_advantages(r, k), verl_scalar)
            close(
                "rloo_openrlhf",
                rloo_advantages(r, k),
                ref.openrlhf_shape_rewards(r.reshape(-1, k), "rloo").reshape(-1),
            )
    with pytest.raises(ValueError, match="needs num_generations >= 2"):
        ReinforcePlusPlusConfig(output_dir="/tmp/unused", use_cpu=True, baseline="group", num_generations=1)


def test_rloo_pipeline_matches_openrlhf_with_token_kl_and_verl_with_sequence_kl() -> None:
    for seed in SEEDS:
        k = 2 + seed % 7
        b = random_batch(seed, k=k, holes=seed % 2 == 1)
        mask = b["mask"]
        flags = {"beta": 0.0, "kl_coef": 0.05, "kl_clamp": 10.0}
        out = rloo_pipeline(kl_placement="token_reward", **flags).process(rollout_of(b), TrickContext())
        peer = ref.openrlhf_advantages("rloo", b["rewards"], k, b["logp"], b["ref"], mask, kl_coef=0.05, dtype=F64)
        close("rloo_pipeline_openrlhf", on_active(out.advantages, mask), on_active(peer, mask))
        out = rloo_pipeline(beta=0.0, kl_coef=0.05, kl_placement="sequence_reward").process(
            rollout_of(b), TrickContext()
        )
        scores, _ = ref.verl_kl_reward(ref.verl_scores(b["rewards"], mask), b["logp"], b["ref"], mask, 0.05, "k1")
        peer = ref.verl_rloo(scores, mask, [i // k for i in range(mask.shape[0])])
        assert out.advantages.dim() == 1  # sequence level: TRL's RLOO loss
        close("rloo_pipeline_verl", on_active(out.advantages.unsqueeze(1) * mask, mask), on_active(peer, mask),
              atol=1e-9, rtol=1e-9)  # fmt: skip


def test_rloo_normalization_differs_from_trl_only_in_variance_and_eps() -> None:
    """TRL_NORMALIZE: per completion in both; trl_basics = TRL · (std_unbiased + 1e-4) / sqrt(Var_pop + 1e-8)."""
    for seed in SEEDS:
        k = 2 + seed % 7
        b = random_batch(seed, k=k)
        scalar = rloo_advantages(b["rewards"], k)
        out = rloo_pipeline(beta=0.0, whiten_advantages=True).process(rollout_of(b), TrickContext())
        trl = ref.trl_rloo_normalize(scalar)
        n = scalar.numel()
        std = scalar.std(unbiased=True) if n > 1 else torch.zeros((), dtype=F64)
        factor = (std + 1e-4) / torch.sqrt(scalar.var(unbiased=False) + 1e-8)
        if n > 1:
            close("rloo_normalize_trl_rescaled", out.advantages, trl * factor, atol=1e-9, rtol=1e-9)


def test_reward_clamp_order_is_an_accepted_difference() -> None:
    """REWARD_CLAMP: equal without a baseline; with a baseline OpenRLHF clamps the baselined reward."""
    for seed in SEEDS:
        b = random_batch(seed)
        mask = b["mask"]
        b["rewards"] = b["rewards"] * 4 - 2  # -2..2, clamp at ±1
        out = rpp_pipeline(kl_clamp=10.0, reward_clip=1.0).process(rollout_of(b), TrickContext())
        args = ("reinforce", b["rewards"], b["k"], b["logp"], b["ref"], mask)
        kwargs = {"kl_coef": 0.01, "clip_range": (-1.0, 1.0), "dtype": F64}
        peer = ref.openrlhf_advantages(*args, **kwargs)
        raw = ref.openrlhf_advantages(*args, **kwargs, whiten=False)
        close("reward_clip_reinforce_openrlhf", on_active(as_openrlhf(out.advantages, raw, mask), mask),
              on_active(peer, mask))  # fmt: skip
    r = torch.tensor([3.0, 0.0], dtype=F64)  # group mean 1.5: OpenRLHF clips ±1.5 to ±1, trl_basics clips 3 to 1
    ours = group_mean_advantages(r.clamp(-1, 1), 2)
    theirs = ref.openrlhf_shape_rewards(r.reshape(1, 2), "reinforce_baseline").reshape(-1).clamp(-1, 1)
    assert ours.tolist() == [0.5, -0.5] and theirs.tolist() == [1.0, -1.0]


def test_dual_clip_policy_loss() -> None:
    for seed in SEEDS:
        b = random_batch(seed, holes=seed % 2 == 1)
        mask = b["mask"]
        old = b["logp"] + 0.5 * torch.randn(mask.shape, generator=b["gen"], dtype=F64) * (seed % 4)
        adv = torch.randn(mask.shape, generator=b["gen"], dtype=F64)
        adv[0] = 0.0  # ties at zero advantage
        eps_low, eps_high = 0.2, [0.2, 0.28][seed % 2]
        for dual in (None, 3.0):
            ours, _ = clipped_policy_loss(b["logp"], old, adv, mask, eps_low, eps_high, dual_clip=dual)
            peer = ref.openrlhf_policy_loss(b["logp"], old, adv, eps_low, eps_high, dual)
            close("policy_loss_openrlhf", on_active(ours, mask), on_active(peer, mask), atol=1e-12, rtol=1e-12)
        ours, _ = clipped_policy_loss(b["logp"], old, adv, mask, eps_low, eps_high, dual_clip=3.0)
        peer = ref.verl_policy_loss(b["logp"], old, adv, eps_low, eps_high, 3.0)
        close("policy_loss_verl", on_active(ours, mask), on_active(peer, mask), atol=1e-12, rtol=1e-12)


def test_clipped_value_loss() -> None:
    for seed in SEEDS:
        b = random_batch(seed, holes=seed % 2 == 1)
        mask = b["mask"]
        old = b["values"] + 0.3 * torch.randn(mask.shape, generator=b["gen"], dtype=F64)
        returns = torch.randn(mask.shape, generator=b["gen"], dtype=F64)
        clip = [0.2, 0.5, 5.0][seed % 3]
        ours, _ = clipped_value_loss(b["values"], old, returns, mask, clip)
        close("value_loss_openrlhf", ours, ref.openrlhf_value_loss(b["values"], old, returns, mask, clip))
        close("value_loss_verl", ours, ref.verl_value_loss(b["values"], returns, old, mask, clip), atol=1e-7,
              rtol=1e-7)  # fmt: skip


def test_adaptive_kl_controller() -> None:
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        ours, peer = AdaptiveKLController(0.1, target=6.0, horizon=10000), ref.PeerAdaptiveKL(0.1, 6.0, 10000)
        for _ in range(50):
            kl = float(torch.rand(1, generator=gen)) * 15
            n = int(torch.randint(1, 512, (1,), generator=gen))
            ours.update(kl, n)
            peer.update(kl, n)
        close("adaptive_kl", torch.tensor(ours.value), torch.tensor(peer.value), atol=0, rtol=1e-14)


def test_kl_controller_input_is_an_accepted_difference() -> None:
    """KL_CONTROLLER_INPUT: the trick feeds the per-sequence KL sum; verl the per-sequence token mean."""
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=F64)
    logp = torch.zeros(2, 4, dtype=F64)
    ref_logp = torch.full((2, 4), -0.5, dtype=F64)  # k1 = 0.5 per token
    trick = KLShaping.from_args(TrickArguments(kl_coef=0.1, kl_target=1.0))
    logs = {}
    rollout = Rollout(rewards=torch.zeros(2, dtype=F64), num_generations=2, process_slice=slice(0, 2),
                      completion_mask=mask, logprobs=logp, ref_logprobs=ref_logp)  # fmt: skip
    trick.apply(rollout, TrickContext(log=lambda name, value: logs.__setitem__(name, value)))
    assert logs["k1_sequence_mean"] == pytest.approx((1.5 + 0.5) / 2)
    _, verl_current = ref.verl_kl_reward(torch.zeros(2, 4, dtype=F64), logp, ref_logp, mask, 0.1, "k1")
    assert verl_current == pytest.approx(0.5)


def test_zz_report_largest_differences(capsys) -> None:
    """Print the largest difference seen per formula (run the module with -s to read it); each is below its
    tolerance, asserted where it was measured."""
    assert LARGEST, "the comparisons above record their differences"
    with capsys.disabled():
        print("\nlargest |trl_basics - peer| per formula:")
        for name, value in sorted(LARGEST.items()):
            print(f"  {name:36s} {value:.3g}")
