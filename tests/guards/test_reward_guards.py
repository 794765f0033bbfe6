"""Reward functions: TRL's return types and calling conventions, float32 finiteness, and running statistics that
never absorb a non-finite value."""

import functools
import inspect
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trl
from accelerate import PartialState
from helpers import cpu_kwargs, logged
from hypothesis import example, given, settings
from hypothesis import strategies as st

from trl_basics import LossInputs, RLOOConfig, RLOOTrainer, Rollout, TrickArguments, TrickContext, TrickPipeline
from trl_basics.functional import MovingAverageBaseline, RunningMoments
from trl_basics.functional.controllers import AdaptiveKLController
from trl_basics.guards import GuardedRewardFunction, guard_reward_functions, guard_reward_tensor


def trl_rewards(output, n, trainer_cls=trl.GRPOTrainer):
    """TRL 1.16's own `_calculate_rewards` on a function returning `output`: the column of rewards TRL stores."""
    PartialState()  # TRL's warnings use accelerate's logger; every trainer creates this same singleton
    host = SimpleNamespace(
        accelerator=SimpleNamespace(device=torch.device("cpu"), is_main_process=True),
        reward_funcs=[lambda **kwargs: output],
        reward_processing_classes=[None],
        reward_func_names=["f"],
        state=SimpleNamespace(global_step=0),
        args=SimpleNamespace(report_to=[]),
        _log_completion_extra=None,
        _log_metric=None,
        environments=None,
    )
    return trainer_cls._calculate_rewards(host, [{"prompt": "p"}] * n, ["p"] * n, ["c"] * n, [[1]] * n)[:, 0]


def call(output, n=3):
    guarded = GuardedRewardFunction(lambda prompts, completions, **kwargs: output, "f")
    return guarded, guarded(prompts=["p"] * n, completions=["c"] * n, completion_ids=[[1]] * n)


ACCEPTED = {
    "list": [1.0, None, 2.0],
    "tuple": (1, 2, 3),
    "numpy-float32": np.array([1.0, 2.0, 3.0], dtype=np.float32),
    "numpy-int": np.array([1, 2, 3]),
    "numpy-object-with-None": np.array([1.0, None, 3.0], dtype=object),
    "torch-1d": torch.tensor([1.0, 2.0, 3.0]),
    "torch-column": torch.tensor([[1.0], [2.0], [3.0]]),
    "bools": [True, False, True],
    "numpy-scalars": [np.float64(0.5), np.int64(2), np.bool_(True)],
    "0-d-tensors": [torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)],
}


@pytest.mark.parametrize("trainer_cls", [trl.GRPOTrainer, trl.RLOOTrainer], ids=["grpo", "rloo"])
@pytest.mark.parametrize("output", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepts_what_trl_accepts_with_the_same_values(output, trainer_cls):
    _, checked = call(output)
    expected = trl_rewards(output, 3, trainer_cls)
    got = torch.tensor([math.nan if v is None else v for v in checked], dtype=torch.float32)
    torch.testing.assert_close(got, expected, equal_nan=True)
    assert all(v is None or type(v) is float for v in checked)


REFUSED = {
    "a float": (1.0, TypeError, "returned float; it must return a list"),
    "a 0-d tensor": (torch.tensor(1.0), TypeError, r"returned Tensor of shape \(\); it must return a list"),
    "a dict": ({"a": 1.0}, TypeError, "returned dict; it must return a list"),
    "a string": ("123", TypeError, "returned str; it must return a list"),
    "too few": ([1.0, 2.0], ValueError, "returned 2 rewards for 3 completions"),
    "a word": ([1.0, "good", 2.0], TypeError, r"returned 'good' \(str\) for completion 1; rewards must be numbers"),
    "a pair": ([1.0, [1.0, 2.0], 2.0], TypeError, r"returned \[1.0, 2.0\] \(list\) for completion 1"),
    "a complex": ([1.0, 1j, 2.0], TypeError, r"returned 1j \(complex\) for completion 1"),
}


@pytest.mark.parametrize(("output", "error", "message"), REFUSED.values(), ids=REFUSED.keys())
def test_refuses_only_what_trl_fails_on_naming_the_function(output, error, message):
    with pytest.raises(Exception):  # noqa: B017 - TRL fails too, with whatever error its conversion raises
        trl_rewards(output, 3)
    with pytest.raises(error, match=message) as err:
        call(output)
    assert "reward function 'f'" in str(err.value)


@pytest.mark.parametrize(
    ("value", "finite"),
    [(1e39, False), (-1e39, False), (3.5e38, False), (10**400, False), (3.4e38, True), (-3.4e38, True), (1e-50, True)],
)
def test_finiteness_is_judged_in_float32(value, finite):
    guarded, checked = call([0.0, value, 1.0])
    assert torch.isfinite(torch.tensor(float(value) if finite else math.inf, dtype=torch.float32)) == finite
    if finite:
        assert checked[1] == float(value)
        assert guarded.pop_counts() == (0, 0)
    else:
        assert checked == [0.0, None, 1.0]  # unscorable, as NaN and inf are
        assert guarded.pop_counts() == (1, 0)


@settings(max_examples=100, deadline=None)
@example(3.4028235677973366e38)  # the smallest double that rounds to inf in float32
@example(3.4028235677973362e38)  # the largest that still rounds to float32's max
@example(-(10**39))
@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-(10**400), max_value=10**400))
def test_a_reward_is_scorable_exactly_when_trl_stores_it_finite(value):
    guarded, checked = call([value], n=1)
    stored = trl_rewards([value], 1) if not isinstance(value, int) or abs(value) < 2**1000 else torch.tensor([math.inf])
    assert (checked[0] is not None) == bool(torch.isfinite(stored[0]))
    assert guarded.pop_counts() == (0 if checked[0] is not None else 1, 0)


