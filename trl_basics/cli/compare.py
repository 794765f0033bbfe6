"""`trl-basics compare`: several algorithms side by side on one task and seed, with a report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

from ..algorithms import ALGORITHMS
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
)
from .report import write_report


@dataclass
class CompareArguments(ExperimentArguments):
    algorithms: list[str] = field(
        default_factory=lambda: ["rloo", "reinforce_pp", "reinforce_pp_baseline", "reinforce_ma", "grpo"],
        metadata={"help": f"Algorithms to run, from: {', '.join(ALGORITHMS)}."},
    )


def run_compare(argv: list[str]) -> int:
    parser = TrlParser((CompareArguments,), prog="trl-basics compare", description=DESCRIPTION)
    args, extra = parser.parse_args_and_config(argv, return_remaining_strings=True)
    check_algorithms(args.algorithms)
    out = Path(args.output_dir)
    check_flags(args.algorithms, extra, out)
    with quiet_warnings():
        runs = [run_training(algorithm, algorithm, args, extra, out / "runs") for algorithm in args.algorithms]
        report = write_report(
            runs, out, f"Comparison on kit:{args.task}", command=command_line("compare", argv),
            task_metric=f"rewards/{task_reward_name(args.task)}/mean", length_cap=args.max_completion_length,
        )  # fmt: skip
    return finish(runs, None, report)
