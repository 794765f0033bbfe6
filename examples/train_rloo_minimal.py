"""Smallest end-to-end RL run: build a tiny random model, train it with RLOO on a synthetic task, print the reward.

Runs on a CPU in well under a minute with no network access::

    python examples/train_rloo_minimal.py --output-dir trl-basics-output/minimal --task target_letter

The mean reward of the first logging step (a random model: ~0.05 on ``target_letter``) and of the last one (~0.9)
are printed at the end.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from trl import RLOOConfig, RLOOTrainer

from trl_basics.kit import TASKS, get_task, limit_torch_threads, recommended_rl_kwargs, save_tiny_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("trl-basics-output/minimal"))
    parser.add_argument("--task", choices=sorted(TASKS), default="target_letter")
    parser.add_argument("--max-steps", type=int, default=None, help="default: the task's recommended number")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> tuple[float, float]:
    """Train and return the mean reward of the first and last logging steps."""
    args = parse_args(argv)
    task = get_task(args.task)

    # The model must be saved: with beta != 0 TRL reloads the reference model from the model's path.
    model_dir = save_tiny_model(args.output_dir / "model", seed=args.seed)

    config_kwargs = recommended_rl_kwargs(task.name)
    if args.max_steps is not None:
        config_kwargs["max_steps"] = args.max_steps
    config = RLOOConfig(output_dir=str(args.output_dir / "run"), seed=args.seed, **config_kwargs)

    trainer = RLOOTrainer(
        model=str(model_dir),
        reward_funcs=task.reward_func,
        args=config,
        train_dataset=task.make_dataset(4000, seed=args.seed),
    )
    start = time.perf_counter()
    with limit_torch_threads(1):  # a tiny model trains faster on one thread, and robustly on a busy machine
        trainer.train()
    elapsed = time.perf_counter() - start

    rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    first, last = rewards[0], rewards[-1]
    print(f"task={task.name} steps={len(rewards)} time={elapsed:.1f}s")
    print(f"mean reward: first logging step {first:.3f}, last logging step {last:.3f}")
    return first, last


if __name__ == "__main__":
    main()
