"""`trl-basics ablate ALGO`: switch each trick of an algorithm off in turn, all else equal, with a report."""

from __future__ import annotations

import sys
from pathlib import Path

from trl import TrlParser

from ..algorithms import ALGORITHMS
from .errors import lookup_algorithm
from .experiments import (
    ExperimentArguments,
    command_line,
    finish,
    quiet_warnings,
    run_training,
    task_reward_name,
)
from .parser import make_parser
from .report import write_report


def ablation_switches(algorithm: str, args: ExperimentArguments, extra: list[str]) -> dict[str, dict]:
    """For each trick the configuration switches on, the flag values that switch it off."""
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
    lookup_algorithm(algorithm)
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
    with quiet_warnings():
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
            command=command_line(f"ablate {algorithm}", argv),
            task_metric=f"rewards/{task_reward_name(args.task)}/mean", length_cap=args.max_completion_length,
        )  # fmt: skip
    return finish(runs, None, report)


def _flag_text(overrides: dict) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in overrides.items())
