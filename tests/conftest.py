import pytest

from trl_basics import Registry, get_plugin_manager


@pytest.fixture
def pm():
    """A fresh plugin manager with only the built-in plugins (no entry-point autoload)."""
    return get_plugin_manager(autoload=False)


@pytest.fixture
def registry(pm):
    return Registry.from_plugin_manager(pm)
