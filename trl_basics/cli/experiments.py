"""`trl-basics demo`, `compare` and `ablate`: several training runs on one task and seed, with a report.

Every RL run is a child process running `trl-basics train ALGO`, so that each gets its own peak-memory reading, a
crash or Ctrl-C in one run leaves the others' results, and the command a run used is exactly reproducible. Runs
share the seed, the starting model, the prompts and the sample budget (steps × completions per step).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..algorithms import ALGORITHMS
from .assessment import Baseline, RunResult
from .environment import child_environment
from .errors import UsageError, did_you_mean, lookup_algorithm
from .flags import algorithm_flags, check_train_args
from .parser import make_parser
from .tables import TERMINAL_COLUMNS, summary, table_rows, text_table

DESCRIPTION = __doc__  # the description of `compare --help` and `demo --help`


@dataclass
class ExperimentArguments:
    """Shared settings of every run in an experiment (the same for each algorithm)."""

    output_dir: str = field(default="trl-basics-output/compare", metadata={"help": "Where runs and the report go."})
    task: str = field(default="token_kind", metadata={"help": "Kit task: target_letter, token_kind or exact_length."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Starting policy (a saved model). Default: the kit's tiny model."}
    )
    reward_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Reward model to optimise. Default: the task's verifiable reward function."},
    )
    seed: int = field(default=0, metadata={"help": "Seed shared by every run."})
    max_steps: int = field(default=60, metadata={"help": "RL steps per run."})
    completions_per_step: int = field(
        default=64, metadata={"help": "Completions per step (the per-step sample budget, the same for every run)."}
    )
    num_generations: int = field(default=4, metadata={"help": "Completions per prompt."})
    max_completion_length: int = field(default=4, metadata={"help": "Completion length cap (tokens)."})
    learning_rate: float = field(
        default=3e-3, metadata={"help": "Policy learning rate (tiny models need a large one)."}
    )
    eval_prompts: int = field(default=256, metadata={"help": "Held-out prompts for the final task success rate."})


# --- running one training in a child process -------------------------------------------------------------------------


def train_command(algorithm: str, args: ExperimentArguments, run_dir: Path, extra: list[str]) -> list[str]:
    task_reward = f"trl_basics.kit.tasks:{task_reward_name(args.task)}"
    command = [
        sys.executable, "-m", "trl_basics.cli", "train", algorithm,
        "--output_dir", str(run_dir),
        "--dataset_name", f"kit:{args.task}",
        "--seed", str(args.seed),
        "--max_steps", str(args.max_steps),
        "--per_device_train_batch_size", str(args.completions_per_step),
        "--num_generations", str(args.num_generations),
        "--max_completion_length", str(args.max_completion_length),
        "--learning_rate", str(args.learning_rate),
        "--lr_scheduler_type", "constant",
        "--temperature", "1.0",
        "--gradient_checkpointing", "false",
        "--logging_steps", "1",
        "--save_strategy", "no",
        "--report_to", "none",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    if args.model_name_or_path:
        command += ["--model_name_or_path", args.model_name_or_path]
    if args.reward_model_name_or_path:
        # Optimise the reward model; log the verifiable task reward beside it with weight 0.
        command += ["--reward_model_name_or_path", args.reward_model_name_or_path]
        command += ["--reward_funcs", task_reward, "--reward_weights", "1.0", "0.0"]
        if algorithm == "ppo_max":
            command += ["--critic_model_path", args.reward_model_name_or_path]
    if algorithm == "ppo_max":
        # PPO-max's critic learning rate is sized for large models; the tiny kit models need the policy's.
        command += ["--critic_learning_rate", str(args.learning_rate)]
    return command + list(extra)


def task_reward_name(task_name: str) -> str:
    """The name of the kit task's reward function (its metric is ``rewards/<name>/mean``)."""
    from ..kit.tasks import get_task

    return get_task(task_name).reward_func.__name__


REWARD_IN_LOG = re.compile(r"'reward': '?(-?[0-9.eE+-]+|nan)'?")


