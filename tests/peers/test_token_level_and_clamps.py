"""REINFORCE++(-baseline) advantages are whitened per token whatever the KL placement, and the two KL clamps act
where their names say (the estimate, the log-ratio)."""

import math

import pytest
import torch
from helpers import cpu_kwargs
from hypothesis import given, settings
from hypothesis import strategies as st

from trl_basics import ReinforcePlusPlusConfig, ReinforcePlusPlusTrainer, TrickArguments
from trl_basics.functional import group_mean_advantages, kl_estimate, masked_whiten
from trl_basics.pipeline import TrickPipeline
from trl_basics.tricks.estimators import GroupMeanEstimator, token_level_estimator
from trl_basics.tricks.kl import KLShaping
from trl_basics.types import AdvantageEstimator, Rollout, TrickContext

from .reference import openrlhf_advantages, verl_reinforce_pp_baseline

# The repro: 2 prompts × 2 samples, lengths [1, 3, 2, 2], rewards [1, 0, 1, 1]. Group-mean advantages
# [0.5, -0.5, 0, 0]; over the 8 tokens μ = -1/8 and Var = 1/8 - 1/64 = 7/64 (population), so the token-weighted
# whitening is (A + 1/8) / sqrt(7/64 + 1e-8).
LENGTHS = [1, 3, 2, 2]
REWARDS = [1.0, 0.0, 1.0, 1.0]
TOKEN_WEIGHTED = [(0.5 + 0.125) / math.sqrt(7 / 64), (-0.5 + 0.125) / math.sqrt(7 / 64), 0.125 / math.sqrt(7 / 64)]
SEQUENCE_WEIGHTED = [math.sqrt(2.0), -math.sqrt(2.0), 0.0]  # each completion once: μ = 0, Var = 1/8


def repro_rollout(**extra) -> Rollout:
    mask = torch.tensor([[1.0 if t < n else 0.0 for t in range(3)] for n in LENGTHS])
    return Rollout(
        rewards=torch.tensor(REWARDS),
        num_generations=2,
        process_slice=slice(0, 4),
        completion_mask=mask,
        logprobs=torch.zeros(4, 3),
        ref_logprobs=torch.zeros(4, 3),
        **extra,
    )


