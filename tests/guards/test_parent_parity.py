"""Every dataset a trainer's TRL parent accepts is accepted, and what the parent refuses is refused.

Each kind of input goes through the constructor of every trainer and of its TRL parent (``trl.RLOOTrainer`` for the
RLOO trainers, ``trl.GRPOTrainer`` for the GRPO-based ones); both must accept it, or both refuse it. The kinds only
``GRPOTrainer`` takes (an ``environment_factory``, a ``rollout_func``) run on the GRPO-based trainers.
"""

from __future__ import annotations

import pytest
import trl.trainer.grpo_trainer
from datasets import Dataset, DatasetDict, IterableDatasetDict
from helpers import cpu_kwargs, ppo_max_cpu_kwargs

from trl_basics import (
    PPOMaxConfig,
    PPOMaxTrainer,
    ReinforcePlusPlusConfig,
    ReinforcePlusPlusTrainer,
    ReinforceWithBaselineConfig,
    ReinforceWithBaselineTrainer,
    RLOOConfig,
    RLOOTrainer,
)

TRAINERS = {
    "rloo": (RLOOTrainer, RLOOConfig, cpu_kwargs),
    "reinforce_baseline": (ReinforceWithBaselineTrainer, ReinforceWithBaselineConfig, cpu_kwargs),
    "reinforce_pp": (ReinforcePlusPlusTrainer, ReinforcePlusPlusConfig, cpu_kwargs),
    "ppo_max": (PPOMaxTrainer, PPOMaxConfig, ppo_max_cpu_kwargs),
}
GRPO_BASED = ["reinforce_pp", "ppo_max"]


class SayEnvironment:
    """An environment that owns its prompt (``reset``) and its reward (``get_reward``), with no tools."""

    def reset(self, **kwargs):
        return "say a"

    def get_reward(self):
        return 1.0


class OtherEnvironment(SayEnvironment):
    def reset(self, **kwargs):
        return "say b"


def rollout(prompts, trainer):  # never called: only the constructors run here
    raise AssertionError("not generating")


def kinds(dataset):
    """name -> (constructor arguments besides model and args, GRPO-only)."""
    train = dataset.select(range(16))
    evaluation = dataset.select(range(16, 24))
    iterable = evaluation.to_iterable_dataset()
    return {
        "eval-dataset": ({"train_dataset": train, "eval_dataset": evaluation}, False),
        "eval-dataset-dict": (
            {"train_dataset": train, "eval_dataset": DatasetDict(data1=evaluation, data2=evaluation)},
            False,
        ),
        "eval-iterable-dataset-dict": (
            {"train_dataset": train, "eval_dataset": IterableDatasetDict(data1=iterable, data2=iterable)},
            False,
        ),
        "eval-iterable-dataset": ({"train_dataset": train, "eval_dataset": iterable}, False),
        "eval-dict-of-datasets": (
            {"train_dataset": train, "eval_dataset": {"easy": evaluation, "hard": evaluation}},
            False,
        ),
        "eval-dict-of-iterables": ({"train_dataset": train, "eval_dataset": {"a": iterable, "b": iterable}}, False),
        "eval-dict-mixed": ({"train_dataset": train, "eval_dataset": {"map": evaluation, "stream": iterable}}, False),
        "iterable-train": ({"train_dataset": train.to_iterable_dataset()}, False),
        "iterable-train-and-eval": ({"train_dataset": train.to_iterable_dataset(), "eval_dataset": iterable}, False),
        "train-dataset-dict": ({"train_dataset": DatasetDict(train=train)}, False),  # both refuse: not a Dataset
        "environment-owns-data": (
            {"train_dataset": None, "environment_factory": SayEnvironment, "reward_funcs": None},
            True,
        ),
        "environment-column-only": (
            {
                "train_dataset": Dataset.from_dict({"environment": ["say", "other"] * 8}),
                "environment_factory": {"say": SayEnvironment, "other": OtherEnvironment},
                "reward_funcs": None,
            },
            True,
        ),
        "environment-with-prompts": ({"train_dataset": train, "environment_factory": SayEnvironment}, True),
        "environment-eval-routing": (
            {
                "train_dataset": Dataset.from_dict({"environment": ["say", "other"] * 8}),
                "eval_dataset": DatasetDict(only=Dataset.from_dict({"environment": ["say"] * 4})),
                "environment_factory": {"say": SayEnvironment, "other": OtherEnvironment},
            },
            True,
        ),
        "rollout-func-raw-prompts": (
            # The prompts go to the rollout function as they are: an empty one, or ids, are its business.
            {"train_dataset": Dataset.from_dict({"prompt": ["", "say a"] * 8}), "rollout_func": rollout},
            True,
        ),
        "rollout-func-eval-dict": (
            {
                "train_dataset": train,
                "eval_dataset": {"ids": Dataset.from_dict({"prompt": [[1, 2]] * 4})},
                "rollout_func": rollout,
            },
            True,
        ),
    }


