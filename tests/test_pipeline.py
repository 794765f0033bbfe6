"""The trick pipeline end to end on hand-computed batches (no model): order, estimators, NaN, state, loss terms."""

import math

import pytest
import torch

from trl_basics import LossInputs, Rollout, TrickArguments, TrickContext, TrickPipeline
from trl_basics.types import Requirements


def run(args, rollout, registry, ctx=None, default_estimator=None):
    pipeline = TrickPipeline.from_args(args, registry, default_estimator=default_estimator)
    return pipeline, pipeline.process(rollout, ctx or TrickContext())


def one_token_rollout(rewards, log_ratio, num_generations=2):
    """A rollout whose completions are one token long, with log π - log π_ref = log_ratio per completion."""
    n = len(rewards)
    return Rollout(
        rewards=torch.tensor(rewards, dtype=torch.float64),
        num_generations=num_generations,
        completion_mask=torch.ones(n, 1),
        logprobs=torch.tensor(log_ratio, dtype=torch.float64).unsqueeze(1),
        ref_logprobs=torch.zeros(n, 1, dtype=torch.float64),
    )


def test_ppo_max_order_is_normalize_then_clip_then_kl(registry):
    args = TrickArguments(reward_norm="batch", reward_clip=0.5, kl_coef=0.1, kl_placement="sequence_reward")
    pipeline, out = run(args, one_token_rollout([1.0, 2.0, 3.0, 4.0], [1.0, 0.0, 0.0, -1.0]), registry)
    assert pipeline.names == ["reward_norm", "reward_clip", "kl_shaping"]
    # z = (r - 2.5) / sqrt(5/3) = [-1.1619, -0.3873, 0.3873, 1.1619]; clip ±0.5; then -0.1·ℓ.
    z = 0.5 / math.sqrt(5 / 3)
    expected = torch.tensor([-0.5 - 0.1, -z, z, 0.5 + 0.1], dtype=torch.float64)
    torch.testing.assert_close(out.rewards, expected)


def test_reinforce_pp_token_kl_returns(registry):
    # algorithms.md §9: k1 KL [0.1, 0.2, 0.3], β = 0.5, r = 1 at EOS → returns [0.7, 0.75, 0.85].
    args = TrickArguments(kl_coef=0.5, kl_estimator="k1", kl_placement="token_reward", advantage_estimator="reinforce")
    rollout = Rollout(
        rewards=torch.tensor([1.0]),
        num_generations=1,
        completion_mask=torch.ones(1, 3),
        logprobs=torch.tensor([[0.1, 0.2, 0.3]]),
        ref_logprobs=torch.zeros(1, 3),
    )
    _, out = run(args, rollout, registry)
    torch.testing.assert_close(out.dense_rewards, torch.tensor([[-0.05, -0.1, -0.15]]))
    torch.testing.assert_close(out.advantages, torch.tensor([[0.7, 0.75, 0.85]]))


@pytest.mark.parametrize("kl_placement", ["token_reward", "sequence_reward"])
def test_kl_placement_changes_where_the_penalty_lands(registry, kl_placement):
    args = TrickArguments(kl_coef=1.0, kl_placement=kl_placement, advantage_estimator="reinforce")
    rollout = Rollout(
        rewards=torch.tensor([1.0]),
        num_generations=1,
        completion_mask=torch.tensor([[1.0, 1.0, 0.0]]),
        logprobs=torch.tensor([[0.5, 0.25, 9.0]]),  # the masked third token must not count
        ref_logprobs=torch.zeros(1, 3),
    )
    _, out = run(args, rollout, registry)
    if kl_placement == "token_reward":
        expected = torch.tensor([[1.0 - 0.75, 1.0 - 0.25, 0.0]])  # rewards-to-go of [-0.5, 1 - 0.25]
    else:
        expected = torch.tensor([[0.25, 0.25, 0.0]])  # the whole penalty moved into the outcome: 1 - 0.75
    torch.testing.assert_close(out.advantages, expected)


