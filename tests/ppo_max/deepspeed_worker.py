"""Trains PPO-max for a few steps under `accelerate launch` with DeepSpeed (ZeRO-2 or ZeRO-3; on CPU with gloo here)
and reports, on rank 0, whether the critic learned, ranks agree, and the critic checkpoint round-trips.

Usage: accelerate launch --config_file examples/accelerate/deepspeed_zero{2,3}.yaml ... deepspeed_worker.py OUT_DIR
"""

import json
import sys

import torch
from accelerate.utils import gather_object

from trl_basics import PPOMaxConfig, PPOMaxTrainer
from trl_basics.kit.model import save_tiny_model
from trl_basics.kit.tasks import get_task


def critic_state(trainer):
    """The critic's full parameters (gathered under ZeRO-3) as one flat tensor, on every rank."""
    state = trainer.critic.state_dict()
    return torch.cat([state[name].float().reshape(-1) for name in sorted(state)])


CONFIG = dict(
    bf16=False, gradient_checkpointing=False, report_to="none", save_strategy="steps", save_steps=2, logging_steps=1,
    disable_tqdm=True, learning_rate=3e-3, critic_learning_rate=3e-3, per_device_train_batch_size=4,
    gradient_accumulation_steps=2, num_generations=1, max_completion_length=6, max_steps=3, seed=0,
)  # fmt: skip


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    model_dir = str(save_tiny_model(f"{out_dir}/model"))
    task = get_task("token_kind")
    config = PPOMaxConfig(output_dir=f"{out_dir}/run", **CONFIG)
    trainer = PPOMaxTrainer(
        model=model_dir, reward_funcs=task.reward_func, args=config, train_dataset=task.make_dataset(64, seed=0)
    )
    start = critic_state(trainer)
    trainer.train()
    end = critic_state(trainer)
    # Resumed from the step-2 checkpoint (policy engine, critic engine, trick state), it ends where the run ended.
    resumed = PPOMaxTrainer(
        model=model_dir, reward_funcs=task.reward_func, train_dataset=task.make_dataset(64, seed=0),
        args=PPOMaxConfig(**{**CONFIG, "output_dir": f"{out_dir}/resumed"}),
    )  # fmt: skip
    resumed.train(resume_from_checkpoint=f"{out_dir}/run/checkpoint-2")
    resumed_end = critic_state(resumed)
    values = [entry["value/loss"] for entry in trainer.state.log_history if "value/loss" in entry]
    ends = gather_object([end.sum().item()])
    report = {
        "world": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "zero_stage": trainer.critic.wrapped.zero_optimization_stage(),
        "critic_moved": float((end - start).abs().max()),
        "resume_max_abs_diff": float((end - resumed_end).abs().max()),
        "same_critic_on_every_rank": len(set(ends)) == 1,
        "value_losses": values,
    }
    if trainer.accelerator.is_main_process:
        with open(f"{out_dir}/report.json", "w") as f:
            json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
