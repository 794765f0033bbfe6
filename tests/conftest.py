import pytest
import torch

from trl_basics import Registry, get_plugin_manager
from trl_basics.kit.model import save_tiny_model, save_tiny_reward_model
from trl_basics.kit.tasks import get_task

# The test models are tiny: one intra-op thread is several times faster than two fighting over small matmuls, and
# it keeps the suite's timing stable on a 2-core machine whatever else runs there.
torch.set_num_threads(1)


@pytest.fixture
def pm():
    """A fresh plugin manager with only the built-in plugins (no entry-point autoload)."""
    return get_plugin_manager(autoload=False)


@pytest.fixture
def registry(pm):
    return Registry.from_plugin_manager(pm)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    # Saved to disk because TRL reloads the reference model from the model's path.
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def task():
    return get_task("token_kind")


@pytest.fixture(scope="session")
def dataset(task):
    return task.make_dataset(64, seed=0)


@pytest.fixture(scope="session")
def reward_model_dir(tmp_path_factory):
    """A saved tiny reward model (PPO-max initialises its critic from it)."""
    return str(save_tiny_reward_model(tmp_path_factory.mktemp("ppo-max-reward-model"), seed=1))
