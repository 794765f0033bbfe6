"""Trains RLOO (running reward moments, adaptive KL) under `accelerate launch`, from scratch or resumed from a
checkpoint, saving every step. Writes a JSON report from rank 0: the world size, the step reached, and each rank's
trick state as training began (what the resume loaded) and as it ended.

    resume_worker.py MODEL_DIR OUTPUT_DIR MAX_STEPS REPORT [CHECKPOINT]

The global batch is 8 completions whatever the number of processes (8 // world per process).
"""

import copy
import json
import os
import sys

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from transformers import TrainerCallback

import trl_basics as tb
from trl_basics.kit.tasks import get_task

FLAGS = {"beta": 0.0, "kl_coef": 0.05, "kl_target": 0.01, "kl_placement": "token_reward", "reward_norm": "running"}


class TrickStateAtBegin(TrainerCallback):
    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.state = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.state = copy.deepcopy(self.trainer.trick_pipeline.state_dict())


def main(model_dir: str, output_dir: str, max_steps: int, report: str, checkpoint: str | None) -> None:
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    task = get_task("token_kind")
    config = tb.RLOOConfig(
        output_dir=output_dir, use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
        save_strategy="steps", save_steps=1, save_total_limit=None, logging_steps=1, disable_tqdm=True,
        learning_rate=3e-3, lr_scheduler_type="constant", per_device_train_batch_size=8 // world, num_generations=4,
        max_completion_length=4, max_steps=max_steps, seed=0, **FLAGS,
    )  # fmt: skip
    trainer = tb.RLOOTrainer(
        model=model_dir, reward_funcs=task.reward_func, args=config, train_dataset=task.make_dataset(64, seed=0)
    )
    begin = TrickStateAtBegin(trainer)
    trainer.add_callback(begin)
    trainer.train(resume_from_checkpoint=checkpoint)
    at_begin = gather_object([json.dumps(begin.state, sort_keys=True)])
    at_end = gather_object([json.dumps(trainer.trick_pipeline.state_dict(), sort_keys=True)])
    if PartialState().is_main_process:
        with open(report, "w") as f:
            json.dump(
                {
                    "world": trainer.accelerator.num_processes,
                    "global_step": trainer.state.global_step,
                    "begin": at_begin,
                    "end": at_end,
                },
                f,
            )


def shut_down() -> None:
    """Leave the process group in order: a gloo group torn down at interpreter exit can abort the process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else None)
    shut_down()
