"""Step time and peak memory of PPO-max against REINFORCE++ on the same geometry (CPU).

Same model, same batch, same completion length (every completion is forced to exactly ``--completion-length``
tokens with ``min_new_tokens``), same KL coefficient, fp32, no gradient checkpointing, one thread. Each run is a fresh
subprocess, so its peak RSS is its own; runs of the two trainers are interleaved (the order alternates between
repetitions) so that background load hits both alike. Reported: medians over repetitions of

- step time: median time between consecutive optimizer steps (generation, rewards, log-prob and value passes,
  policy and critic updates, logging), the first ``--warmup`` steps left out, as wall time and as the process's CPU
  time (one thread, so CPU time is the compute and is not inflated by other load on a shared machine);
- peak RSS: the process's high-water mark (``resource.getrusage``), and its growth over the RSS measured just
  before the trainer was built (models, optimizer states, activations);
- parameters held: policy + reference (+ critic) and trainable parameters (analytic memory of weights and AdamW).

    OMP_NUM_THREADS=1 python benchmarks/ppo_vs_reinforce_pp.py --repeats 3 --steps 12 --out benchmarks/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GEOMETRIES = {
    # name: (hidden_size, num_layers, num_heads, intermediate_size)
    "kit-tiny": (64, 2, 4, 128),
    "small": (256, 4, 4, 1024),
}
# algorithm (of trl_basics.algorithms) -> its config values beyond the shared ones below
TRAINERS = {"reinforce_pp": {}, "ppo_max": {"critic_learning_rate": 1e-4}}


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def worker(args: argparse.Namespace) -> None:
    import resource

    import torch
    from transformers import TrainerCallback

    from trl_basics.algorithms import get_algorithm
    from trl_basics.kit.model import save_tiny_model
    from trl_basics.kit.tasks import get_task

    torch.set_num_threads(1)
    hidden, layers, heads, intermediate = GEOMETRIES[args.geometry]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(
            save_tiny_model(
                Path(tmp) / "model", hidden_size=hidden, num_layers=layers, num_heads=heads,
                intermediate_size=intermediate,
            )
        )  # fmt: skip
        task = get_task("token_kind")
        common = dict(
            output_dir=str(Path(tmp) / "out"), use_cpu=True, bf16=False, gradient_checkpointing=False,
            report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, learning_rate=1e-4,
            lr_scheduler_type="constant", per_device_train_batch_size=args.batch_size, num_generations=1,
            max_completion_length=args.completion_length, max_steps=args.steps, seed=0, beta=0.0, kl_coef=0.05,
            generation_kwargs={"min_new_tokens": args.completion_length},
        )  # fmt: skip
        algorithm = get_algorithm(args.trainer)
        config = algorithm.config_class()(**{**common, **algorithm.defaults, **TRAINERS[args.trainer]})
        trainer_cls = algorithm.trainer_class()
        rss_before = _rss_kb()
        trainer = trainer_cls(
            model=model_dir, reward_funcs=task.reward_func, args=config,
            train_dataset=task.make_dataset(args.batch_size * args.steps, seed=0),
        )  # fmt: skip

        stamps: list[tuple[float, float]] = []  # (wall, CPU time of this process)

        class Clock(TrainerCallback):
            def on_train_begin(self, *a, **k):
                stamps.append((time.perf_counter(), time.process_time()))

            def on_step_end(self, *a, **k):
                stamps.append((time.perf_counter(), time.process_time()))

        trainer.add_callback(Clock())
        trainer.train()
        step_times = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])][args.warmup :]
        cpu_times = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])][args.warmup :]
        lengths = [e["completions/mean_length"] for e in trainer.state.log_history if "completions/mean_length" in e]

        def count(module, trainable=False):
            return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)

        held = count(trainer.model) + (count(trainer.ref_model) if trainer.ref_model is not None else 0)
        trained = count(trainer.model, trainable=True)
        if args.trainer == "ppo_max":
            critic = trainer.critic.model
            held += count(critic)
            trained += count(critic, trainable=True)
        result = {
            "trainer": args.trainer,
            "geometry": args.geometry,
            "step_time_s": statistics.median(step_times),
            "step_cpu_s": statistics.median(cpu_times),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024,
            "params_held": held,
            "params_trained": trained,
            "mean_completion_length": statistics.mean(lengths),
        }
    with open(args.result, "w") as f:
        json.dump(result, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="Steps left out of the step-time median.")
    parser.add_argument("--batch-size", type=int, default=32, help="Completions per step (one per prompt).")
    parser.add_argument("--completion-length", type=int, default=32)
    parser.add_argument("--geometries", nargs="+", default=list(GEOMETRIES), choices=list(GEOMETRIES))
    parser.add_argument("--out", default=None, help="Write all runs and the summary as JSON here.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trainer", choices=TRAINERS, help=argparse.SUPPRESS)
    parser.add_argument("--geometry", choices=list(GEOMETRIES), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    runs = []
    for geometry in args.geometries:
        for repeat in range(args.repeats):
            order = list(TRAINERS) if repeat % 2 == 0 else list(TRAINERS)[::-1]
            for trainer in order:
                with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
                    result_path = tmp.name
                command = [
                    sys.executable, __file__, "--worker", "--trainer", trainer, "--geometry", geometry,
                    "--result", result_path, "--steps", str(args.steps), "--warmup", str(args.warmup),
                    "--batch-size", str(args.batch_size), "--completion-length", str(args.completion_length),
                ]  # fmt: skip
                subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                with open(result_path) as f:
                    run = json.load(f)
                os.unlink(result_path)
                runs.append(run)
                print(
                    f"{geometry:9s} rep {repeat} {trainer:13s} step {run['step_time_s']:.3f} s "
                    f"(CPU {run['step_cpu_s']:.3f} s)  "
                    f"peak RSS {run['peak_rss_mb']:.0f} MB (+{run['rss_growth_mb']:.0f} MB)",
                    flush=True,
                )

    summary = {}
    print(
        f"\nMedians over {args.repeats} interleaved runs; {args.batch_size} completions x {args.completion_length} "
        f"tokens per step; {args.steps - args.warmup} timed steps per run.\n"
    )
    print(
        "| geometry | trainer | step wall (s) | step CPU (s) | peak RSS (MB) | RSS growth (MB) | params held "
        "| params trained |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for geometry in args.geometries:
        for trainer in TRAINERS:
            mine = [r for r in runs if r["geometry"] == geometry and r["trainer"] == trainer]
            keys = ("step_time_s", "step_cpu_s", "peak_rss_mb", "rss_growth_mb")
            row = {key: statistics.median(r[key] for r in mine) for key in keys}
            row.update(params_held=mine[0]["params_held"], params_trained=mine[0]["params_trained"])
            summary[f"{geometry}/{trainer}"] = row
            print(
                f"| {geometry} | {trainer} | {row['step_time_s']:.3f} | {row['step_cpu_s']:.3f} | "
                f"{row['peak_rss_mb']:.0f} | "
                f"{row['rss_growth_mb']:.0f} | {row['params_held']:,} | {row['params_trained']:,} |"
            )
    print("\n| geometry | PPO-max / REINFORCE++: step wall | step CPU | peak RSS | RSS growth |")
    print("|---|---|---|---|---|")
    for geometry in args.geometries:
        ppo, rpp = summary[f"{geometry}/ppo_max"], summary[f"{geometry}/reinforce_pp"]
        ratios = {key: ppo[key] / rpp[key] for key in ("step_time_s", "step_cpu_s", "peak_rss_mb", "rss_growth_mb")}
        summary[f"{geometry}/ratio"] = ratios
        print(
            f"| {geometry} | {ratios['step_time_s']:.2f}x | {ratios['step_cpu_s']:.2f}x | "
            f"{ratios['peak_rss_mb']:.2f}x | "
            f"{ratios['rss_growth_mb']:.2f}x |"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "runs": runs, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
