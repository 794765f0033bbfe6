"""RAFT and vanilla REINFORCE advantages (the Back to Basics baselines) on hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from trl_basics.functional import raft_advantages, vanilla_reinforce_advantages

NAN = float("nan")


def test_raft_gives_one_to_the_best_of_each_group() -> None:
    # Groups of 3: [0.2, 0.9, 0.5] → the second; [3, -1, 2] → the first.
    out = raft_advantages(torch.tensor([0.2, 0.9, 0.5, 3.0, -1.0, 2.0]), num_generations=3)
    assert out.tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 0.0]


def test_raft_ties_go_to_the_first_best_sample() -> None:
    out = raft_advantages(torch.tensor([1.0, 2.0, 2.0, 0.0, 5.0, 5.0, 5.0, 5.0]), num_generations=4)
    assert out.tolist() == [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]


def test_raft_never_chooses_an_unscorable_sample_and_keeps_its_nan() -> None:
    out = raft_advantages(torch.tensor([NAN, 0.5, 0.1, NAN, NAN, NAN]), num_generations=3)
    assert out[1:3].tolist() == [1.0, 0.0] and math.isnan(out[0].item())
    assert torch.isnan(out[3:]).all()  # a group with nothing scorable: NaN everywhere (zeroed by the pipeline)


def test_raft_with_one_sample_per_prompt_chooses_it_and_checks_the_layout() -> None:
    assert raft_advantages(torch.tensor([-3.0, 4.0]), num_generations=1).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="groups of num_generations=2"):
        raft_advantages(torch.tensor([1.0, 2.0, 3.0]), num_generations=2)


def test_raft_keeps_the_float_dtype() -> None:
    out = raft_advantages(torch.tensor([1.0, 2.0], dtype=torch.float64), num_generations=2)
    assert out.dtype == torch.float64 and out.tolist() == [0.0, 1.0]


def test_vanilla_reinforce_is_the_raw_reward() -> None:
    rewards = torch.tensor([0.25, -1.5, NAN, 3.0])
    out = vanilla_reinforce_advantages(rewards)
    assert out[[0, 1, 3]].tolist() == [0.25, -1.5, 3.0] and math.isnan(out[2].item())
    out[0] = 9.0
    assert rewards[0].item() == 0.25  # a copy, never the caller's tensor
