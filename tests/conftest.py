import pytest
import torch

from trl_basics import Registry, get_plugin_manager

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
