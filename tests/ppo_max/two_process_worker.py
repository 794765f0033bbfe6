"""Trains PPO-max for a few steps under `accelerate launch` and checks, on rank 0, that
- the GAE advantages and returns each rank trained on equal one process's pipeline run on the gathered global batch
  (rewards, log-probs and the critic's old values of every rank);
- policy, critic and the critic's optimizer state are identical on every rank after training (DDP);
- every rank ends with the same trick state (running reward moments, KL coefficient).

Writes a JSON report to OUT_DIR/report.json.
"""

import json
import sys

import torch
from accelerate.utils import gather, gather_object

from trl_basics import PPOMaxConfig, PPOMaxTrainer, Rollout, TrickContext
from trl_basics.kit.model import save_tiny_model
from trl_basics.kit.tasks import get_task


class Recording(PPOMaxTrainer):
    """Keeps each round's pipeline input and the advantages/returns this rank trained on."""

    rounds: list

    def build_rollout(self, out, recorded):
        rollout = super().build_rollout(out, recorded)
        self.rounds.append({"rollout": rollout})
        return rollout

    def store_rollout_extras(self, out, rollout):
        super().store_rollout_extras(out, rollout)
        self.rounds[-1].update(advantages=out["advantages"].clone(), returns=out["returns"].clone())


def flat(module):
    return torch.cat([param.detach().reshape(-1) for param in module.parameters()])


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    model_dir = str(save_tiny_model(f"{out_dir}/model"))
    task = get_task("token_kind")
    config = PPOMaxConfig(
        output_dir=f"{out_dir}/run", use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=True, learning_rate=3e-3, critic_learning_rate=3e-3,
        per_device_train_batch_size=4, gradient_accumulation_steps=2, num_generations=1, max_completion_length=6,
        max_steps=3, seed=0, kl_target=0.05, ptx_coef=0.1, ptx_batch_size=2,
    )  # fmt: skip
    trainer = Recording(
        model=model_dir, reward_funcs=task.reward_func, args=config, train_dataset=task.make_dataset(64, seed=0),
        ptx_dataset=[f"say : {w} {w}" for w in "abcdefgh"],
    )  # fmt: skip
    trainer.rounds = []
    critic_start = flat(trainer.critic.model)
    trainer.train()
    accelerator = trainer.accelerator

    def global_rows(tensor):
        return gather(accelerator.pad_across_processes(tensor, dim=1))

    replay = trainer.build_pipeline()
    worst = 0.0
    for round_ in trainer.rounds:
        local = round_["rollout"]
        full = Rollout(
            rewards=local.rewards,
            num_generations=local.num_generations,
            completion_mask=global_rows(local.completion_mask),
            completion_lengths=local.completion_lengths,
            logprobs=global_rows(local.logprobs),
            ref_logprobs=global_rows(local.ref_logprobs),
            values=global_rows(local.values),
        )
        expected = replay.process(full, TrickContext())
        for name in ("advantages", "returns"):
            used = global_rows(round_[name])
            worst = max(worst, float((getattr(expected, name).to(used.dtype) - used).abs().max()))
    critic = trainer.critic.model
    optimizer_state = torch.cat(
        [
            torch.cat([s["exp_avg"].reshape(-1), s["exp_avg_sq"].reshape(-1)])
            for s in trainer.critic.optimizer.state.values()
        ]
    )
    vectors = {"policy": flat(trainer.model), "critic": flat(critic), "critic_optimizer": optimizer_state}
    spread = {name: float((gather(v.unsqueeze(0)) - v).abs().max()) for name, v in vectors.items()}
    spread = {name: max(gather_object([value])) for name, value in spread.items()}
    states = gather_object([json.dumps(trainer.trick_pipeline.state_dict(), sort_keys=True)])
    report = {
        "world": accelerator.num_processes,
        "rounds": len(trainer.rounds),
        "max_abs_diff": worst,
        "spread_across_ranks": spread,
        "critic_moved": float((flat(critic) - critic_start).abs().max()),
        "same_state_on_every_rank": len(set(states)) == 1,
        "replay_state_matches": json.dumps(replay.state_dict(), sort_keys=True) == states[0],
        "value_losses": [entry["value/loss"] for entry in trainer.state.log_history if "value/loss" in entry],
        "ptx_losses": [entry["ptx/loss"] for entry in trainer.state.log_history if "ptx/loss" in entry],
    }
    if accelerator.is_main_process:
        with open(f"{out_dir}/report.json", "w") as f:
            json.dump(report, f)


def shut_down() -> None:
    """Leave the process group in order: a gloo group torn down at interpreter exit can abort the process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    shut_down()
