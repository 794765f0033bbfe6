"""Fuzzing the trick pipeline: random masks, lengths, NaN rewards and extreme values never give a non-finite
advantage, and masked tokens never carry one."""

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trl_basics import Rollout, TrickArguments, TrickContext, TrickPipeline

CONFIGS = [
    dict(advantage_estimator="rloo"),
    dict(advantage_estimator="rloo", reward_norm="batch", whiten_advantages=True, advantage_clip=2.0),
    dict(advantage_estimator="reinforce", kl_coef=0.1, whiten_advantages=True),
    dict(advantage_estimator="group_mean", kl_coef=0.1, kl_estimator="k3", kl_clamp=10.0, whiten_advantages=True),
    dict(advantage_estimator="moving_average", reward_scale=True, reward_clip=5.0, kl_coef=0.1, kl_target=0.1),
    dict(advantage_estimator="reinforce", reward_norm="running", kl_coef=0.2, kl_placement="sequence_reward"),
]

finite_or_extreme = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from([float("nan"), 1e30, -1e30, 0.0])
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=st.sampled_from(CONFIGS),
    groups=st.integers(1, 4),
    generations=st.integers(2, 4),
    length=st.integers(1, 7),
    data=st.data(),
)
def test_pipeline_outputs_are_finite(config, groups, generations, length, data):
    n = groups * generations
    rewards = torch.tensor(data.draw(st.lists(finite_or_extreme, min_size=n, max_size=n)), dtype=torch.float64)
    lengths = torch.tensor(data.draw(st.lists(st.integers(0, length), min_size=n, max_size=n)))
    mask = (torch.arange(length)[None, :] < lengths[:, None]).double()
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    logprobs = -torch.rand(n, length, generator=gen, dtype=torch.float64) * data.draw(st.sampled_from([1.0, 50.0]))
    ref_logprobs = -torch.rand(n, length, generator=gen, dtype=torch.float64) * 5
    rollout = Rollout(
        rewards=rewards, num_generations=generations, completion_mask=mask, completion_lengths=lengths,
        logprobs=logprobs, ref_logprobs=ref_logprobs,
    )  # fmt: skip
    pipeline = TrickPipeline.from_args(TrickArguments(**config))
    for _ in range(2):  # twice, so running statistics and controllers see a second batch
        out = pipeline.process(rollout, TrickContext())
        assert torch.isfinite(out.advantages).all()
        if out.advantages.dim() == 2:
            assert (out.advantages[mask == 0] == 0).all()
        unscorable = torch.isnan(rewards)
        rows = out.advantages if out.advantages.dim() == 1 else out.advantages.abs().sum(dim=1)
        assert (rows[unscorable] == 0).all()
    for state in pipeline.state_dict().values():
        for value in _numbers(state):
            assert value is None or math.isfinite(value)


def _numbers(state):
    for value in state.values():
        if isinstance(value, dict):
            yield from _numbers(value)
        elif isinstance(value, (int, float)) or value is None:
            yield value