def test_reinforce_pp_baseline_anchor(registry):
    # algorithms.md §9: r = [1, 0 | 1, 1] → A' = [0.5, -0.5, 0, 0] → whitened (population std) [√2, -√2, 0, 0].
    args = TrickArguments(advantage_estimator="group_mean", whiten_advantages=True)
    _, out = run(args, Rollout(rewards=torch.tensor([1.0, 0.0, 1.0, 1.0]), num_generations=2), registry)
    torch.testing.assert_close(out.advantages, torch.tensor([math.sqrt(2), -math.sqrt(2), 0.0, 0.0]))


def test_rloo_three_prompts_four_samples(registry):
    # Legacy [k, B] layout [[1,2,3],[2,3,4],[5,6,7],[8,9,10]] (column = prompt), grouped per prompt as TRL 1.16 does.
    legacy = torch.tensor([[1.0, 2, 3], [2, 3, 4], [5, 6, 7], [8, 9, 10]])
    rewards = legacy.T.reshape(-1)  # [1,2,5,8 | 2,3,6,9 | 3,4,7,10]
    _, out = run(TrickArguments(), Rollout(rewards=rewards, num_generations=4), registry, default_estimator="rloo")
    per_group = torch.tensor([-4.0, -8 / 3, 4 / 3, 16 / 3])
    torch.testing.assert_close(out.advantages, per_group.repeat(3))


def test_unscorable_samples_are_left_out_and_zeroed(registry):
    args = TrickArguments(whiten_advantages=True)
    rewards = torch.tensor([1.0, float("nan"), 3.0, 5.0, 7.0, 9.0])
    _, out = run(args, Rollout(rewards=rewards, num_generations=3), registry, default_estimator="rloo")
    # LOO over scorable siblings: [-2, NaN, 2 | -3, 0, 3]; whitening over the five scorable values (mean 0,
    # population variance 26/5); the unscorable sample ends at 0.
    scale = 1 / math.sqrt(26 / 5 + 1e-8)
    expected = torch.tensor([-2.0, 0.0, 2.0, -3.0, 0.0, 3.0]) * scale
    torch.testing.assert_close(out.advantages, expected)
    assert not torch.isnan(out.advantages).any()


def test_moving_average_baseline_uses_only_earlier_batches(registry):
    pipeline = TrickPipeline.from_args(TrickArguments(advantage_estimator="moving_average"), registry)
    first = pipeline.process(Rollout(rewards=torch.tensor([1.0, 3.0]), num_generations=1), TrickContext())
    torch.testing.assert_close(first.advantages, torch.tensor([-1.0, 1.0]))  # no history yet: batch mean 2
    second = pipeline.process(Rollout(rewards=torch.tensor([5.0, 7.0]), num_generations=1), TrickContext())
    torch.testing.assert_close(second.advantages, torch.tensor([3.0, 5.0]))  # baseline 2 from the first batch
    assert pipeline.state_dict()["moving_average"]["baseline"]["value"] == pytest.approx(4.0)


def test_adaptive_kl_coefficient_updates_after_each_round(registry):
    logged = {}
    ctx = TrickContext(log=logged.__setitem__)
    args = TrickArguments(kl_coef=0.1, kl_target=6.0, kl_horizon=10_000, kl_placement="sequence_reward")
    pipeline = TrickPipeline.from_args(args, registry)
    pipeline.process(one_token_rollout([0.0, 0.0], [12.0, 12.0]), ctx)
    assert logged["tricks/kl_shaping/coef"] == pytest.approx(0.1)  # this round used the initial β
    assert logged["tricks/kl_shaping/k1_sequence_mean"] == pytest.approx(12.0)
    # β ← β(1 + clip(12/6 - 1, ±0.2) · n/horizon) with n = 2 samples.
    assert pipeline.tricks[0].coef == pytest.approx(0.1 * (1 + 0.2 * 2 / 10_000))