def per_row(advantages: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """The one value every active token of a row carries (and check that it is one value)."""
    rows = []
    for row, m in zip(advantages, mask.bool(), strict=True):
        values = row[m]
        assert torch.allclose(values, values[0].expand_as(values), atol=1e-6)
        assert (row[~m] == 0).all()
        rows.append(float(values[0]))
    return rows


def rpp_pipeline(tmp_path, **flags) -> TrickPipeline:
    """The pipeline ReinforcePlusPlusTrainer builds (`_setup_tricks`): from its config, its default estimator, at the
    token level it asks for."""
    config = ReinforcePlusPlusConfig(**cpu_kwargs(tmp_path), **flags)
    estimator = "group_mean" if config.baseline == "group" else "reinforce"
    pipeline = TrickPipeline.from_args(config, default_estimator=estimator)
    pipeline.estimator = token_level_estimator(pipeline.estimator)
    return pipeline


def test_functional_token_weighted_whitening_of_the_repro() -> None:
    mask = repro_rollout().completion_mask
    scalar = group_mean_advantages(torch.tensor(REWARDS), 2)
    tiled = masked_whiten(scalar.unsqueeze(1) * mask, mask)
    assert per_row(tiled, mask) == pytest.approx([TOKEN_WEIGHTED[0], TOKEN_WEIGHTED[1], *TOKEN_WEIGHTED[2:] * 2])
    assert masked_whiten(scalar).tolist() == pytest.approx([SEQUENCE_WEIGHTED[0], SEQUENCE_WEIGHTED[1], 0.0, 0.0])


@pytest.mark.parametrize(
    "flags",
    [
        {"baseline": "group", "kl_placement": "loss", "kl_estimator": "k2"},
        {"baseline": "group", "kl_placement": "sequence_reward", "kl_estimator": "k1"},
        {"baseline": "group", "kl_coef": None},
        {"baseline": "group", "kl_placement": "token_reward"},  # token-level already through the dense KL rewards
    ],
    ids=["kl-loss", "kl-sequence-reward", "no-kl", "kl-token-reward"],
)
def test_reinforce_pp_baseline_pipeline_whitens_per_token(flags, tmp_path) -> None:
    pipeline = rpp_pipeline(tmp_path, **flags)
    out = pipeline.process(repro_rollout(), TrickContext())
    assert out.advantages.shape == (4, 3)
    expected = [TOKEN_WEIGHTED[0], TOKEN_WEIGHTED[1], TOKEN_WEIGHTED[2], TOKEN_WEIGHTED[2]]
    assert per_row(out.advantages, out.completion_mask) == pytest.approx(expected, rel=1e-6)
    # Zero KL (log-probs equal the reference): OpenRLHF's reinforce_baseline gives the same numbers.
    peer = openrlhf_advantages("reinforce_baseline", torch.tensor(REWARDS), 2, *([torch.zeros(4, 3)] * 2),
                               out.completion_mask, kl_coef=0.01, kl_use_loss=True)  # fmt: skip
    mask = out.completion_mask.bool()
    torch.testing.assert_close(out.advantages[mask], peer[mask], rtol=1e-6, atol=1e-6)


def test_plain_reinforce_pp_is_token_level_without_kl(tmp_path) -> None:
    pipeline = rpp_pipeline(tmp_path, kl_coef=None)
    out = pipeline.process(repro_rollout(), TrickContext())
    assert out.advantages.shape == (4, 3)
    # No baseline: A = r on every token; over the 8 tokens μ = 5/8, Var = 5/8 - 25/64 = 15/64.
    expected = [(r - 5 / 8) / math.sqrt(15 / 64) for r in REWARDS]
    assert per_row(out.advantages, out.completion_mask) == pytest.approx(expected, rel=1e-6)


def test_sequence_level_estimators_keep_one_weight_per_completion() -> None:
    """Without the trainer's request (RLOO, moving-average REINFORCE) the (B,) advantages are whitened per completion,
    as TRL's RLOO normalize_advantages does."""
    pipeline = TrickPipeline.from_args(TrickArguments(advantage_estimator="group_mean", whiten_advantages=True))
    out = pipeline.process(repro_rollout(), TrickContext())
    assert out.advantages.shape == (4,)
    assert out.advantages.tolist() == pytest.approx([SEQUENCE_WEIGHTED[0], SEQUENCE_WEIGHTED[1], 0.0, 0.0], rel=1e-6)


def test_token_level_request_refuses_a_sequence_only_plugin_estimator() -> None:
    class Scalar(AdvantageEstimator):
        name = "scalar_plugin"

        def apply(self, rollout, ctx):
            return rollout.replace(advantages=rollout.rewards)

    with pytest.raises(ValueError, match="'scalar_plugin' gives sequence-level .* whitens advantages per token"):
        token_level_estimator(Scalar())
    assert token_level_estimator(None) is None
    with pytest.raises(ValueError, match="level must be 'sequence' or 'token', got 'tokens'"):
        GroupMeanEstimator(level="tokens")


def test_trainer_gives_token_weighted_whitened_advantages(tmp_path, tiny_model_dir, task, dataset) -> None:
    config = ReinforcePlusPlusConfig(
        **cpu_kwargs(tmp_path, max_completion_length=6), baseline="group", kl_placement="loss", kl_estimator="k2",
        kl_coef=0.01,
    )  # fmt: skip
    trainer = ReinforcePlusPlusTrainer(
        model=tiny_model_dir, reward_funcs=task.reward_func, args=config, train_dataset=dataset
    )
    assert trainer.trick_pipeline.estimator.level == "token"
    trainer.model.train()
    out = trainer._generate_and_score_completions([dataset[i] for i in range(8)])
    mask = out["completion_mask"].float()
    lengths = mask.sum(dim=1)
    assert lengths.unique().numel() > 1, "the check needs completions of different lengths"
    rewards = trainer.scalar_rewards()
    scalar = group_mean_advantages(rewards, config.num_generations)
    expected = masked_whiten(scalar.unsqueeze(1) * mask, mask)
    assert out["advantages"].shape == mask.shape
    torch.testing.assert_close(out["advantages"], expected.float(), rtol=1e-5, atol=1e-5)
    # The same as verl's REINFORCE++-baseline up to its unbiased variance; not the per-completion whitening.
    n = mask.sum()
    peer, _ = verl_reinforce_pp_baseline(rewards.unsqueeze(1) * (torch.arange(6) == lengths.unsqueeze(1) - 1), mask,
                                      [i // config.num_generations for i in range(8)])  # fmt: skip
    torch.testing.assert_close(out["advantages"] * torch.sqrt((n - 1) / n), peer.float(), rtol=1e-3, atol=1e-3)
    per_sequence = masked_whiten(scalar).unsqueeze(1) * mask
    assert not torch.allclose(out["advantages"], per_sequence, atol=1e-3)


# --- the two KL clamps ----------------------------------------------------------------------------------------------


def kl_trick(**flags) -> KLShaping:
    return KLShaping.from_args(TrickArguments(kl_coef=0.1, **flags))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"kl_estimator": "k3"}, math.exp(5.0) - 6.0),  # 142.41: no clamp
        ({"kl_estimator": "k3", "kl_clamp": 10.0}, 10.0),  # OpenRLHF: the estimate is clamped
        ({"kl_estimator": "k3", "kl_clamp_log_ratio": 2.0}, math.exp(2.0) - 3.0),  # ℓ clamped first
        ({"kl_estimator": "k3", "kl_clamp_log_ratio": 20.0, "kl_clamp": 10.0}, 10.0),  # verl's k3
        ({"kl_estimator": "k1", "kl_clamp": 3.0}, -3.0),
        ({"kl_estimator": "k2", "kl_clamp_log_ratio": 1.0}, 0.5),
    ],
)
def test_kl_clamp_fields_act_where_their_names_say(flags, expected) -> None:
    logp, ref = torch.tensor([[-5.0]]), torch.tensor([[0.0]])
    kl = kl_trick(**flags).per_token_kl(logp, ref, torch.ones(1, 1))
    assert kl.item() == pytest.approx(expected, rel=1e-6)
    functional = kl_estimate(logp, ref, flags["kl_estimator"], clamp=flags.get("kl_clamp"),
                             log_ratio_clamp=flags.get("kl_clamp_log_ratio"))  # fmt: skip
    assert functional.item() == pytest.approx(expected, rel=1e-6)


