"""Shared set-up for the PPO-max tests: a saved tiny policy and reward model, CPU-friendly TRL settings."""

import pytest
import torch

from trl_basics.kit.model import save_tiny_model, save_tiny_reward_model
from trl_basics.kit.tasks import get_task

# Tiny models: one intra-op thread is faster than two fighting over small matmuls on a 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    # Saved to disk because TRL reloads the reference model from the model's path.
    return str(save_tiny_model(tmp_path_factory.mktemp("ppo-max-policy")))


@pytest.fixture(scope="session")
def reward_model_dir(tmp_path_factory):
    return str(save_tiny_reward_model(tmp_path_factory.mktemp("ppo-max-reward-model"), seed=1))


@pytest.fixture(scope="session")
def task():
    return get_task("token_kind")


@pytest.fixture(scope="session")
def dataset(task):
    return task.make_dataset(64, seed=0)


def cpu_kwargs(output_dir, **overrides):
    """A few fast CPU steps: fp32, no checkpointing, no logging backends, nothing saved unless asked."""
    kwargs = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        learning_rate=3e-3,
        critic_learning_rate=3e-3,
        per_device_train_batch_size=8,
        num_generations=1,
        max_completion_length=4,
        max_steps=2,
        seed=0,
    )
    kwargs.update(overrides)
    return kwargs


def logged(trainer, name):
    """Every logged value of a metric, in step order."""
    return [entry[name] for entry in trainer.state.log_history if name in entry]