def test_state_round_trip_continues_exactly(registry):
    args = TrickArguments(
        reward_norm="running", kl_coef=0.1, kl_target=1.0, kl_placement="token_reward", advantage_estimator="moving_average"
    )
    batches = [
        one_token_rollout(torch.randn(4).tolist(), torch.randn(4).tolist(), num_generations=2) for _ in range(3)
    ]
    uninterrupted = TrickPipeline.from_args(args, registry)
    for rollout in batches[:2]:
        uninterrupted.process(rollout, TrickContext())
    resumed = TrickPipeline.from_args(args, registry)
    resumed.load_state_dict(uninterrupted.state_dict())
    assert set(uninterrupted.state_dict()) == {"reward_norm", "kl_shaping", "moving_average"}
    expected = uninterrupted.process(batches[2], TrickContext())
    actual = resumed.process(batches[2], TrickContext())
    torch.testing.assert_close(actual.advantages, expected.advantages)
    assert resumed.state_dict() == uninterrupted.state_dict()


def test_loading_state_of_a_trick_that_is_off_is_refused(registry):
    pipeline = TrickPipeline.from_args(TrickArguments(reward_scale=True), registry)
    with pytest.raises(ValueError, match=r"does not switch on.*same trick flags"):
        pipeline.load_state_dict({"reward_norm": {"moments": {}}})


def test_loss_stage_sums_kl_and_entropy_terms(registry):
    args = TrickArguments(kl_coef=0.5, kl_estimator="k2", kl_placement="loss", entropy_bonus_coef=0.1)
    pipeline = TrickPipeline.from_args(args, registry)
    logprobs = torch.tensor([[0.2, -0.4, 5.0]], requires_grad=True)
    inputs = LossInputs(
        logprobs=logprobs,
        completion_mask=torch.tensor([[1.0, 1.0, 0.0]]),
        ref_logprobs=torch.zeros(1, 3),
        entropies=torch.tensor([[2.0, 1.0, 100.0]]),
    )
    loss = pipeline.loss(inputs, TrickContext())
    # k2 = ½ℓ²: mean(0.02, 0.08) = 0.05, times β 0.5; entropy: -0.1 · mean(2, 1).
    assert loss.item() == pytest.approx(0.5 * 0.05 - 0.1 * 1.5)
    loss.backward()
    # d/dℓ of 0.5 · mean(½ℓ²) = 0.5 · ℓ / 2 on the two active tokens, 0 on the masked one.
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.05, -0.1, 0.0]]))


def test_entropy_target_form(registry):
    pipeline = TrickPipeline.from_args(TrickArguments(entropy_bonus_coef=0.01, entropy_bonus_target=3.0), registry)
    inputs = LossInputs(logprobs=torch.zeros(1, 2), completion_mask=torch.ones(1, 2), entropies=torch.ones(1, 2))
    assert pipeline.loss(inputs, TrickContext()).item() == pytest.approx(0.01 * 2.0)


def test_reward_scaling_and_advantage_clipping(registry):
    args = TrickArguments(reward_scale=True, advantage_clip=0.5, advantage_estimator="rloo")
    _, out = run(args, Rollout(rewards=torch.tensor([0.0, 2.0, 4.0, 6.0]), num_generations=2), registry)
    std = torch.tensor([0.0, 2.0, 4.0, 6.0]).std().item()  # running std after one batch = batch std (unbiased)
    # LOO on r/σ: [-2, 2, -2, 2]/σ = ±0.7746, clipped to ±0.5.
    assert 2 / std > 0.5
    torch.testing.assert_close(out.advantages, torch.tensor([-0.5, 0.5, -0.5, 0.5]))


def test_example_plugin_changes_rewards_before_normalization():
    # Autoload is on here: the example plugin from plugins/ is installed by the test command.
    args = TrickArguments(reward_norm="batch", tricks=["length_penalty"], trick_kwargs={"length_penalty": {"coef": 0.1}})
    pipeline = TrickPipeline.from_args(args)
    assert pipeline.names == ["length_penalty", "reward_norm"]
    rollout = Rollout(rewards=torch.tensor([1.0, 1.0]), num_generations=2, completion_lengths=torch.tensor([2, 5]))
    logged = {}
    out = pipeline.process(rollout, TrickContext(log=logged.__setitem__))
    # [1 - 0.2, 1 - 0.5] = [0.8, 0.5], then z-scored with the unbiased std 0.2121.
    torch.testing.assert_close(out.rewards, torch.tensor([1.0, -1.0]) / math.sqrt(2))
    assert logged["tricks/length_penalty/mean_penalty"] == pytest.approx(0.35)