KIND_NAMES = list(kinds(Dataset.from_dict({"prompt": ["x"] * 24})))
GRPO_ONLY_KINDS = {
    name for name, (_, grpo_only) in kinds(Dataset.from_dict({"prompt": ["x"] * 24})).items() if grpo_only
}
# Arguments only GRPOTrainer takes are tried on the GRPO-based trainers alone.
CASES = [
    (trainer_id, kind)
    for trainer_id in TRAINERS
    for kind in KIND_NAMES
    if trainer_id in GRPO_BASED or kind not in GRPO_ONLY_KINDS
]


def outcome(build):
    try:
        build()
    except Exception as err:  # noqa: BLE001 - any refusal counts; the type and message are reported on mismatch
        return f"refused: {type(err).__name__}: {err}"
    return "accepted"


@pytest.mark.parametrize(("trainer_id", "kind"), CASES)
def test_a_trainer_accepts_what_its_parent_accepts(trainer_id, kind, tmp_path, tiny_model_dir, task, dataset,
                                                   monkeypatch):  # fmt: skip
    arguments, grpo_only = kinds(dataset)[kind]
    # The kit's chat template renders no tool calls; these environments expose no tools, so TRL's check is moot.
    monkeypatch.setattr(trl.trainer.grpo_trainer, "supports_tool_calling", lambda processing_class: True)
    trainer_cls, config_cls, settings = TRAINERS[trainer_id]
    arguments = {"reward_funcs": task.reward_func, **arguments}
    ours = outcome(
        lambda: trainer_cls(model=tiny_model_dir, args=config_cls(**settings(tmp_path / "ours")), **arguments)
    )
    parent_settings = cpu_kwargs(tmp_path / "parent")  # GRPO needs two samples per prompt; PPO-max takes one
    theirs = outcome(
        lambda: trainer_cls.trl_parent(
            model=tiny_model_dir, args=trainer_cls.trl_parent_config(**parent_settings), **arguments
        )
    )
    assert ours.split(":")[0] == theirs.split(":")[0], f"ours: {ours}\nparent: {theirs}"
    if kind == "train-dataset-dict":
        assert theirs.startswith("refused"), theirs
    elif trainer_id in GRPO_BASED or not grpo_only:
        assert ours == "accepted", ours


def test_every_split_of_a_dataset_dict_is_still_checked(dataset):
    from trl_basics.guards import check_dataset

    good = dataset.select(range(4))
    with pytest.raises(ValueError, match=r"eval_dataset\['hard'\] is empty \(0 rows\)"):
        check_dataset(DatasetDict(easy=good, hard=dataset.select([])), "eval_dataset")
    with pytest.raises(ValueError, match=r"eval_dataset\['b'\] has no 'prompt' column \(its columns: 'question'\)"):
        check_dataset(DatasetDict(a=good, b=Dataset.from_dict({"question": ["q"]})), "eval_dataset")
    no_prompt = Dataset.from_dict({"question": ["q"]}).to_iterable_dataset()
    with pytest.raises(ValueError, match=r"eval_dataset\['b'\] has no 'prompt' column"):
        check_dataset(IterableDatasetDict(a=good.to_iterable_dataset(), b=no_prompt), "eval_dataset")
    with pytest.raises(ValueError, match=r"eval_dataset\['x'\] row 0 has an empty prompt"):
        check_dataset({"x": Dataset.from_dict({"prompt": [""]})}, "eval_dataset")


def test_prompt_sources_relax_only_what_they_supply():
    from trl_basics.guards import check_dataset

    routing = Dataset.from_dict({"environment": ["a", "b"]})
    check_dataset(routing, environment=True)
    with pytest.raises(ValueError, match="has no 'prompt' column"):
        check_dataset(routing)  # without an environment nothing supplies the prompts
    with pytest.raises(ValueError, match="has no 'prompt' column"):
        check_dataset(routing, rollout_func=True)  # a rollout function is handed the prompt column
    with pytest.raises(ValueError, match=r"train_dataset is empty \(0 rows\)"):
        check_dataset(Dataset.from_dict({"environment": []}), environment=True)
    with pytest.raises(ValueError, match=r"row 1 has an empty prompt"):
        check_dataset(Dataset.from_dict({"prompt": ["a", ""]}), environment=True)  # a prompt there is still used
    check_dataset(Dataset.from_dict({"prompt": ["", "say a"]}), rollout_func=True)
    check_dataset(Dataset.from_dict({"prompt": [[1, 2], [3]]}), rollout_func=True)


@pytest.mark.parametrize("trainer_id", ["rloo", "reinforce_pp"])
def test_training_evaluates_each_split_and_streams_the_train_set(trainer_id, tmp_path, tiny_model_dir, task, dataset):
    trainer_cls, config_cls, settings = TRAINERS[trainer_id]
    evaluation = dataset.select(range(16, 24))
    config = config_cls(**settings(tmp_path, max_steps=1, eval_strategy="steps", eval_steps=1, reward_norm="running"))
    trainer = trainer_cls(
        model=tiny_model_dir,
        reward_funcs=task.reward_func,
        args=config,
        train_dataset=dataset.select(range(16)).to_iterable_dataset(),
        eval_dataset=DatasetDict(data1=evaluation, data2=evaluation.to_iterable_dataset()),
    )
    trainer.train()
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert {"eval_data1_loss", "eval_data2_loss", "eval_reward"} <= logged, sorted(logged)  # one pass per split
