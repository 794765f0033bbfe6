import pytest
import torch

from trl_basics import Registry, get_plugin_manager
from trl_basics.kit.model import save_tiny_model, save_tiny_reward_model
from trl_basics.kit.tasks import get_task

# The test models are tiny: one intra-op thread is several times faster than two fighting over small matmuls, and
# it keeps the suite's timing stable on a 2-core machine whatever else runs there.
torch.set_num_threads(1)


def pytest_configure(config):
    # Under pytest-xdist with `--dist loadfile` (the README's command) files go to the workers in the order
    # `pytest_collection_modifyitems` leaves them in, instead of xdist's own order (most tests first).
    if getattr(config.option, "dist", "no") == "loadfile":
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """Files with a slow test first, each file's tests kept together and in order: with two workers the files that
    take minutes start early and the many short ones fill the end, instead of one long file running alone last."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # a stable sort


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
