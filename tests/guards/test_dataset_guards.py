"""Datasets training would fail on (or silently skip) are refused when the trainer is built, before any model loads."""

import json

import pytest
from datasets import Dataset, load_dataset
from helpers import cpu_kwargs

from trl_basics import ReinforcePlusPlusConfig, ReinforcePlusPlusTrainer, RLOOConfig, RLOOTrainer
from trl_basics.guards import check_dataset

MESSAGE = [{"role": "user", "content": "hi"}]

BAD = {
    "empty": (
        Dataset.from_dict({"prompt": []}),
        r"train_dataset is empty \(0 rows\), so there is nothing to train on\. Check the file, the split or any filter",
    ),
    "empty-no-columns": (Dataset.from_dict({}), r"train_dataset has no 'prompt' column \(its columns: none\)"),
    "no-prompt-column": (
        Dataset.from_dict({"question": ["a", "b"], "answer": ["x", "y"]}),
        (
            r"train_dataset has no 'prompt' column \(its columns: 'question', 'answer'\)\. .*"
            r"dataset\.rename_column\('question', 'prompt'\)"
        ),
    ),
    "empty-prompt": (
        Dataset.from_dict({"prompt": ["say a", "", "say b"]}),
        r"train_dataset row 1 has an empty prompt \(''\); generation needs at least one prompt token\. Drop empty",
    ),
    "empty-conversation": (
        Dataset.from_list([{"prompt": MESSAGE}, {"prompt": []}]),
        r"train_dataset row 1 has an empty conversation \(\[\]\) as its prompt",
    ),
    "none-prompt": (
        Dataset.from_dict({"prompt": ["say a", None]}),
        r"train_dataset row 1 has a prompt of type NoneType \(None\); a prompt is either a string or a list of messages",
    ),
    "number-prompt": (
        Dataset.from_dict({"prompt": [1, 2]}),
        r"train_dataset row 0 has a prompt of type int \(1\)",
    ),
}


class Rows(list):
    """A map-style dataset that is not Arrow: a list of rows with column names (as a torch Dataset might be)."""

    column_names = ("prompt",)

    def __getitem__(self, index):
        rows = super().__getitem__(index)
        return {"prompt": [row["prompt"] for row in rows]} if isinstance(index, slice) else rows


def mixed_jsonl(tmp_path):
    """A JSON Lines file whose rows mix plain and conversational prompts loads as one mixed column."""
    path = tmp_path / "mixed.jsonl"
    rows = [{"prompt": "say a"}, {"prompt": "say b"}, {"prompt": MESSAGE}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return load_dataset("json", data_files=str(path), split="train")


@pytest.mark.parametrize("source", ["jsonl", "python-rows"])
def test_a_mix_of_plain_and_conversational_prompts_is_refused(source, tmp_path):
    if source == "jsonl":
        mixed = mixed_jsonl(tmp_path)
    else:  # a map-style dataset of Python rows, as a torch Dataset might be
        mixed = Rows([{"prompt": "say a"}, {"prompt": "say b"}, {"prompt": MESSAGE}])
    with pytest.raises(ValueError, match=r"mixes plain-text prompts \(the first is row 0\) with conversational ones.*"
                       r"\(the first is row 2\); one batch cannot hold both\. Use one kind for every row"):  # fmt: skip
        check_dataset(mixed)


@pytest.mark.parametrize(("data", "message"), BAD.values(), ids=BAD.keys())
def test_check_dataset_refuses_with_the_fix(data, message):
    with pytest.raises(ValueError, match=message):
        check_dataset(data)


def test_good_datasets_pass(dataset):
    check_dataset(dataset)  # plain text (the kit task)
    check_dataset(Dataset.from_list([{"prompt": MESSAGE}, {"prompt": MESSAGE + [{"role": "assistant", "content": ""}]}]))
    check_dataset(None)
    check_dataset(dataset.to_iterable_dataset())  # rows unknown until read: only the columns are checked
    with pytest.raises(ValueError, match="has no 'prompt' column"):
        check_dataset(dataset.remove_columns("prompt").to_iterable_dataset())


def test_an_empty_eval_split_is_named(dataset):
    with pytest.raises(ValueError, match=r"eval_dataset\['hard'\] is empty"):
        check_dataset({"easy": dataset, "hard": dataset.select([])}, "eval_dataset")


TRAINERS = {
    "rloo": (RLOOTrainer, RLOOConfig),
    "reinforce_pp (GRPO-based)": (ReinforcePlusPlusTrainer, ReinforcePlusPlusConfig),
}


@pytest.mark.parametrize(("trainer_cls", "config_cls"), TRAINERS.values(), ids=TRAINERS.keys())
@pytest.mark.parametrize("case", ["empty", "no-prompt-column", "empty-prompt", "mixed-kinds"])
def test_trainers_refuse_bad_data_before_loading_any_model(trainer_cls, config_cls, case, tmp_path):
    data = mixed_jsonl(tmp_path) if case == "mixed-kinds" else BAD[case][0]
    config = config_cls(**cpu_kwargs(tmp_path / "out"))

    def reward(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    # The model path does not exist: the data error comes first, so nothing was loaded before it.
    with pytest.raises(ValueError, match=r"train_dataset (is empty|has no 'prompt'|row 1 has an empty|mixes)"):
        trainer_cls(model=str(tmp_path / "no-model"), reward_funcs=reward, args=config, train_dataset=data)


def test_a_real_trainer_refuses_an_empty_eval_dataset(tmp_path, tiny_model_dir, dataset):
    config = RLOOConfig(**cpu_kwargs(tmp_path))
    with pytest.raises(ValueError, match=r"eval_dataset is empty \(0 rows\)"):
        RLOOTrainer(
            model=tiny_model_dir,
            reward_funcs=lambda prompts, completions, **kw: [0.0] * len(completions),
            args=config,
            train_dataset=dataset,
            eval_dataset=dataset.select([]),
        )
