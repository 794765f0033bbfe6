"""Broken, clashing and crashing plugins: each gets one clear message, and runs that do not use them keep working.

Third-party plugins are simulated by tiny ``*.dist-info`` folders on ``sys.path`` (importlib.metadata finds their
entry points exactly as it finds an installed distribution's); nothing is installed.
"""

import warnings

import pytest
import torch
from helpers import cpu_kwargs

from trl_basics import (
    LossInputs,
    Registry,
    RLOOConfig,
    RLOOTrainer,
    Rollout,
    Stage,
    Trick,
    TrickArguments,
    TrickContext,
    TrickPipeline,
    get_plugin_manager,
    hookimpl,
    plugins,
)
from trl_basics.pipeline import TrickError

BROKEN_MODULE = '''
raise ImportError("libcudart.so.12: cannot open shared object file")
'''

GOOD_MODULE = '''
from trl_basics import Stage, Trick, hookimpl


class Shift(Trick):
    name = "{trick}"
    stage = Stage.REWARD


@hookimpl
def trl_basics_register_tricks(register):
    register(Shift)
'''


def install(root, distribution, entry_point, module, source):
    """A distribution `distribution` whose `trl_basics` entry point `entry_point` is the module `module`."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{distribution.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[trl_basics]\n{entry_point} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_reported_failures", set())  # a fresh process: nothing reported yet
    monkeypatch.delenv(plugins.DISABLE_AUTOLOAD_ENV, raising=False)
    return tmp_path


def test_a_plugin_that_fails_to_import_is_reported_once_and_breaks_nothing_else(site, tmp_path):
    install(site, "cuda-tricks", "cuda_tricks", "cuda_tricks_plugin", BROKEN_MODULE)
    with pytest.warns(RuntimeWarning) as caught:
        pm = get_plugin_manager()
    messages = [str(w.message) for w in caught if "cuda_tricks" in str(w.message)]
    assert len(messages) == 1
    message = messages[0]
    for part in ("'cuda_tricks'", "distribution 'cuda-tricks'", "ImportError: libcudart.so.12", "TRL_BASICS_DISABLE"):
        assert part in message, message
    assert "cuda_tricks" in pm.unavailable_plugins
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # reported once: building more managers, configs and trainers is silent
        get_plugin_manager()
        config = RLOOConfig(**cpu_kwargs(tmp_path / "out", reward_norm="running"))
    assert config.reward_norm == "running"


def test_a_trainer_that_does_not_use_the_broken_plugin_trains(site, tmp_path, tiny_model_dir, dataset):
    install(site, "cuda-tricks", "cuda_tricks", "cuda_tricks_plugin", BROKEN_MODULE)
    with pytest.warns(RuntimeWarning, match="cuda_tricks"):
        config = RLOOConfig(**cpu_kwargs(tmp_path / "out", max_steps=1, reward_norm="batch"))
    trainer = RLOOTrainer(
        model=tiny_model_dir,
        reward_funcs=lambda prompts, completions, **kw: [float(len(c)) for c in completions],
        args=config,
        train_dataset=dataset,
    )
    trainer.train()
    assert trainer.state.global_step == 1


def test_asking_for_a_trick_of_a_broken_plugin_says_why_it_is_unavailable(site, tmp_path):
    install(site, "cuda-tricks", "cuda_tricks", "cuda_tricks_plugin", BROKEN_MODULE)
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError) as err:
        RLOOConfig(**cpu_kwargs(tmp_path / "out", tricks=["fused_norm"]))
    message = str(err.value)
    assert message.startswith("trick 'fused_norm' is unavailable: a trl_basics plugin that may provide it did not load")
    for part in ("'cuda_tricks'", "distribution 'cuda-tricks'", "ImportError: libcudart.so.12", "reward_norm ("):
        assert part in message, message


def test_without_a_broken_plugin_an_unknown_name_is_just_unknown(site):
    install(site, "good-tricks", "good_tricks", "good_tricks_plugin", GOOD_MODULE.format(trick="shift_reward"))
    registry = Registry.from_plugin_manager(get_plugin_manager())
    assert registry.trick("shift_reward").__module__ == "good_tricks_plugin"
    with pytest.raises(ValueError, match=r"^unknown trick 'nope'\. Valid names: .*shift_reward \(good_tricks_plugin\)"):
        registry.trick("nope")


def test_two_distributions_with_the_same_entry_point_name_are_an_error_naming_both(site):
    install(site, "tricks-one", "shared_name", "tricks_one_plugin", GOOD_MODULE.format(trick="one"))
    install(site, "tricks-two", "shared_name", "tricks_two_plugin", GOOD_MODULE.format(trick="two"))
    with pytest.raises(ValueError) as err:
        get_plugin_manager()
    message = str(err.value)
    assert "two installed distributions register the trl_basics plugin 'shared_name'" in message
    assert "'tricks-one' (tricks_one_plugin)" in message and "'tricks-two' (tricks_two_plugin)" in message
    assert "Uninstall one of them" in message and "TRL_BASICS_DISABLE_PLUGIN_AUTOLOAD=1" in message
    assert len(get_plugin_manager(autoload=False).list_name_plugin()) > 0  # the escape hatch works


# --- a trick that raises ------------------------------------------------------------------------------------------


class Crashes(Trick):
    name = "crashes"
    stage = Stage.REWARD

    def apply(self, rollout, ctx):
        return rollout.rewards[10]  # IndexError on a 4-row batch

    def loss(self, inputs, ctx):
        raise OSError("disk full")


class CrashPlugin:
    @hookimpl
    def trl_basics_register_tricks(self, register):
        register(Crashes)


def crash_pipeline():
    registry = Registry.from_plugin_manager(get_plugin_manager(autoload=False, plugins=[CrashPlugin()]))
    args = TrickArguments()
    args.tricks = ["crashes"]  # validated against this registry by from_args, not the default one
    return TrickPipeline.from_args(args, registry, default_estimator="rloo")


def test_an_exception_in_apply_names_the_trick_and_stage_with_the_original_chained():
    rollout = Rollout(rewards=torch.zeros(4), num_generations=2)
    with pytest.raises(TrickError) as err:
        crash_pipeline().process(rollout, TrickContext())
    assert str(err.value).startswith("trick 'crashes' (stage reward, ")
    assert "raised IndexError in apply(): index 10 is out of bounds" in str(err.value)
    assert isinstance(err.value, IndexError)  # `except IndexError` still catches it
    assert isinstance(err.value.__cause__, IndexError) and err.value.__cause__ is not err.value
    assert (err.value.trick_name, err.value.stage, err.value.method) == ("crashes", Stage.REWARD, "apply")


def test_an_exception_in_loss_names_the_trick_and_the_loss_stage():
    inputs = LossInputs(logprobs=torch.zeros(2, 1), completion_mask=torch.ones(2, 1))
    with pytest.raises(TrickError, match=r"^trick 'crashes' \(stage loss, .*raised OSError in loss\(\): disk full") as e:
        crash_pipeline().loss(inputs, TrickContext())
    assert isinstance(e.value.__cause__, OSError)


def test_a_builtin_tricks_own_error_keeps_its_type_and_text(registry):
    pipeline = TrickPipeline.from_args(TrickArguments(kl_coef=0.1), registry)
    with pytest.raises(ValueError, match=r"^trick 'kl_shaping' \(stage kl, .*KL shaping needs the rollout's"):
        pipeline.process(Rollout(rewards=torch.zeros(2), num_generations=2), TrickContext())
