"""`trl-basics train` with tools and an environment: ``--tools module:function ...`` and ``--environment_factory
module:callable`` follow the reward functions' import rule and errors, are checked before any model is built, and a
failed start leaves nothing behind; the kit's tool tasks bring their own tools, environment, reward and byte model."""

import json
import sys

import pytest

from trl_basics.cli import main
from trl_basics.cli import train as train_module
from trl_basics.cli.multi_turn import KIT_TOOL_TASKS
from trl_basics.kit.tool_tasks import TOOL_TASKS

TOOLS_MODULE = '''
FACTOR = 3


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return a * b


def untyped(a, b):
    return a * b


class Counter:
    """An environment: one counter per rollout."""

    def reset(self, **kwargs):
        self.count = 0

    def add(self, step: int) -> int:
        """Add to the counter.

        Args:
            step: How much to add.
        """
        self.count += step
        return self.count
'''


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory holding a user's tools module (imported afresh, and forgotten after the test)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the loader appends the working directory
    (tmp_path / "cli_user_tools.py").write_text(TOOLS_MODULE)
    yield tmp_path
    sys.modules.pop("cli_user_tools", None)


# Found before torch is imported: the form of the names, and whether the algorithm has a tool loop.
EARLY = {
    "tool file path": (["reinforce_pp", "--tools", "./cli_user_tools.py:multiply"], ["names a file", "'cli_user_tools:multiply'"]),
    "tool without module": (["reinforce_pp", "--tools", "multiply"], ["tool 'multiply' is not a 'module:name'"]),
    "environment bad name": (["reinforce_pp", "--environment_factory", "my env:Env"], ["is not a valid name"]),
    "rloo has no tool loop": (["rloo", "--tools", "cli_user_tools:multiply"], ["cannot use --tools", "reinforce_pp"]),
    "nor for an environment": (["reinforce_ma", "--environment_factory", "cli_user_tools:Counter"], ["no tool loop"]),
    "nor for a kit tool task": (["rloo", "--dataset_name", "kit:tool_multiply"], ["cannot use kit:tool_multiply"]),
    "kit tool task typo": (["reinforce_pp", "--dataset_name", "kit:tool_multiplY"], ["Did you mean kit:tool_multiply?"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(EARLY))
def test_bad_names_exit_2_before_anything_is_written(case, workdir, capsys):
    argv, words = EARLY[case]
    assert main(["train", *argv, "--output_dir", "run"]) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, err
    assert "Traceback" not in err and err.count("error:") == 1
    assert sorted(p.name for p in workdir.iterdir()) == ["cli_user_tools.py"]


# Found when the names are imported: after TRL's parser, before the data set and the model.
LOADED = {
    "tool module missing": (["--tools", "nomodule:f"], ["cannot find module 'nomodule' for tool 'nomodule:f'"]),
    "tool missing": (["--tools", "cli_user_tools:multiplY"], ["has no function 'multiplY'", "Did you mean multiply?"]),
    "tool not callable": (["--tools", "cli_user_tools:FACTOR"], ["cli_user_tools.FACTOR", "is a int", "cannot be called"]),
    "tool without schema": (["--tools", "cli_user_tools:untyped"], ["tool 'cli_user_tools:untyped' has no schema"]),
    "second tool missing": (["--tools", "cli_user_tools:multiply", "cli_user_tools:add"], ["has no function 'add'"]),
    "environment module missing": (["--environment_factory", "nomodule:Env"], ["cannot find module 'nomodule' for environment factory"]),
    "environment missing": (["--environment_factory", "cli_user_tools:Countr"], ["has no class or function 'Countr'", "Did you mean Counter?"]),
    "environment not callable": (["--environment_factory", "cli_user_tools:FACTOR"], ["is a int, not a class or function"]),
}  # fmt: skip


def test_import_errors_exit_2_before_the_model_and_leave_no_debris(workdir, capsys, monkeypatch):
    built = []
    monkeypatch.setattr(train_module, "resolve_model", lambda *args, **kwargs: built.append(args))
    for case, (argv, words) in LOADED.items():
        out = workdir / "run"
        argv = ["train", "reinforce_pp", "--output_dir", str(out), "--dataset_name", "kit:tool_multiply", *argv]
        assert main(argv) == 2, case
        err = capsys.readouterr().err
        for word in words:
            assert word in err, (case, err)
        assert "Traceback" not in err, case
        assert not out.exists(), case
    assert built == []  # no model was built (or saved) for any of them


def parse(argv):
    from trl_basics.cli.parser import make_parser

    return make_parser("reinforce_pp").parse_args_and_config(argv)


def test_named_tools_and_environment_reach_the_trainer(workdir, capsys):
    common = ["--output_dir", "run", "--dataset_name", "kit:tool_multiply", "--num_prompts", "8"]
    common += ["--per_device_train_batch_size", "4", "--num_generations", "2"]
    script_args, config, model_args = parse([*common, "--tools", "cli_user_tools:multiply"])
    trainer = train_module.build_trainer("reinforce_pp", script_args, config, model_args)
    user_tools = sys.modules["cli_user_tools"]  # imported from the working directory
    assert trainer.tools == [user_tools.multiply]
    assert trainer.environment_factories is None
    assert config.max_completion_length == 96  # the tool task's recipe on the byte-level kit model
    assert trainer.processing_class.chat_template.startswith("{%- if tools %}")  # TRL's Qwen 2.5 template
    assert "comes from" in capsys.readouterr().err  # a module from the working directory is announced

    script_args, config, model_args = parse([*common, "--environment_factory", "cli_user_tools:Counter"])
    trainer = train_module.build_trainer("reinforce_pp", script_args, config, model_args)
    assert trainer.environment_factories == {None: user_tools.Counter}
    assert [tool.__name__ for tool in trainer.tools] == ["add"]  # the environment's public methods


def test_a_kit_tool_task_trains_from_the_command_line_with_its_own_tools(workdir, monkeypatch):
    """One step of `trl-basics train reinforce_pp --dataset_name kit:guess_number`: the environment, the reward and
    the byte-level model come from the kit."""
    argv = ["train", "reinforce_pp", "--dataset_name", "kit:guess_number", "--output_dir", "run", "--max_steps", "1"]
    argv += ["--num_prompts", "8", "--per_device_train_batch_size", "4", "--num_generations", "2"]
    argv += ["--max_completion_length", "32", "--report_to", "none", "--logging_steps", "1"]
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    assert main(argv) == 0
    history = json.loads((workdir / "run" / "trainer_state.json").read_text())["log_history"]
    step = next(entry for entry in history if "loss" in entry)
    assert "tools/call_frequency" in step and "rewards/guess_number_reward/mean" in step


def test_kit_tool_task_names_match_the_kit():
    assert set(KIT_TOOL_TASKS) == set(TOOL_TASKS)
