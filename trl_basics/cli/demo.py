"""`trl-basics demo`: the whole RLHF pipeline on the kit's tiny model and task: SFT, a reward model, then RL with
several algorithms against it, with a report."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm
from trl import TrlParser

from .assessment import Baseline
from .experiments import (
    DESCRIPTION,
    ExperimentArguments,
    check_algorithms,
    check_flags,
    command_line,
    finish,
    quiet_warnings,
    run_training,
    task_reward_name,
    task_success_rate,
)
from .parser import machine_defaults
from .report import write_report

DEMO_ALGORITHMS = ["rloo", "reinforce_pp", "reinforce_pp_baseline", "ppo_max", "grpo"]


@dataclass
class DemoArguments(ExperimentArguments):
    output_dir: str = field(
        default="trl-basics-output/demo", metadata={"help": "Where models, runs and the report go."}
    )
    algorithms: list[str] = field(
        default_factory=lambda: list(DEMO_ALGORITHMS),
        metadata={"help": "Algorithms to run after SFT and RM training."},
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


def run_demo(argv: list[str]) -> int:
    parser = TrlParser((DemoArguments,), prog="trl-basics demo", description=DESCRIPTION)
    args, extra = parser.parse_args_and_config(argv, return_remaining_strings=True)
    check_algorithms(args.algorithms)
    out = Path(args.output_dir)
    check_flags(args.algorithms, extra, out)
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with quiet_warnings():
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
            runs, out, f"trl-basics demo on kit:{args.task}", preamble=preamble, command=command_line("demo", argv),
            task_metric=f"rewards/{task_reward_name(args.task)}/mean", baseline=baseline,
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
