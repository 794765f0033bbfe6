import pluggy
import pytest

from trl_basics import (
    DISABLE_AUTOLOAD_ENV,
    AdvantageEstimator,
    Registry,
    Stage,
    Trick,
    get_plugin_manager,
    hookimpl,
)

BUILTIN_TRICKS = {
    "reward_noise",
    "reward_norm",
    "reward_scale",
    "reward_clip",
    "kl_shaping",
    "advantage_whiten",
    "advantage_clip",
    "entropy_bonus",
}
BUILTIN_ESTIMATORS = {"rloo", "group_mean", "reinforce", "moving_average", "raft", "vanilla", "gae"}


class DoubleReward(Trick):
    name = "double_reward"
    stage = Stage.REWARD


class InlinePlugin:
    @hookimpl
    def trl_basics_register_tricks(self, register):
        register(DoubleReward)


def test_builtins_are_registered_as_ordinary_plugins(registry):
    assert set(registry.tricks) == BUILTIN_TRICKS
    assert set(registry.advantage_estimators) == BUILTIN_ESTIMATORS
    assert set(registry.kl_estimators) == {"k1", "k2", "k3", "k3_plus"}


def test_every_builtin_trick_has_a_flag_summary_and_source(registry):
    for name, trick_cls in registry.tricks.items():
        assert trick_cls.flag, name
        assert trick_cls.summary and trick_cls.source, name


def test_each_call_returns_an_independent_manager():
    first = get_plugin_manager(autoload=False, plugins=[InlinePlugin()])
    second = get_plugin_manager(autoload=False)
    assert "double_reward" in Registry.from_plugin_manager(first).tricks
    assert "double_reward" not in Registry.from_plugin_manager(second).tricks


def test_autoload_finds_the_installed_example_plugin():
    registry = Registry.from_plugin_manager(get_plugin_manager(autoload=True))
    assert registry.tricks["length_penalty"].__module__ == "trl_basics_length_penalty"


def test_environment_variable_turns_autoload_off(monkeypatch):
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    assert "length_penalty" not in Registry.from_plugin_manager(get_plugin_manager()).tricks
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "0")
    assert "length_penalty" in Registry.from_plugin_manager(get_plugin_manager()).tricks


def test_duplicate_trick_name_names_both_origins():
    class Clash(Trick):
        name = "reward_clip"
        stage = Stage.REWARD

    class ClashPlugin:
        @hookimpl
        def trl_basics_register_tricks(self, register):
            register(Clash)

    pm = get_plugin_manager(autoload=False, plugins=[ClashPlugin()])
    with pytest.raises(ValueError, match=r"duplicate trick name 'reward_clip'") as err:
        Registry.from_plugin_manager(pm)
    assert "trl_basics.tricks.reward" in str(err.value) and "test_plugins" in str(err.value)


def test_duplicate_kl_estimator_is_refused():
    class Plugin:
        @hookimpl
        def trl_basics_register_kl_estimators(self, register):
            register("k2", lambda logp, ref: logp - ref)

    with pytest.raises(ValueError, match="duplicate KL estimator name 'k2'"):
        Registry.from_plugin_manager(get_plugin_manager(autoload=False, plugins=[Plugin()]))


def test_unknown_name_lists_the_valid_ones(registry):
    with pytest.raises(ValueError) as err:
        registry.trick("reward_normalise")
    message = str(err.value)
    assert "unknown trick 'reward_normalise'" in message
    for name in BUILTIN_TRICKS:
        assert name in message
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'ppo'.*rloo"):
        registry.advantage_estimator("ppo")
    with pytest.raises(ValueError, match=r"unknown KL estimator 'k4'.*k1.*k2.*k3"):
        registry.kl_estimator("k4")


def test_misspelled_hook_fails_at_start_up():
    class Typo:
        @hookimpl
        def trl_basics_register_trick(self, register):  # missing "s"
            pass

    with pytest.raises(pluggy.PluginValidationError):
        get_plugin_manager(autoload=False, plugins=[Typo()])


def test_register_checks_what_it_is_given():
    class NotATrick:
        pass

    class Wrong:
        @hookimpl
        def trl_basics_register_tricks(self, register):
            register(NotATrick)

    with pytest.raises(TypeError, match="Trick subclass"):
        Registry.from_plugin_manager(get_plugin_manager(autoload=False, plugins=[Wrong()]))

    class Estimator(AdvantageEstimator):
        name = "my_estimator"

    class Misplaced:
        @hookimpl
        def trl_basics_register_tricks(self, register):
            register(Estimator)

    with pytest.raises(TypeError, match="trl_basics_register_advantage_estimators"):
        Registry.from_plugin_manager(get_plugin_manager(autoload=False, plugins=[Misplaced()]))


def test_names_must_be_identifiers():
    class Bad(Trick):
        name = "reward clip"
        stage = Stage.REWARD

    class Plugin:
        @hookimpl
        def trl_basics_register_tricks(self, register):
            register(Bad)

    with pytest.raises(ValueError, match="must be a Python identifier"):
        Registry.from_plugin_manager(get_plugin_manager(autoload=False, plugins=[Plugin()]))