def run_child(command: list[str], log_path: Path, progress: tqdm | None = None) -> tuple[int, float, float]:
    """Run ``command``; return (exit code, peak resident memory in MB, wall seconds). Output goes to ``log_path``.

    With ``progress``, the bar advances by one for every training step the child logs, showing its current reward.
    """
    env = child_environment()  # only what the run needs, never a YAML `env:` block (see environment.py)
    start = time.perf_counter()
    with open(log_path, "w") as log, open(log_path) as follow:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            while True:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if progress is not None:
                    _advance(progress, follow)
                if pid:
                    break
                time.sleep(0.25)
        except KeyboardInterrupt:
            # The child got the same Ctrl-C: let it save its checkpoint and exit, then stop.
            process.send_signal(signal.SIGINT)
            _, status, usage = os.wait4(process.pid, 0)
            raise
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss / 1024, time.perf_counter() - start


def _advance(progress: tqdm, follow) -> None:
    """Count the training-step logs (TRL prints one dict per logged step) that arrived in the child's log."""
    for line in follow.readlines():
        match = REWARD_IN_LOG.search(line)
        if match and line.lstrip().startswith("{"):
            progress.update()
            progress.set_postfix_str(f"reward {float(match.group(1)):.3f}")


def run_in_process(command: list[str], log_path: Path) -> tuple[int, float, float]:
    """Run a `train_command` in this process (no interpreter start-up and imports per run: many short runs); return
    (exit code, peak resident memory of this process so far in MB, wall seconds). Output goes to ``log_path``."""
    import contextlib
    import resource

    from .train import run

    start = time.perf_counter()
    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            code = run(command[4], command[5:])
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # noqa: BLE001 - a failed run is recorded, the others go on
            import traceback

            traceback.print_exc()
            print(f"{type(err).__name__}: {err}")
            code = err.code if isinstance(err, SystemExit) and isinstance(err.code, int) else 1
    if code == 130:  # stopped by Ctrl-C or SIGTERM after saving a checkpoint: stop here too, as a child run would
        raise KeyboardInterrupt
    return code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - start


def run_training(
    label: str,
    algorithm: str,
    args: ExperimentArguments,
    extra: list[str],
    runs_dir: Path,
    in_process: bool = False,
) -> RunResult:
    """One run in a child process (or, with ``in_process``, in this one). A run that fails returns a result with
    ``failed`` set: the others go on."""
    run_dir = runs_dir / label
    run_dir.mkdir(parents=True, exist_ok=True)
    command = train_command(algorithm, args, run_dir, extra)
    (run_dir / "command.txt").write_text(shlex.join(command) + "\n")
    if in_process:
        code, peak_mb, wall = run_in_process(command, run_dir / "train.log")
    else:
        with tqdm(total=args.max_steps, desc=label, unit="step", leave=True, dynamic_ncols=True) as progress:
            code, peak_mb, wall = run_child(command, run_dir / "train.log", progress)
    state = run_dir / "trainer_state.json"
    if code != 0 or not state.exists():
        reason = _failure_reason(run_dir / "train.log", code)
        tqdm.write(f"{label}: failed ({reason}); log: {run_dir / 'train.log'}")
        return RunResult(label, algorithm, [], peak_mb, wall, failed=reason)
    history = json.loads(state.read_text())["log_history"]
    result = RunResult(label, algorithm, history, peak_mb, wall, eval_prompts=args.eval_prompts)
    result.success_rate = task_success_rate(str(run_dir), args)
    return result


