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
from trl import TrlParser

from .algorithms import ALGORITHMS, get_algorithm
from .report import TERMINAL_COLUMNS, Baseline, RunResult, summary, table_rows, text_table, write_report

DEMO_ALGORITHMS = ["rloo", "reinforce_pp", "reinforce_pp_baseline", "ppo_max", "grpo"]


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
    learning_rate: float = field(default=3e-3, metadata={"help": "Policy learning rate (tiny models need a large one)."})
    eval_prompts: int = field(default=256, metadata={"help": "Held-out prompts for the final task success rate."})


@dataclass
class CompareArguments(ExperimentArguments):
    algorithms: list[str] = field(
        default_factory=lambda: ["rloo", "reinforce_pp", "reinforce_pp_baseline", "reinforce_ma", "grpo"],
        metadata={"help": f"Algorithms to run, from: {', '.join(ALGORITHMS)}."},
    )


@dataclass
class DemoArguments(ExperimentArguments):
    output_dir: str = field(default="trl-basics-output/demo", metadata={"help": "Where models, runs and the report go."})
    algorithms: list[str] = field(
        default_factory=lambda: list(DEMO_ALGORITHMS), metadata={"help": "Algorithms to run after SFT and RM training."}
    )
    learning_rate: float = field(
        default=1.5e-3,
        metadata={
            "help": "Policy learning rate of the RL runs: half the kit's 3e-3, at which RLOO's policy broke on its "
            "last step on some seeds and machines."
        },
    )
    sft_steps: int = field(default=30, metadata={"help": "Supervised fine-tuning steps (32 examples each)."})
    reward_model_steps: int = field(default=100, metadata={"help": "Reward-model training steps (32 pairs each)."})


# --- running one training in a child process -------------------------------------------------------------------------


def train_command(algorithm: str, args: ExperimentArguments, run_dir: Path, extra: list[str]) -> list[str]:
    task_reward = f"trl_basics.kit.tasks:{_task_reward_name(args.task)}"
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


def _task_reward_name(task_name: str) -> str:
    from ..kit.tasks import get_task

    return get_task(task_name).reward_func.__name__


REWARD_IN_LOG = re.compile(r"'reward': '?(-?[0-9.eE+-]+|nan)'?")


def run_child(command: list[str], log_path: Path, progress: tqdm | None = None) -> tuple[int, float, float]:
    """Run ``command``; return (exit code, peak resident memory in MB, wall seconds). Output goes to ``log_path``.

    With ``progress``, the bar advances by one for every training step the child logs, showing its current reward.
    """
    from .environment import child_environment

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


def run_training(label: str, algorithm: str, args: ExperimentArguments, extra: list[str], runs_dir: Path) -> RunResult:
    """One run in a child process. A run that fails returns a result with ``failed`` set: the others go on."""
    run_dir = runs_dir / label
    run_dir.mkdir(parents=True, exist_ok=True)
    command = train_command(algorithm, args, run_dir, extra)
    (run_dir / "command.txt").write_text(shlex.join(command) + "\n")
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
    from .flags import UsageError, algorithm_flags, check_train_args, did_you_mean
    from .train import make_parser

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
            with _quiet_warnings():
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


