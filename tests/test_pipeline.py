"""The trick pipeline end to end on hand-computed batches (no model): order, estimators, NaN, state, loss terms."""

import math

import pytest
import torch
from helpers import one_token_rollout, run_pipeline

from trl_basics import Rollout, TrickArguments, TrickContext, TrickPipeline
from trl_basics.types import Requirements


def test_ppo_max_order_is_normalize_then_clip_then_kl(registry):
    args = TrickArguments(reward_norm="batch", reward_clip=0.5, kl_coef=0.1, kl_placement="sequence_reward")
    pipeline, out = run_pipeline(args, one_token_rollout([1.0, 2.0, 3.0, 4.0], [1.0, 0.0, 0.0, -1.0]), registry)
    assert pipeline.names == ["reward_norm", "reward_clip", "kl_shaping"]
    # z = (r - 2.5) / sqrt(5/3) = [-1.1619, -0.3873, 0.3873, 1.1619]; clip ±0.5; then -0.1·ℓ.
    z = 0.5 / math.sqrt(5 / 3)
    expected = torch.tensor([-0.5 - 0.1, -z, z, 0.5 + 0.1], dtype=torch.float64)
    torch.testing.assert_close(out.rewards, expected)


def test_unscorable_samples_are_left_out_and_zeroed(registry):
    args = TrickArguments(whiten_advantages=True)
    rewards = torch.tensor([1.0, float("nan"), 3.0, 5.0, 7.0, 9.0])
    _, out = run_pipeline(args, Rollout(rewards=rewards, num_generations=3), registry, default_estimator="rloo")
    # LOO over scorable siblings: [-2, NaN, 2 | -3, 0, 3]; whitening over the five scorable values (mean 0,
    # population variance 26/5); the unscorable sample ends at 0.
    scale = 1 / math.sqrt(26 / 5 + 1e-8)
    expected = torch.tensor([-2.0, 0.0, 2.0, -3.0, 0.0, 3.0]) * scale
    torch.testing.assert_close(out.advantages, expected)
    assert not torch.isnan(out.advantages).any()


def test_state_round_trip_continues_exactly(registry):
    args = TrickArguments(
        reward_norm="running",
        kl_coef=0.1,
        kl_target=1.0,
        kl_placement="token_reward",
        advantage_estimator="moving_average",
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


def test_example_plugin_changes_rewards_before_normalization():
    # Autoload is on here: the example plugin from plugins/ is installed by the test command.
    args = TrickArguments(
        reward_norm="batch", tricks=["length_penalty"], trick_kwargs={"length_penalty": {"coef": 0.1}}
    )
    pipeline = TrickPipeline.from_args(args)
    assert pipeline.names == ["length_penalty", "reward_norm"]
    rollout = Rollout(rewards=torch.tensor([1.0, 1.0]), num_generations=2, completion_lengths=torch.tensor([2, 5]))
    logged = {}
    out = pipeline.process(rollout, TrickContext(log=logged.__setitem__))
    # [1 - 0.2, 1 - 0.5] = [0.8, 0.5], then z-scored with the unbiased std 0.2121.
    torch.testing.assert_close(out.rewards, torch.tensor([1.0, -1.0]) / math.sqrt(2))
    assert logged["tricks/length_penalty/mean_penalty"] == pytest.approx(0.35)


def test_example_plugin_alone_gives_exact_penalties():
    args = TrickArguments(
        tricks=["length_penalty"], trick_kwargs={"length_penalty": {"coef": 0.1, "target_length": 3}}
    )
    rollout = Rollout(
        rewards=torch.tensor([1.0, float("nan")]), num_generations=2, completion_lengths=torch.tensor([2, 5])
    )
    out = TrickPipeline.from_args(args).process(rollout, TrickContext())
    assert out.rewards[0].item() == pytest.approx(0.9)
    assert torch.isnan(out.rewards[1])  # unscorable stays unscorable


def test_missing_inputs_give_clear_errors(registry):
    with pytest.raises(ValueError, match="needs the rollout's per-token log-probs"):
        run_pipeline(TrickArguments(kl_coef=0.1), Rollout(rewards=torch.zeros(2), num_generations=2), registry)
    with pytest.raises(ValueError, match="needs critic values"):
        run_pipeline(
            TrickArguments(advantage_estimator="gae"), Rollout(rewards=torch.zeros(2), num_generations=2), registry
        )


def test_flag_switched_tricks_run_in_their_declared_order(registry):
    from trl_basics.pipeline import flag_switched

    order = [cls.name for cls in flag_switched(registry, TrickArguments())]
    assert order == [
        "reward_noise", "reward_norm", "reward_scale", "reward_clip", "kl_shaping", "advantage_whiten", "advantage_clip",
        "entropy_bonus",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "flags",
    [
        {},
        {"reward_noise_std": 0.5},
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
    # β = 0 still measures the KL to π_ref, so the reference model is loaded (without it a full fine-tune has no π_ref)
    assert needs.loss_reference_logprobs and needs.loss_sampling_logprobs and needs.reference_model
    assert (Requirements(sampling_logprobs=True) | Requirements(kl_metric="x")) == Requirements(
        sampling_logprobs=True, kl_metric="x"
    )
