"""PPO-max's first optimizer step under `accelerate launch`, for gradient accumulation of 1 and 2 micro-batches, with
greedy decoding (the completions do not depend on how the batch is spread over processes), KL in the loss and the
entropy bonus on. Rank 0 writes the critic's and the policy's gradient norms (before clipping) to a JSON report.

    window_worker.py MODEL_DIR OUTPUT_DIR REPORT
"""

import json
import os
import sys

import torch

from trl_basics import PPOMaxConfig, PPOMaxTrainer
from trl_basics.kit.tasks import get_task

WINDOW = 8  # completions per optimizer step, over every process


def settings(output_dir, world, accumulation):
    return {
        "output_dir": output_dir, "use_cpu": True, "bf16": False, "gradient_checkpointing": False,
        "report_to": "none", "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True, "learning_rate": 3e-3,
        "critic_learning_rate": 3e-3, "num_generations": 1, "max_completion_length": 6, "max_steps": 1, "seed": 0,
        "per_device_train_batch_size": WINDOW // (world * accumulation), "gradient_accumulation_steps": accumulation,
        "loss_type": "dapo", "generation_kwargs": {"do_sample": False},
        # Loss-stage terms too: KL in the loss (k1 weighted by pi/pi_old has a gradient where pi = pi_ref) and the
        # entropy bonus, normalised over the window like the dapo loss.
        "kl_coef": 0.5, "kl_placement": "loss", "kl_estimator": "k1", "use_bias_correction_kl": True,
        "entropy_bonus_coef": 0.1,
    }  # fmt: skip


def first_step(model_dir, output_dir, world, accumulation, window=True):
    task = get_task("token_kind")
    config = PPOMaxConfig(**settings(output_dir, world, accumulation))
    trainer = PPOMaxTrainer(
        model=model_dir, reward_funcs=task.reward_func, args=config, train_dataset=task.make_dataset(64, seed=0)
    )
    if not window:  # each micro-batch as its own token mean (critic, loss-stage terms): what the window's count changes
        trainer.window_token_count = lambda inputs: None
    trainer.train()
    history = trainer.state.log_history
    critic = next(entry["value/grad_norm"] for entry in history if "value/grad_norm" in entry)
    policy = next(entry["grad_norm"] for entry in history if "grad_norm" in entry)
    return {"critic": critic, "policy": policy, "world": trainer.accelerator.num_processes}


def main(model_dir: str, output_dir: str, report: str) -> None:
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    results = {str(ga): first_step(model_dir, f"{output_dir}/ga{ga}", world, ga) for ga in (1, 2)}
    results["2_per_micro_batch"] = first_step(model_dir, f"{output_dir}/off", world, 2, window=False)
    if int(os.environ.get("RANK", "0")) == 0:
        with open(report, "w") as f:
            json.dump(results, f)


def shut_down() -> None:
    """Leave the process group in order: a gloo group torn down at interpreter exit can abort the process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
    shut_down()
