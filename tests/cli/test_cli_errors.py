"""Bad input to `trl-basics train`: exit code 2, one message naming the problem and the fix, and a clean --output_dir.

Also: argument errors and --help answer without importing torch, TRL or transformers; where reward-function modules
come from; the environment of child runs; TRL's dataset and reward conventions; `--resume_from_checkpoint latest`.
"""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from trl_basics.cli import main
from trl_basics.cli import train as train_module
from trl_basics.cli.environment import child_environment
from trl_basics.cli.flags import build_manifest, stored_manifest
from trl_basics.cli.loading import KIT_TASKS, TRL_REWARD_NAMES, load_reward_function
from trl_basics.cli.train import fit_completion_length, resume_value

REWARD = ["--reward_funcs", "trl_basics.kit.tasks:token_kind_reward"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A working directory with data files, a reward module and a plain file, as a user would have."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "ok.jsonl").write_text('{"prompt": "say : digits"}\n{"prompt": "say : letters"}\n')
    (tmp_path / "noprompt.jsonl").write_text('{"question": "say : digits"}\n')
    (tmp_path / "afile").write_text("x")
    (tmp_path / "myrewards.py").write_text("def length(completions, **kw):\n    return [0.0] * len(completions)\n")
    (tmp_path / "bad.yaml").write_text("max_stepz: 3\n")
    (tmp_path / "zero").mkdir()  # a saved 0-row dataset, as Dataset.save_to_disk writes it
    (tmp_path / "zero" / "state.json").write_text('{"_data_files": []}')
    (tmp_path / "zero" / "dataset_info.json").write_text("{}")
    return tmp_path


# Each case: argv after `train`, words the message must contain. Every case must leave no output folder behind.
BAD_INPUT = {
    "flag typo": (["rloo", "--max_stepz", "3"], ["unknown flag --max_stepz", "Did you mean --max_steps?"]),
    "algorithm typo": (["rlo"], ["unknown algorithm 'rlo'", "Did you mean rloo?"]),
    "yaml key typo": (["rloo", "--config", "bad.yaml"], ["unknown key 'max_stepz'", "Did you mean max_steps?"]),
    "missing yaml": (["rloo", "--config", "nope.yaml"], ["cannot read the --config file 'nope.yaml'"]),
    "not a number": (["rloo", "--max_steps", "ten"], ["--max_steps needs a whole number, not 'ten'"]),
    "bad choice": (["rloo", "--lr_scheduler_type", "cosin"], ["is not one of", "Did you mean cosine?"]),
    "bad bool": (["rloo", "--use_cpu", "maybe"], ["--use_cpu needs true or false"]),
    "stray word": (["rloo", "fast"], ["unexpected argument 'fast'"]),
    "no such policy": (["rloo", "--model_name_or_path", "./no-model"], ["'./no-model' does not exist"]),
    "policy is a file": (["rloo", "--model_name_or_path", "./afile"], ["is a file", "save_pretrained"]),
    "no such reward model": (["rloo", "--reward_model_name_or_path", "./no-rm"], ["'./no-rm' does not exist"]),
    "output under a file": (["rloo"], ["cannot create --output_dir", "is a file", "Choose another --output_dir"]),
    "unwritable output": (["rloo"], ["cannot write --output_dir", "Choose a folder you can write to"]),
    "output name too long": (["rloo"], ["is too long"]),
    "empty jsonl": (["rloo", "--dataset_name", "empty.jsonl", *REWARD], ["'empty.jsonl' is empty"]),
    "empty saved dataset": (["rloo", "--dataset_name", "./zero", *REWARD], ["'./zero' has no rows"]),
    # The missing file is named, not the missing reward source.
    "missing dataset first": (["rloo", "--dataset_name", "gone.jsonl"], ["'gone.jsonl' does not exist"]),
    "kit task typo": (["rloo", "--dataset_name", "kit:token_knd"], ["Did you mean kit:token_kind?"]),
    "reward file path": (["rloo", "--reward_funcs", "./myrewards.py:length"], ["names a file", "'myrewards:length'"]),
    "trl reward typo": (["rloo", "--reward_funcs", "accuracy_rewrd"], ["Did you mean accuracy_reward?"]),
    "resume with nothing": (["rloo", "--resume_from_checkpoint", "latest"], ["no checkpoint in --output_dir"]),
}
OUTPUT_DIRS = {"output under a file": "afile/run", "unwritable output": "/proc/trl-basics-run"}
OUTPUT_DIRS["output name too long"] = "x" * 300


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_before_torch_with_the_fix_and_writes_nothing(case, files, capsys):
    argv, words = BAD_INPUT[case]
    out = OUTPUT_DIRS.get(case, "run")
    assert main(["train", *argv, "--output_dir", out]) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, err
    assert "Traceback" not in err
    assert err.count("error:") == 1
    assert sorted(p.name for p in files.iterdir()) == sorted(
        ["empty.jsonl", "ok.jsonl", "noprompt.jsonl", "afile", "myrewards.py", "bad.yaml", "zero"]
    )  # nothing created, not even the output folder


def main_in_a_fresh_interpreter(argvs: list[list[str]], cwd) -> dict:
    """Call ``trl_basics.cli.main`` on each argv in one new interpreter; return the results and heavy imports."""
    script = textwrap.dedent(
        """
        import contextlib, io, json, sys
        from trl_basics.cli import main
        results = []
        for argv in json.loads(sys.argv[1]):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main(argv)
                except SystemExit as exit:
                    code = exit.code
            results.append([argv, code, out.getvalue()[-300:], err.getvalue()])
        heavy = sorted(name for name in ("torch", "trl", "transformers", "datasets") if name in sys.modules)
        print(json.dumps({"results": results, "heavy": heavy}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(argvs)], capture_output=True, text=True, env=ENV, cwd=cwd,
        check=False,
    )  # fmt: skip
    return json.loads(done.stdout.splitlines()[-1])



def test_argument_errors_and_help_import_no_torch_and_answer_in_2s(tmp_path):
    """Every fast path, in one fresh interpreter: exit codes, and torch/TRL/transformers never imported."""
    argvs = [["--help"], ["train", "rloo", "--help"], ["train", "ppo_max", "--help"],
             ["train", "rloo", "--max_stepz", "3"], ["train", "rlo"], ["trian"],
             ["train", "grpo", "--beta", "x"], ["train", "rloo", "--model_name_or_path", "./nope"]]  # fmt: skip
    report = main_in_a_fresh_interpreter(argvs, tmp_path)
    assert report["heavy"] == [], report["heavy"]
    codes = {" ".join(argv): code for argv, code, _, _ in report["results"]}
    assert codes == {
        "--help": 0, "train rloo --help": 0, "train ppo_max --help": 0, "train rloo --max_stepz 3": 2,
        "train rlo": 2, "trian": 2, "train grpo --beta x": 2, "train rloo --model_name_or_path ./nope": 2,
    }  # fmt: skip
    assert "Did you mean train?" in report["results"][5][3]
    assert "--critic_learning_rate" in report["results"][2][2] or "bnb" in report["results"][2][2]  # help printed
    # Wall time of the real command, best of three (the machine may be busy): well under 2 s.
    for argv in (["--help"], ["train", "rloo", "--help"], ["train", "rloo", "--max_stepz", "3"]):
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "trl_basics.cli", *argv],
                capture_output=True,
                env=ENV,
                cwd=tmp_path,
                check=False,
            )
            best = min(best, time.perf_counter() - start)
        assert best < 2.0, (argv, best)


def test_stored_flags_match_the_real_parsers():
    """The fast path answers from flags.json.gz; it must be in use and equal to what TRL's parser builds."""
    assert stored_manifest() is not None, "flags.json.gz is stale: run `python -m trl_basics.cli.flags`"
    assert build_manifest() == stored_manifest()


def test_help_text_is_the_real_parsers(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "ppo_max", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    real = train_module.make_parser("ppo_max", machine=False)
    for action in real._actions:
        for option in action.option_strings:
            assert option in out, option


# --- errors found only after loading ---------------------------------------------------------------------------------


def _entries(path):
    return sorted(p.name for p in path.iterdir()) if path.exists() else None


def test_loaded_input_errors_exit_2_and_leave_no_debris(files, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as with no network
    cases = [
        (["--model_name_or_path", "someorg/some-model"], ["'someorg/some-model' is not a local folder", "network"]),
        (["--dataset_name", "noprompt.jsonl", *REWARD], ["needs a 'prompt' column", "Rename"]),
        (["--dataset_name", "ok.jsonl", "--reward_funcs", "myrewards:lenght"], ["no function 'lenght'", "length?"]),
        (["--dataset_name", "ok.jsonl", "--reward_funcs", "nomodule:f"], ["cannot find module 'nomodule'"]),
        (["--dataset_name", "ok.jsonl"], ["no reward source", "--reward_funcs"]),
        # Fails in the trainer, after the kit model was written into the folder: that model must go again.
        ([*REWARD, "--max_completion_length", "1000", "--num_generations", "2", "--per_device_train_batch_size", "2"], ["1000"]),
    ]  # fmt: skip
    for argv, words in cases:
        out = files / "run"
        assert main(["train", "rloo", "--output_dir", str(out), *argv]) == 2, argv
        err = capsys.readouterr().err
        for word in words:
            assert word in err, err
        assert "Traceback" not in err
        assert not out.exists(), (argv, _entries(out))
    # A folder that existed keeps what it had, and only that.
    kept = files / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    argv = ["train", "rloo", "--output_dir", str(kept), *REWARD, "--max_completion_length", "1000"]
    assert main(argv) == 2
    assert _entries(kept) == ["notes.txt"]


def test_a_bug_shows_a_traceback_that_says_so_and_cleans_up(files, capsys, monkeypatch):
    def broken(*args, **kwargs):
        Path(args[2].output_dir, "half-written").mkdir(parents=True)
        raise RuntimeError("boom")

    monkeypatch.setattr(train_module, "build_trainer", broken)
    assert main(["train", "rloo", "--output_dir", "run"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: boom" in err and "This is a bug" in err
    assert not (files / "run").exists()


# --- where reward functions come from; child environments ------------------------------------------------------------


def test_reward_functions_from_the_working_directory_are_announced_with_their_path(files, capsys):
    (files / "cwd_rewards_announced.py").write_text("def one(completions, **kw):\n    return [1.0] * len(completions)\n")
    function = load_reward_function("cwd_rewards_announced:one")
    assert function(completions=["a", "b"]) == [1.0, 1.0]
    err = capsys.readouterr().err
    assert f"comes from {files / 'cwd_rewards_announced.py'}" in err and err.count("\n") == 1
    load_reward_function("trl_basics.kit.tasks:token_kind_reward")  # the package itself: no announcement
    assert capsys.readouterr().err == ""


def test_trl_named_and_dotted_reward_functions():
    import trl.rewards

    from trl_basics.kit import tasks

    assert load_reward_function("accuracy_reward") is trl.rewards.accuracy_reward
    assert load_reward_function("trl_basics.kit.tasks.token_kind_reward") is tasks.token_kind_reward  # TRL's form
    punish = load_reward_function("get_soft_overlong_punishment", max_completion_length=8)
    assert punish(completion_ids=[[1] * 8, [1] * 4]) == [-1.0, 0.0]
    assert set(TRL_REWARD_NAMES) <= set(trl.rewards.__all__)
    assert set(KIT_TASKS) == set(tasks.TASKS)


def test_python_m_does_not_put_the_working_directory_first(tmp_path):
    """`python -m trl_basics.cli` imports what `trl-basics` imports: a module in the working directory never shadows
    an installed one (here a fake `yaml.py`)."""
    (tmp_path / "yaml.py").write_text("raise SystemExit('shadowed')\n")
    (tmp_path / "c.yaml").write_text("max_stepz: 1\n")
    done = subprocess.run(
        [sys.executable, "-m", "trl_basics.cli", "train", "rloo", "--config", "c.yaml"],
        capture_output=True, text=True, env=ENV, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "Did you mean max_steps?" in done.stderr, done.stderr


def test_child_runs_get_only_the_environment_they_need(monkeypatch):
    base = {"PATH": "/bin", "HOME": "/h", "PYTHONPATH": "/src", "HF_HOME": "/hf", "CUDA_VISIBLE_DEVICES": "0",
            "TRL_BASICS_SMOKE": "1", "AWS_SECRET_ACCESS_KEY": "x", "LD_PRELOAD": "/evil.so", "MY_FLAG": "1"}  # fmt: skip
    env = child_environment(base)
    assert {"PATH", "HOME", "PYTHONPATH", "HF_HOME", "CUDA_VISIBLE_DEVICES", "TRL_BASICS_SMOKE"} <= set(env)
    assert not {"AWS_SECRET_ACCESS_KEY", "LD_PRELOAD", "MY_FLAG"} & set(env)
    # A YAML `env:` block changes this process's environment, never the children's.
    monkeypatch.setenv("PYTHONPATH", "/from/yaml")
    monkeypatch.setenv("HF_TOKEN_FROM_YAML", "x")
    env = child_environment()
    assert env.get("PYTHONPATH") != "/from/yaml" and "HF_TOKEN_FROM_YAML" not in env


def test_compare_children_do_not_see_the_yaml_env_block(tmp_path, monkeypatch):
    from trl_basics.cli import experiments

    seen = {}

    def fake_popen(command, stdout, stderr, env):
        seen.update(env)
        raise RuntimeError("stop here")

    monkeypatch.setattr(experiments.subprocess, "Popen", fake_popen)
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # restored afterwards (TRL's parser sets it)
    monkeypatch.setenv("SNEAKY", "0")
    config = tmp_path / "c.yaml"
    config.write_text("env:\n  PYTHONPATH: /attacker\n  SNEAKY: '1'\nalgorithms: [rloo]\n")
    main(["compare", "--config", str(config), "--output_dir", str(tmp_path / "out")])
    assert os.environ["SNEAKY"] == "1"  # the parent applied the block to itself, as TRL's parser does
    assert seen and seen.get("PYTHONPATH") != "/attacker" and "SNEAKY" not in seen


# --- defaults that fit, resume latest, TRL dataset conventions -------------------------------------------------------


class _Config:
    def __init__(self, length):
        self.max_completion_length = length


def test_completion_length_default_fits_the_model(capsys):
    config = _Config(512)
    fit_completion_length(config, {"max_position_embeddings": 256}, "kit:exact_length", set(), kit_model=True)
    assert config.max_completion_length == 8 and "max_completion_length=8" in capsys.readouterr().err
    config = _Config(512)
    fit_completion_length(config, {"max_position_embeddings": 256}, "data.jsonl", set(), kit_model=False)
    assert config.max_completion_length == 128 and "--max_completion_length" in capsys.readouterr().err
    config = _Config(512)
    fit_completion_length(config, {"max_position_embeddings": 256}, "kit:token_kind", {"max_completion_length"}, True)
    assert config.max_completion_length == 512  # given explicitly: the trainer judges it
    fit_completion_length(config, {"max_position_embeddings": 4096}, "data.jsonl", set(), kit_model=False)
    assert config.max_completion_length == 512


def test_resume_latest_and_true_mean_the_newest_checkpoint():
    assert [resume_value(v) for v in ("latest", "LATEST", "true", "True", " true ")] == [True] * 5
    assert resume_value("run/checkpoint-3") == "run/checkpoint-3" and resume_value(None) is None


def test_dataset_mixture_and_config_like_trl(files):
    (files / "mix.yaml").write_text(
        "datasets:\n  - path: json\n    data_files: ok.jsonl\n  - path: json\n    data_files: ok.jsonl\n"
        "dataset_config: null\n"
    )
    parser = train_module.make_parser("rloo")
    script_args, config, _ = parser.parse_args_and_config(["--config", "mix.yaml", "--output_dir", "run"])
    train, evaluation = train_module.load_datasets(script_args, config, {})
    assert train["prompt"] == ["say : digits", "say : letters"] * 2 and evaluation is None


def test_resume_latest_continues_from_the_newest_checkpoint(files):
    fast = ["--per_device_train_batch_size", "4", "--num_generations", "2", "--max_completion_length", "2",
            "--report_to", "none", "--disable_tqdm", "true", "--gradient_checkpointing", "false", "--logging_steps", "1",
            "--save_steps", "1", "--num_prompts", "16"]  # fmt: skip
    assert main(["train", "rloo", "--output_dir", "run", "--max_steps", "2", *fast]) == 0
    assert (
        main(["train", "rloo", "--output_dir", "run", "--max_steps", "3", "--resume_from_checkpoint", "Latest", *fast])
        == 0
    )
    state = json.loads((files / "run" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert [e["step"] for e in state["log_history"] if "reward" in e] == [1, 2, 3]


def test_experiment_commands_answer_help_and_argument_errors_without_torch_in_2s(tmp_path):
    """`compare`, `ablate` and `demo`: --help and bad arguments are answered before torch is imported."""
    argvs = [["compare", "--help"], ["demo", "--help"], ["ablate", "rloo", "--help"],
             ["compare", "--algorithms", "rlo"], ["compare", "--reward_norm", "running"], ["ablate", "rlo"]]  # fmt: skip
    report = main_in_a_fresh_interpreter(argvs, tmp_path)
    assert "torch" not in report["heavy"]
    codes = {" ".join(argv): code for argv, code, _, _ in report["results"]}
    assert codes == {
        "compare --help": 0, "demo --help": 0, "ablate rloo --help": 0, "compare --algorithms rlo": 2,
        "compare --reward_norm running": 2, "ablate rlo": 2,
    }  # fmt: skip
    assert "Algorithms to run" in report["results"][0][2]  # the help text was printed
    assert "Did you mean rloo?" in report["results"][3][3]
    assert "grpo does not take --reward_norm" in report["results"][4][3]
    for argv in (["compare", "--help"], ["compare", "--algorithms", "rlo"]):
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "trl_basics.cli", *argv], capture_output=True, env=ENV, cwd=tmp_path,
                           check=False)  # fmt: skip
            best = min(best, time.perf_counter() - start)
        assert best < 2.0, f"{argv}: {best:.2f} s"
