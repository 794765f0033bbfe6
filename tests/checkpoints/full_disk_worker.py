"""One process of a 2-process RLOO run that saves every step (see ``full_disk_two_processes.sh``).

    full_disk_worker.py MODEL_DIR OUTPUT_DIR 3|resume
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers

from helpers import cpu_kwargs

import trl_basics as tb
from trl_basics.kit.tasks import get_task


def main(model_dir: str, output_dir: str, mode: str) -> None:
    task = get_task("token_kind")
    config = tb.RLOOConfig(
        **cpu_kwargs(
            output_dir, max_steps=3, save_strategy="steps", save_steps=1, save_total_limit=1,
            per_device_train_batch_size=4,
        ),
        beta=0.0,
        reward_norm="running",
    )  # fmt: skip
    trainer = tb.RLOOTrainer(
        model=model_dir, reward_funcs=task.reward_func, args=config, train_dataset=task.make_dataset(64, seed=0)
    )
    trainer.train(resume_from_checkpoint=True if mode == "resume" else None)


if __name__ == "__main__":
    main(*sys.argv[1:4])
