"""Shared set-up for the PPO-max tests: a saved tiny policy and reward model, CPU-friendly TRL settings."""

import pytest

from trainer_helpers import cpu_kwargs as shared_cpu_kwargs
from trainer_helpers import logged

from trl_basics.kit.model import save_tiny_reward_model


@pytest.fixture(scope="session")
def reward_model_dir(tmp_path_factory):
    return str(save_tiny_reward_model(tmp_path_factory.mktemp("ppo-max-reward-model"), seed=1))


def cpu_kwargs(output_dir, **overrides):
    """The trainer tests' CPU settings, with PPO-max's: one sample per prompt, a critic as fast as the policy."""
    return shared_cpu_kwargs(output_dir, **{"critic_learning_rate": 3e-3, "num_generations": 1, **overrides})


__all__ = ["cpu_kwargs", "logged"]