def test_keeps_trls_calling_convention_environment_rewards_included():
    class Env:
        def get_reward(self):
            return 2.0

    # The shape of the function TRL builds for an environment that owns its reward.
    def get_reward(environments, _env_type=Env, **kwargs):
        return [e.get_reward() if type(e) is _env_type else None for e in environments]

    guarded = GuardedRewardFunction(get_reward, "Env")
    assert guarded(environments=[Env(), object()]) == [2.0, None]
    assert guarded([Env()]) == [2.0]  # positional, as a user may call it
    # TRL's full keyword set, unchanged: the function sees exactly what TRL passes.
    seen = {}

    def spy(prompts, completions, completion_ids, **kwargs):
        seen.update(kwargs, prompts=prompts)
        return [1.0] * len(completions)

    wrapped = guard_reward_functions([spy])[0]
    assert wrapped(prompts=["p"], completions=["c"], completion_ids=[[1]], environments=["e"], trainer_state=None) == [
        1.0
    ]
    assert seen == {"prompts": ["p"], "environments": ["e"], "trainer_state": None}
    with pytest.raises(ValueError, match="returned 2 rewards for 1 completions"):
        GuardedRewardFunction(lambda environments, **kw: [1.0, 2.0], "Env")(environments=[Env()])


def test_keeps_the_name_and_signature_trl_inspects():
    def my_reward(prompts, completions, answer, **kwargs):
        return [0.0] * len(completions)

    wrapped = guard_reward_functions([my_reward, functools.partial(my_reward, answer=None)])
    assert [w.__name__ for w in wrapped] == ["my_reward", "my_reward"]  # TRL's get_callable_name, partial unwrapped
    assert inspect.signature(wrapped[0]) == inspect.signature(my_reward)
    assert wrapped[0].__wrapped__ is my_reward


def test_errors_raised_by_the_function_name_it_and_chain_the_original():
    def crashes(prompts, completions, **kwargs):
        raise KeyError("answer")

    with pytest.raises(RuntimeError, match=r"reward function 'crashes' raised KeyError: 'answer' \(on a batch of 2") as err:
        GuardedRewardFunction(crashes, "crashes")(prompts=["a", "b"], completions=["a", "b"])
    assert isinstance(err.value.__cause__, KeyError)


def test_reward_model_infinities_become_unscorable_and_are_counted():
    model = torch.nn.Linear(1, 1)  # stands for a reward model: a module
    rewards = torch.tensor([[1.0, math.inf], [math.nan, -math.inf], [math.inf, 2.0]])
    counts = guard_reward_tensor(rewards, [lambda **kw: None, model])
    assert counts == [1, 2]  # the function's NaN is TRL's None (counted by the wrapper); the model's NaN is a fault
    assert torch.isnan(rewards[2, 0]) and torch.isnan(rewards[0, 1]) and torch.isnan(rewards[1, 1])
    assert rewards[0, 0] == 1.0 and rewards[2, 1] == 2.0


# --- running statistics never absorb a non-finite value -----------------------------------------------------------


def guarded_rewards(values):
    """Rewards as they reach the pipeline: through the guard, then TRL's float32 conversion."""
    _, checked = call(values, n=len(values))
    return trl_rewards(checked, len(values)).double()


def stateful_pipelines():
    return {
        "reward_norm": TrickArguments(reward_norm="running"),
        "reward_scale": TrickArguments(reward_scale=True),
        "moving_average": TrickArguments(advantage_estimator="moving_average"),
        "adaptive_kl": TrickArguments(kl_coef=0.1, kl_target=0.01, kl_placement="sequence_reward"),
    }


def rollout(rewards):
    n = rewards.numel()
    return Rollout(
        rewards=rewards,
        num_generations=2,
        completion_mask=torch.ones(n, 1),
        logprobs=torch.full((n, 1), 0.2, dtype=torch.float64),
        ref_logprobs=torch.zeros(n, 1, dtype=torch.float64),
    )