def _failure_reason(log_path: Path, code: int) -> str:
    """The exit code and the last error line of the child's log."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b|^trl-basics .*error:", line)]
    last = (errors or lines or ["no output"])[-1]
    return f"exit code {code}: {last[:200]}"


def check_flags(algorithms: list[str], extra: list[str], output_dir: Path) -> None:
    """Refuse, before any run starts, a flag that some algorithm does not take (or a value its config refuses)."""
    if not extra:
        return
    # First from the stored flag lists (no torch): unknown flags and values of the wrong type, at once.
    for algorithm in dict.fromkeys(algorithms):
        known = algorithm_flags(algorithm)["flags"]
        unknown = [t.partition("=")[0] for t in extra if t.startswith("--") and t.partition("=")[0] not in known]
        if unknown:
            # A typo (a flag no algorithm takes) gets a "did you mean"; a real flag of another algorithm does not.
            typo = not any(unknown[0] in algorithm_flags(other)["flags"] for other in ALGORITHMS)
            choices = [name[2:] for name in known if name.startswith("--")]
            hint = did_you_mean(unknown[0].lstrip("-"), choices, "--") if typo else ""
            raise ValueError(
                f"{algorithm} does not take {', '.join(unknown)}.{hint} Drop it, or leave {algorithm} out "
                f"(`trl-basics train {algorithm} --help` lists its flags)"
            )
        try:
            check_train_args(algorithm, extra, f"trl-basics train {algorithm}")
        except UsageError as err:
            raise ValueError(f"{algorithm} refuses the flags {shlex.join(extra)}: {err}") from None
    # Then with each algorithm's real parser and config, which also refuses contradictory settings.
    for algorithm in dict.fromkeys(algorithms):
        parser = make_parser(algorithm)
        probe = ["--output_dir", str(output_dir / "probe"), *extra]
        try:
            with quiet_warnings():
                *_, remaining = parser.parse_args_and_config(probe, return_remaining_strings=True)
        except SystemExit:
            raise ValueError(f"{algorithm} refuses the flags {shlex.join(extra)} (see the message above)") from None
        except ValueError as err:
            raise ValueError(f"{algorithm} refuses the flags {shlex.join(extra)}: {err}") from None
        unknown = [token for token in remaining if token.startswith("--")]
        if unknown:
            raise ValueError(
                f"{algorithm} does not take {', '.join(unknown)}. Drop it, or leave {algorithm} out "
                f"(`trl-basics train {algorithm} --help` lists its flags)"
            )


def task_success_rate(model_dir: str, args: ExperimentArguments, prompts: list | None = None) -> float:
    """Share of held-out prompts (or of ``prompts``) whose completion, sampled at temperature 1 as in training,
    solves the task."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..kit.tasks import get_task

    task = get_task(args.task)
    if prompts is None:
        dataset = task.make_dataset(args.eval_prompts, seed=10_000 + args.seed)  # disjoint from the training seed
        prompts = list(dataset["prompt"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.manual_seed(args.seed)
    encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        output = model.generate(
            **encoded,
            do_sample=True,
            temperature=1.0,
            max_new_tokens=args.max_completion_length,
            pad_token_id=tokenizer.pad_token_id,
        )
    completions = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    return task.success_rate(prompts, completions)


def command_line(name: str, argv: list[str]) -> str:
    """The command as a user pastes it: ``name`` may be several words (``ablate reinforce_pp``)."""
    return shlex.join(["trl-basics", *name.split(), *argv])


def check_algorithms(names: list[str]) -> None:
    """A `UsageError` for the first name that is not an algorithm."""
    for name in names:
        lookup_algorithm(name)


def finish(runs: list[RunResult], baseline: Baseline | None, report: Path, strict: bool = False) -> int:
    """Print the table; exit 1 if a run failed (or, with ``strict``, if a verdict is not ✓), else 0."""
    print("\n" + text_table(table_rows(runs, baseline), TERMINAL_COLUMNS) + f"\n\nReport: {report}")
    results = summary(runs, baseline)["runs"].values()
    if any(r["failed"] for r in results):
        return 1
    return 1 if strict and not all(r["passed"] for r in results) else 0


@contextmanager
def quiet_warnings():
    """Silence dependency warnings known to be harmless here (deprecations TRL triggers, progress bars of loads)."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - datasets comes with TRL
        datasets = None
    with warnings.catch_warnings():
        for message in KNOWN_HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        try:
            yield
        finally:
            transformers.logging.set_verbosity(verbosity)
            transformers.logging.enable_progress_bar()
            if datasets is not None:
                datasets.enable_progress_bars()


KNOWN_HARMLESS_WARNINGS = (
    r"`gradient_checkpointing` is deprecated",  # transformers 5 renames the field; TRL still sets it
    r".*`torch_dtype` is deprecated",
    r".*pin_memory.*no accelerator",
)