def test_example_plugin_alone_gives_exact_penalties():
    args = TrickArguments(tricks=["length_penalty"], trick_kwargs={"length_penalty": {"coef": 0.1, "target_length": 3}})
    rollout = Rollout(rewards=torch.tensor([1.0, float("nan")]), num_generations=2, completion_lengths=torch.tensor([2, 5]))
    out = TrickPipeline.from_args(args).process(rollout, TrickContext())
    assert out.rewards[0].item() == pytest.approx(0.9)
    assert torch.isnan(out.rewards[1])  # unscorable stays unscorable


def test_gae_estimator_sets_advantages_and_returns(registry):
    # algorithms.md §9: r = [0, 0, 1], V = 0.5, γ = 1, λ = 0.95 → A = [0.45125, 0.475, 0.5], R = A + V.
    args = TrickArguments(advantage_estimator="gae", gae_lambda=0.95)
    rollout = Rollout(
        rewards=torch.tensor([1.0]), num_generations=1, completion_mask=torch.ones(1, 3), values=torch.full((1, 3), 0.5)
    )
    _, out = run(args, rollout, registry)
    torch.testing.assert_close(out.advantages, torch.tensor([[0.45125, 0.475, 0.5]]))
    torch.testing.assert_close(out.returns, torch.tensor([[0.95125, 0.975, 1.0]]))


def test_missing_inputs_give_clear_errors(registry):
    with pytest.raises(ValueError, match="needs the rollout's per-token log-probs"):
        run(TrickArguments(kl_coef=0.1), Rollout(rewards=torch.zeros(2), num_generations=2), registry)
    with pytest.raises(ValueError, match="needs critic values"):
        run(TrickArguments(advantage_estimator="gae"), Rollout(rewards=torch.zeros(2), num_generations=2), registry)


def test_flag_switched_tricks_run_in_their_declared_order(registry):
    from trl_basics.pipeline import flag_switched

    order = [cls.name for cls in flag_switched(registry, TrickArguments())]
    assert order == [
        "reward_norm", "reward_scale", "reward_clip", "kl_shaping", "advantage_whiten", "advantage_clip",
        "entropy_bonus",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "flags",
    [
        {},
        {"reward_norm": "batch"},
        {"reward_scale": True},
        {"reward_clip": 0.5},
        {"kl_coef": 0.0},
        {"kl_coef": 0.1, "kl_placement": "loss", "kl_estimator": "k2"},
        {"whiten_advantages": True},
        {"whiten_advantages": True, "whiten_advantages_center_only": True},
        {"advantage_clip": 2.0},
        {"entropy_bonus_coef": 0.01},
        {"kl_estimator": "k3"},
    ],
    ids=str,
)
def test_a_trick_is_switched_on_exactly_when_it_builds_and_its_off_flags_switch_it_off(registry, flags):
    from trl_basics.pipeline import flag_switched

    args = TrickArguments(**flags)
    for cls in flag_switched(registry, args):
        assert cls.switched_on(args) == (cls.from_args(args, registry) is not None), cls.name
        assert cls.flag in cls.off_flags, cls.name
        if cls.switched_on(args):
            off = TrickArguments(**{**flags, **cls.off_flags})
            assert cls.from_args(off, registry) is None, cls.name


def test_pipeline_requirements_combine_the_components_and_scope_the_kl_metric(registry):
    none = TrickPipeline.from_args(TrickArguments(reward_norm="batch"), registry)
    assert none.requirements == Requirements()
    token = TrickPipeline.from_args(TrickArguments(kl_coef=0.1), registry)
    assert token.requirements == Requirements(
        sampling_logprobs=True, reference_logprobs=True, reference_model=True,
        kl_metric="tricks/kl_shaping/k1_sequence_mean",
    )  # fmt: skip
    loss = TrickPipeline.from_args(TrickArguments(kl_coef=0.0, kl_placement="loss", kl_estimator="k2"), registry)
    needs = loss.requirements
    assert needs.loss_reference_logprobs and needs.loss_sampling_logprobs and not needs.reference_model  # β = 0
    assert (Requirements(sampling_logprobs=True) | Requirements(kl_metric="x")) == Requirements(
        sampling_logprobs=True, kl_metric="x"
    )