@pytest.mark.parametrize("name", stateful_pipelines().keys())
@pytest.mark.parametrize("how", ["through-the-guard", "inf-in-the-rollout"])
def test_each_stateful_trick_ignores_a_1e39_reward(name, how, registry):
    args = stateful_pipelines()[name]
    with_bad = TrickPipeline.from_args(args, registry, default_estimator="rloo")
    without = TrickPipeline.from_args(args, registry, default_estimator="rloo")
    bad = [1.0, 1e39, 3.0, 4.0]
    if how == "through-the-guard":
        rewards = guarded_rewards(bad)
    else:  # a reward model or a weighted sum that overflowed: inf reaches the pipeline unguarded
        rewards = torch.tensor([1.0, math.inf, 3.0, 4.0], dtype=torch.float64)
    for _ in range(2):
        with_bad.process(rollout(rewards.clone()), TrickContext())
        # The same batch with the bad completion unscorable.
        without.process(rollout(torch.tensor([1.0, math.nan, 3.0, 4.0], dtype=torch.float64)), TrickContext())
    state = with_bad.state_dict()
    assert state, f"{name} should be stateful"
    assert state == without.state_dict()
    flat = [v for component in state.values() for part in component.values() for v in part.values()]
    assert all(v is None or math.isfinite(v) for v in flat), state
    out = with_bad.process(rollout(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)), TrickContext())
    assert torch.isfinite(out.advantages).all()


def test_running_statistics_skip_non_finite_values_directly():
    moments = RunningMoments()
    moments.update(torch.tensor([1.0, math.inf, 3.0, -math.inf, math.nan]))
    assert (moments.count, moments.mean, moments.var) == (2.0, 2.0, 2.0)
    moments.update(torch.tensor([math.inf]))
    assert moments.count == 2.0
    baseline = MovingAverageBaseline(decay=0.5)
    assert float(baseline.baseline_for(torch.tensor([2.0, math.inf]))) == 2.0
    baseline.update(torch.tensor([2.0, math.inf, -math.inf]))
    baseline.update(torch.tensor([math.inf]))
    assert baseline.value == 2.0
    controller = AdaptiveKLController(0.1, target=1.0, horizon=10)
    for kl in (math.nan, math.inf, -math.inf):
        assert controller.update(kl, 5) == 0.1
    assert controller.update(2.0, 5) == pytest.approx(0.1 * 1.1)


def test_kl_loss_term_from_a_trick_is_unaffected(registry):
    # The loss stage has no state; a finite batch after a 1e39 one still gives a finite term.
    pipeline = TrickPipeline.from_args(TrickArguments(kl_coef=0.1, kl_estimator="k2", kl_placement="loss"), registry, "rloo")
    pipeline.process(rollout(guarded_rewards([1.0, 1e39, 3.0, 4.0])), TrickContext())
    term = pipeline.loss(
        LossInputs(logprobs=torch.full((4, 1), 0.2), completion_mask=torch.ones(4, 1), ref_logprobs=torch.zeros(4, 1)),
        TrickContext(),
    )
    assert torch.isfinite(term)


def test_a_1e39_reward_in_a_real_run_is_counted_and_running_norm_stays_finite(tmp_path, tiny_model_dir, dataset):
    def overflows(prompts, completions, **kwargs):
        return [1e39 if i == 0 else float(len(c)) for i, c in enumerate(completions)]

    config = RLOOConfig(**cpu_kwargs(tmp_path, reward_norm="running", whiten_advantages=True))
    trainer = RLOOTrainer(model=tiny_model_dir, reward_funcs=overflows, args=config, train_dataset=dataset)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert logged(trainer, "reward_guard/overflows/nonfinite") == [1.0, 1.0]  # one per step of 8 completions
    moments = trainer.trick_pipeline.state_dict()["reward_norm"]["moments"]
    assert moments["count"] == 14.0 and math.isfinite(moments["mean"]) and math.isfinite(moments["m2"])
    assert logged(trainer, "guard/skipped_steps") == []
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(math.isfinite(v) and v != 0.0 for v in logged(trainer, "advantages/std"))


def test_an_overflowing_reward_model_is_counted_and_never_reaches_the_weights(tmp_path, tiny_model_dir, dataset):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trl_basics.kit.model import save_tiny_reward_model

    path = save_tiny_reward_model(tmp_path / "rm")
    reward_model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    with torch.no_grad():  # every score overflows (a float16 head, say): +inf
        reward_model.score.weight.fill_(math.inf)
    config = RLOOConfig(**cpu_kwargs(tmp_path / "out", reward_norm="running"))
    trainer = RLOOTrainer(
        model=tiny_model_dir,
        reward_funcs=[reward_model, lambda prompts, completions, **kw: [float(len(c)) for c in completions]],
        reward_processing_classes=[AutoTokenizer.from_pretrained(path), None],
        args=config,
        train_dataset=dataset,
    )
    trainer.train()
    name = trainer.reward_func_names[0]
    assert logged(trainer, f"reward_guard/{name}/nonfinite") == [8.0, 8.0]
    moments = trainer.trick_pipeline.state_dict()["reward_norm"]["moments"]
    assert moments["count"] == 16.0 and math.isfinite(moments["mean"]) and math.isfinite(moments["m2"])
    assert logged(trainer, "guard/skipped_steps") == []
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