def task_success_rate(model_dir: str, args: ExperimentArguments) -> float:
    """Share of held-out prompts whose completion (sampled at temperature 1, as in training) solves the task."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..kit.tasks import get_task

    task = get_task(args.task)
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


def _command_line(name: str, argv: list[str]) -> str:
    """The command as a user pastes it: ``name`` may be several words (``ablate reinforce_pp``)."""
    return shlex.join(["trl-basics", *name.split(), *argv])


def _check_algorithms(names: list[str]) -> None:
    for name in names:
        get_algorithm(name)


# --- compare ---------------------------------------------------------------------------------------------------------


def run_compare(argv: list[str]) -> int:
    parser = TrlParser((CompareArguments,), prog="trl-basics compare", description=__doc__)
    args, extra = parser.parse_args_and_config(argv, return_remaining_strings=True)
    _check_algorithms(args.algorithms)
    out = Path(args.output_dir)
    check_flags(args.algorithms, extra, out)
    with _quiet_warnings():
        runs = [run_training(algorithm, algorithm, args, extra, out / "runs") for algorithm in args.algorithms]
        report = write_report(
            runs, out, f"Comparison on kit:{args.task}", command=_command_line("compare", argv),
            task_metric=f"rewards/{_task_reward_name(args.task)}/mean", length_cap=args.max_completion_length,
        )  # fmt: skip
    return finish(runs, None, report)


def finish(runs: list[RunResult], baseline: Baseline | None, report: Path, strict: bool = False) -> int:
    """Print the table; exit 1 if a run failed (or, with ``strict``, if a verdict is not ✓), else 0."""
    print("\n" + text_table(table_rows(runs, baseline), TERMINAL_COLUMNS) + f"\n\nReport: {report}")
    results = summary(runs, baseline)["runs"].values()
    if any(r["failed"] for r in results):
        return 1
    return 1 if strict and not all(r["passed"] for r in results) else 0


@contextmanager
def _quiet_warnings():
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


# --- ablate ----------------------------------------------------------------------------------------------------------


def ablation_switches(algorithm: str, args: ExperimentArguments, extra: list[str]) -> dict[str, dict]:
    """For each trick the configuration switches on, the flag values that switch it off."""
    from .train import make_parser

    parser = make_parser(algorithm)
    # Build the run's config in-process (nothing is trained) to see which tricks it switches on.
    _, config, _ = parser.parse_args_and_config(
        ["--output_dir", str(Path(args.output_dir) / "probe"), "--num_generations", str(args.num_generations), *extra]
    )
    return config.ablation_switches()


def strip_flags(argv: list[str], keys: set[str]) -> list[str]:
    """``argv`` without the flags named in ``keys`` (and their values)."""
    kept, skipping = [], False
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            skipping = name in keys
            if skipping:
                continue
        elif skipping:
            continue
        kept.append(token)
    return kept


def variant_flags(run_dir: Path, overrides: dict) -> list[str]:
    """Flags that apply ``overrides``: through a YAML file, since a command line cannot spell ``None``."""
    import yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "ablation.yaml"
    path.write_text(yaml.safe_dump(overrides))
    return ["--config", str(path)]


def run_ablate(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(f"trl-basics ablate: name an algorithm first: {', '.join(ALGORITHMS)}", file=sys.stderr)
        return 2
    algorithm, argv = argv[0], argv[1:]
    get_algorithm(algorithm)
    parser = TrlParser((ExperimentArguments,), prog=f"trl-basics ablate {algorithm}")
    parser.set_defaults(output_dir=f"trl-basics-output/ablate-{algorithm}")
    args, extra = parser.parse_args_and_config(argv, return_remaining_strings=True)
    switches = ablation_switches(algorithm, args, extra)
    if not switches:
        raise ValueError(
            f"{algorithm} with these flags switches no trick on, so there is nothing to ablate. Add trick flags "
            "(for example --reward_norm running --whiten_advantages true)."
        )
    out = Path(args.output_dir)
    variants = {"all tricks": {}} | {f"without {name}": overrides for name, overrides in switches.items()}
    runs = []
    with _quiet_warnings():
        for label, overrides in variants.items():
            slug = label.replace(" ", "_")
            flags = strip_flags(extra, set(overrides))
            flags += variant_flags(out / "runs" / slug, overrides) if overrides else []
            runs.append(run_training(slug, algorithm, args, flags, out / "runs"))
            runs[-1].label = label
        disabled = ", ".join(f"`{name}` ({_flag_text(overrides)})" for name, overrides in switches.items())
        report = write_report(
            runs, out, f"Ablation of {algorithm} on kit:{args.task}",
            preamble="Each row switches one trick off, all else equal (same seed, model, prompts and budget). "
            f"Disabled in turn: {disabled}.",
            command=_command_line(f"ablate {algorithm}", argv),
            task_metric=f"rewards/{_task_reward_name(args.task)}/mean", length_cap=args.max_completion_length,
        )  # fmt: skip
    return finish(runs, None, report)


def _flag_text(overrides: dict) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in overrides.items())


# --- demo ------------------------------------------------------------------------------------------------------------


def run_demo(argv: list[str]) -> int:
    parser = TrlParser((DemoArguments,), prog="trl-basics demo", description=__doc__)
    args, extra = parser.parse_args_and_config(argv, return_remaining_strings=True)
    _check_algorithms(args.algorithms)
    out = Path(args.output_dir)
    check_flags(args.algorithms, extra, out)
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with _quiet_warnings():
        from ..kit.model import save_tiny_model

        base = save_tiny_model(models / "initial", seed=args.seed)
        sft_dir = supervised_fine_tune(str(base), models / "sft", args)
        sft_success = task_success_rate(str(sft_dir), args)
        reward_dir, reward_accuracy = train_reward_model(str(sft_dir), models / "reward", args)
        rl_args = DemoArguments(
            **{**vars(args), "model_name_or_path": str(sft_dir), "reward_model_name_or_path": str(reward_dir)}
        )
        runs = [run_training(algorithm, algorithm, rl_args, extra, out / "runs") for algorithm in args.algorithms]
        baseline = Baseline(f"SFT (start of RL, {args.sft_steps} steps)", sft_success, args.eval_prompts)
        preamble = (
            f"Pipeline: tiny Llama-style model built locally → SFT ({args.sft_steps} steps, task success after SFT "
            f"{100 * sft_success:.1f}%) → reward model with TRL's RewardTrainer ({args.reward_model_steps} steps, "
            f"held-out pair accuracy {100 * reward_accuracy:.1f}%) → RL from the SFT model against the reward model, "
            f"{args.max_steps} steps × {args.completions_per_step} completions for every algorithm, learning rate "
            f"{args.learning_rate:g}, seed {args.seed}. The task's verifiable reward is logged beside the reward "
            f"model's (weight 0). Wall time of the whole demo: {time.perf_counter() - start:.0f} s."
        )
        report = write_report(
            runs, out, f"trl-basics demo on kit:{args.task}", preamble=preamble, command=_command_line("demo", argv),
            task_metric=f"rewards/{_task_reward_name(args.task)}/mean", baseline=baseline,
            length_cap=args.max_completion_length,
        )  # fmt: skip
    data = json.loads((out / "summary.json").read_text())
    data.update(sft_success_rate=sft_success, reward_model_accuracy=reward_accuracy, seed=args.seed)
    (out / "summary.json").write_text(json.dumps(data, indent=2))
    return finish(runs, baseline, report, strict=True)


def _phase_progress(desc: str):
    """One progress bar for an in-process training phase: step/total and the latest loss (a TrainerCallback, built
    here so that `compare`/`ablate`/`demo --help` and their argument errors need not import transformers' trainer)."""
    from transformers import TrainerCallback

    class PhaseProgress(TrainerCallback):
        def __init__(self) -> None:
            self.bar: tqdm | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(total=state.max_steps, desc=desc, unit="step", dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and logs and "loss" in logs:
                self.bar.set_postfix_str(f"loss {float(logs['loss']):.3f}")

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    return PhaseProgress()


def _with_phase_bar(trainer, desc: str):
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_phase_progress(desc))
    return trainer


def _common_trainer_kwargs(output_dir: Path, args: ExperimentArguments, steps: int, learning_rate: float) -> dict:
    from .train import machine_defaults

    return dict(
        output_dir=str(output_dir), seed=args.seed, max_steps=steps, learning_rate=learning_rate,
        per_device_train_batch_size=32, logging_steps=10, save_strategy="no", report_to="none",
        gradient_checkpointing=False, disable_tqdm=True, **machine_defaults(),
    )  # fmt: skip


def supervised_fine_tune(base: str, output_dir: Path, args: DemoArguments) -> Path:
    """TRL's SFTTrainer on the task's worked examples: a partly competent starting policy for RL."""
    import trl

    from ..kit.tasks import get_task

    task = get_task(args.task)
    config = trl.SFTConfig(**_common_trainer_kwargs(output_dir, args, args.sft_steps, 3e-3), max_length=32)
    trainer = trl.SFTTrainer(model=base, args=config, train_dataset=task.make_sft_dataset(4096, seed=args.seed))
    _with_phase_bar(trainer, "SFT").train()
    trainer.save_model(str(output_dir))
    return output_dir


def train_reward_model(sft_dir: str, output_dir: Path, args: DemoArguments) -> tuple[Path, float]:
    """TRL's RewardTrainer on synthetic preference pairs, initialised from the SFT model."""
    import trl

    from ..kit.tasks import get_task

    task = get_task(args.task)
    config = trl.RewardConfig(**_common_trainer_kwargs(output_dir, args, args.reward_model_steps, 1e-3), max_length=32)
    trainer = trl.RewardTrainer(
        model=sft_dir,
        args=config,
        train_dataset=task.make_preference_dataset(4096, seed=args.seed),
        eval_dataset=task.make_preference_dataset(256, seed=20_000 + args.seed),
    )
    _with_phase_bar(trainer, "reward model").train()
    accuracy = trainer.evaluate()["eval_accuracy"]
    trainer.save_model(str(output_dir))
    return output_dir, accuracy
