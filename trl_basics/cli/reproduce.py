"""`trl-basics reproduce [rloo|reinforce_pp|ppo_max]`: measure the claims of the three papers on the kit pipeline.

The kit pipeline is built once (SFT model, learned reward model; the task's verifiable reward is logged beside the
reward model's as the gold measure), then every run configuration the chosen papers' claims need is trained on each
seed with `compare`'s machinery (`experiments.run_training`, the same `train` command), in this process, one after
the other. A finished run is recorded atomically in ``runs/<run>/result.json`` and skipped when the command is run
again, so an interrupted reproduce continues where it stopped (a failed run is reported and tried again next time). The claims are then judged by the rule of
`claim_stats.py` and written to report.md, report.html and claims.json (`reproduce_report.py`); each paper's runs
also get `compare`'s report, with the curves averaged over seeds.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .assessment import RunResult
from .claims import PAPERS, RUNS, RunConfig, runs_for
from .experiments import ExperimentArguments, command_line, quiet_warnings, run_training, task_success_rate

SMALL_TASK = "target_letter"


@dataclass
class ReproduceArguments(ExperimentArguments):
    output_dir: str = field(default="trl-basics-output/reproduce", metadata={"help": "Where runs and reports go."})
    seeds: int = field(default=5, metadata={"help": "Seeds per run configuration (the n of every interval)."})
    quick: bool = field(
        default=False,
        metadata={"help": "Smoke test: 1 seed, 4 steps, tiny budgets. Checks the report's structure, not verdicts."},
    )
    max_steps: int = field(default=40, metadata={"help": "RL steps per run."})
    completions_per_step: int = field(default=32, metadata={"help": "Completions per step (the same for every run)."})
    learning_rate: float = field(default=1.5e-3, metadata={"help": "Policy learning rate of every RL run."})
    eval_prompts: int = field(default=128, metadata={"help": "Held-out prompts for the final task success rate."})
    sft_steps: int = field(default=20, metadata={"help": "SFT steps of the starting policy (32 examples each)."})
    reward_model_steps: int = field(default=60, metadata={"help": "Reward-model training steps (32 pairs each)."})
    small_prompts: int = field(
        default=8,
        metadata={"help": "Training prompts of the small-prompt-set runs (claim 9); at least the prompts of one step."},
    )
    max_completion_length: int = field(
        default=8, metadata={"help": "Completion length cap (tokens): room for the length to grow (claims 8, 10)."}
    )
    alarm_window: int = field(default=5, metadata={"help": "Steps per window of the collapse alarm."})


QUICK = {"seeds": 1, "max_steps": 4, "completions_per_step": 8, "eval_prompts": 16, "sft_steps": 2,
         "reward_model_steps": 2}  # fmt: skip


def parse(argv: list[str]) -> tuple[list[str], ReproduceArguments]:
    from trl import TrlParser

    papers = []
    while argv and not argv[0].startswith("-"):
        papers.append(argv.pop(0))
    unknown = [p for p in papers if p not in PAPERS]
    if unknown:
        raise ValueError(f"unknown paper {unknown[0]!r}: choose from {', '.join(PAPERS)} (or none for all)")
    parser = TrlParser((ReproduceArguments,), prog="trl-basics reproduce", description=__doc__)
    (args,) = parser.parse_args_and_config(argv)
    if args.quick:
        given = {token.split("=", 1)[0].lstrip("-") for token in argv if token.startswith("--")}
        args = replace(args, **{k: v for k, v in QUICK.items() if k not in given})
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    if args.small_prompts * args.num_generations < args.completions_per_step:
        raise ValueError(
            f"--small_prompts {args.small_prompts} is fewer than the {args.completions_per_step // args.num_generations} "
            "prompts of one step: the small-prompt-set runs would train no step. Raise --small_prompts."
        )
    return papers or list(PAPERS), args


# --- the starting models ---------------------------------------------------------------------------------------------


def write_json_atomically(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=True))
    os.replace(tmp, path)


def prepare_pipeline(name: str, args: ReproduceArguments, out: Path) -> dict:
    """SFT model (and, for the main pipeline, the reward model), built once with seed 0 and recorded."""
    from .demo import DemoArguments, supervised_fine_tune, train_reward_model

    folder = out / "models" / name
    done = folder / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    from ..kit.model import save_tiny_model

    task = args.task if name == "main" else SMALL_TASK
    demo_args = DemoArguments(
        task=task, seed=0, sft_steps=args.sft_steps, reward_model_steps=args.reward_model_steps,
        eval_prompts=args.eval_prompts, max_completion_length=args.max_completion_length,
    )  # fmt: skip
    base = save_tiny_model(folder / "initial", seed=0)
    sft = supervised_fine_tune(str(base), folder / "sft", demo_args)
    record = {"task": task, "sft": str(sft), "sft_success": task_success_rate(str(sft), demo_args)}
    if name == "main":
        reward, accuracy = train_reward_model(str(sft), folder / "reward", demo_args)
        record.update(reward=str(reward), reward_accuracy=accuracy)
    write_json_atomically(done, record)
    return record


# --- the runs --------------------------------------------------------------------------------------------------------


def run_arguments(config: RunConfig, args: ReproduceArguments, seed: int, pipeline: dict) -> ExperimentArguments:
    k = config.num_generations or args.num_generations
    completions = args.completions_per_step * k // args.num_generations if config.prompts_per_step_kept else None
    return ExperimentArguments(
        output_dir=args.output_dir, task=pipeline["task"], model_name_or_path=pipeline["sft"],
        reward_model_name_or_path=pipeline.get("reward"), seed=seed, max_steps=args.max_steps,
        completions_per_step=completions or args.completions_per_step, num_generations=k,
        max_completion_length=args.max_completion_length, learning_rate=args.learning_rate,
        eval_prompts=args.eval_prompts,
    )  # fmt: skip


def run_flags(config: RunConfig, args: ReproduceArguments, pipeline: dict, run_dir: Path) -> list[str]:
    from .ablate import variant_flags

    flags = [token.replace("{sft}", pipeline["sft"]) for token in config.flags]
    if config.alarm_window:
        flags += ["--collapse_alarm_window", str(args.alarm_window)]
    if config.pipeline == "small":
        flags += ["--num_prompts", str(args.small_prompts)]
    if config.overrides:
        flags += variant_flags(run_dir, dict(config.overrides))
    return flags


def result_to_json(result: RunResult) -> dict:
    return asdict(result)


def result_from_json(data: dict) -> RunResult:
    return RunResult(**data)


def train_once(config: RunConfig, args: ReproduceArguments, seed: int, pipeline: dict, runs_dir: Path) -> RunResult:
    """One configuration on one seed: the recorded result if it finished before, else train it and record it."""
    label = f"{config.key}-seed{seed}"
    run_dir = runs_dir / label
    record = run_dir / "result.json"
    if record.exists():
        return result_from_json(json.loads(record.read_text()))
    shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished attempt: start it again
    run_dir.mkdir(parents=True)
    run_args = run_arguments(config, args, seed, pipeline)
    flags = run_flags(config, args, pipeline, run_dir)
    result = run_training(label, config.algorithm, run_args, flags, runs_dir, in_process=True)
    if result.failed is None and config.pipeline == "small":
        from ..kit.tasks import get_task

        prompts = list(get_task(run_args.task).make_dataset(args.small_prompts, seed=seed)["prompt"])
        repeats = -(-args.eval_prompts // len(prompts))
        result.extras["train_success"] = task_success_rate(str(run_dir), run_args, (prompts * repeats)[: args.eval_prompts])
    for weights in run_dir.glob("*.safetensors"):  # the reports need the metrics, not the weights
        weights.unlink()
    if result.failed is None:  # a failed run is reported, and tried again by the next invocation
        write_json_atomically(record, result_to_json(result))
    return result


def record_invocation(out: Path, papers: list[str], start: float, trained: int) -> list[dict]:
    """Append this invocation (papers, runs it trained, wall time) to invocations.json; return them all."""
    path = out / "invocations.json"
    invocations = json.loads(path.read_text()) if path.exists() else []
    invocations.append({"papers": papers, "runs_trained": trained, "wall_seconds": time.perf_counter() - start,
                        "ended": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})  # fmt: skip
    write_json_atomically(path, invocations)
    return invocations


def run_reproduce(argv: list[str]) -> int:
    import torch

    from .reproduce_report import write_reproduce_report

    start = time.perf_counter()
    papers, args = parse(list(argv))
    torch.set_num_threads(1)  # tiny models: one thread is fastest (as for `compare`'s child runs)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    configs = runs_for(papers)
    by_seed: dict[int, dict[str, RunResult]] = {seed: {} for seed in range(args.seeds)}
    pipelines: dict[str, dict] = {}
    total = len(configs) * args.seeds
    with quiet_warnings():
        for name in dict.fromkeys(config.pipeline for config in configs):
            print(f"trl-basics reproduce: preparing the {name} pipeline (SFT{' and reward model' if name == 'main' else ''})", flush=True)
            pipelines[name] = prepare_pipeline(name, args, out)
        done = trained = 0
        for seed in range(args.seeds):
            for config in configs:
                fresh = not (out / "runs" / f"{config.key}-seed{seed}" / "result.json").exists()
                result = train_once(config, args, seed, pipelines[config.pipeline], out / "runs")
                trained += fresh
                by_seed[seed][config.key] = result
                done += 1
                status = f"failed: {result.failed}" if result.failed else f"{result.wall_seconds:.0f} s"
                print(f"[{done}/{total}] {config.key} seed {seed}: {status}", flush=True)
        invocations = record_invocation(out, papers, start, trained)
        report = write_reproduce_report(
            papers, by_seed, args, pipelines, out, command_line("reproduce", list(argv)), invocations
        )
    print(f"\nReport: {report}")
    failed = [r.label for runs in by_seed.values() for r in runs.values() if r.failed]
    if failed:
        print(f"trl-basics reproduce: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


__all__ = ["QUICK", "RUNS", "ReproduceArguments", "run_reproduce"]