def test_the_docstring_example() -> None:
    assert kl_estimate(torch.tensor([-5.0]), torch.tensor([0.0]), "k3", clamp=10).item() == 10.0
    assert kl_estimate(torch.tensor([-5.0]), torch.tensor([0.0]), "k3").item() == pytest.approx(142.4132, rel=1e-6)


@pytest.mark.parametrize("name", ["kl_clamp", "kl_clamp_log_ratio"])
def test_clamps_must_be_positive(name) -> None:
    with pytest.raises(ValueError, match=f"{name}=0.0 must be positive"):
        TrickArguments(kl_coef=0.1, **{name: 0.0})


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-60, 60, allow_nan=False), min_size=1, max_size=12),
    estimator=st.sampled_from(["k1", "k2", "k3"]),
    clamp=st.one_of(st.none(), st.floats(0.01, 30)),
    log_ratio_clamp=st.one_of(st.none(), st.floats(0.01, 30)),
)
def test_clamps_property(values, estimator, clamp, log_ratio_clamp) -> None:
    """k_clamped = clip(k(clip(ℓ, ±log_ratio_clamp)), ±clamp), for any ℓ and any pair of clamps."""
    ell = torch.tensor(values, dtype=torch.float64)
    got = kl_estimate(ell, torch.zeros_like(ell), estimator, clamp=clamp, log_ratio_clamp=log_ratio_clamp)
    inner = ell if log_ratio_clamp is None else ell.clamp(-log_ratio_clamp, log_ratio_clamp)
    expected = kl_estimate(inner, torch.zeros_like(inner), estimator)
    if clamp is not None:
        expected = expected.clamp(-clamp, clamp)
        assert (got.abs() <= clamp).all()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(2, 8),
    prompts=st.integers(1, 3),
    data=st.data(),
    placement=st.sampled_from(["loss", "sequence_reward", None]),
)
def test_reinforce_pp_baseline_token_weighting_property(k, prompts, data, placement, tmp_path_factory) -> None:
    """Any lengths (1..5) and tied or untied rewards: every active token of a row carries the same advantage, the
    advantages have mean 0 and population variance Var/(Var + 1e-8) over active tokens, and they equal the
    token-weighted whitening of the group-mean advantages."""
    rows = k * prompts
    lengths = data.draw(st.lists(st.integers(1, 5), min_size=rows, max_size=rows))
    rewards = data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]), min_size=rows, max_size=rows))
    mask = torch.tensor([[1.0 if t < n else 0.0 for t in range(5)] for n in lengths], dtype=torch.float64)
    flags = {"baseline": "group", "kl_coef": None} if placement is None else {
        "baseline": "group", "kl_placement": placement, "kl_estimator": "k2"}  # fmt: skip
    pipeline = rpp_pipeline(tmp_path_factory.mktemp("cfg"), **flags)
    zeros = torch.zeros(rows, 5, dtype=torch.float64)
    rollout = Rollout(rewards=torch.tensor(rewards, dtype=torch.float64), num_generations=k,
                      process_slice=slice(0, rows), completion_mask=mask, logprobs=zeros, ref_logprobs=zeros)  # fmt: skip
    out = pipeline.process(rollout, TrickContext()).advantages
    per_row(out, mask)
    scalar = group_mean_advantages(rollout.rewards, k)
    torch.testing.assert_close(out, masked_whiten(scalar.unsqueeze(1) * mask, mask))
    active = out[mask.bool()]
    tiled = (scalar.unsqueeze(1) * mask)[mask.bool()]
    var = tiled.var(unbiased=False)
    assert abs(float(active.mean())) < 1e-9
    assert float(active.var(unbiased=False)) == pytest.approx(float(var / (var + 1e-8)), abs=1e-9)
