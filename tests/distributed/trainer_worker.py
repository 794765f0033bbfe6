"""Trains each critic-free trainer for a few steps under `accelerate launch` and checks, on rank 0, that the
advantages every rank used equal a single-process pipeline run on the gathered global batch.

Writes a JSON report: per config, the largest advantage difference and whether every rank ended with the same
trick state.
"""

import json
import sys

import torch
from accelerate.utils import gather, gather_object

import trl_basics as tb
from trl_basics import Rollout, TrickContext
from trl_basics.kit.model import save_tiny_model
from trl_basics.kit.tasks import get_task

CONFIGS = {
    "reinforce_pp": (tb.ReinforcePlusPlusTrainer, tb.ReinforcePlusPlusConfig, {"kl_coef": 0.05}),
    "reinforce_pp_baseline": (tb.ReinforcePlusPlusTrainer, tb.ReinforcePlusPlusConfig, {"baseline": "group"}),
    # The recommended REINFORCE++-baseline setting: k2 KL in the loss, token-weighted whitening over both ranks.
    "reinforce_pp_baseline_kl_loss": (
        tb.ReinforcePlusPlusTrainer,
        tb.ReinforcePlusPlusConfig,
        {"baseline": "group", "kl_placement": "loss", "kl_estimator": "k2", "kl_coef": 0.01},
    ),
    "rloo_running_adaptive": (
        tb.RLOOTrainer,
        tb.RLOOConfig,
        {"beta": 0.0, "kl_coef": 0.05, "kl_target": 0.01, "kl_placement": "token_reward", "reward_norm": "running"},
    ),
    "reinforce_ma": (tb.ReinforceWithBaselineTrainer, tb.ReinforceWithBaselineConfig, {"whiten_advantages": True}),
}


def recording(trainer_cls):
    class Recording(trainer_cls):
        """Keeps each round's pipeline input and the advantages this rank trained on."""

        rounds: list

        def build_rollout(self, out, recorded):
            rollout = super().build_rollout(out, recorded)
            self.rounds.append({"rollout": rollout})
            return rollout

        def store_rollout_extras(self, out, rollout):
            super().store_rollout_extras(out, rollout)
            self.rounds[-1]["advantages"] = out["advantages"].clone()

    return Recording


def check(name, model_dir, out_dir):
    trainer_cls, config_cls, flags = CONFIGS[name]
    task = get_task("token_kind")
    config = config_cls(
        output_dir=f"{out_dir}/{name}", use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=True, learning_rate=3e-3, per_device_train_batch_size=4,
        num_generations=4, max_completion_length=6, max_steps=3, seed=0, **flags,
    )  # fmt: skip
    trainer = recording(trainer_cls)(
        model=model_dir, reward_funcs=task.reward_func, args=config, train_dataset=task.make_dataset(64, seed=0)
    )
    trainer.rounds = []
    trainer.train()
    accelerator = trainer.accelerator

    def global_rows(tensor):
        return gather(accelerator.pad_across_processes(tensor, dim=1) if tensor.dim() == 2 else tensor)

    replay = trainer.build_pipeline()
    worst = 0.0
    for round_ in trainer.rounds:
        local = round_["rollout"]
        full = Rollout(
            rewards=local.rewards,
            num_generations=local.num_generations,
            completion_mask=global_rows(local.completion_mask),
            completion_lengths=local.completion_lengths,
            logprobs=None if local.logprobs is None else global_rows(local.logprobs),
            ref_logprobs=None if local.ref_logprobs is None else global_rows(local.ref_logprobs),
        )
        expected = replay.process(full, TrickContext()).advantages
        used = global_rows(round_["advantages"])
        worst = max(worst, float((expected.to(used.dtype) - used).abs().max()))
    states = gather_object([json.dumps(trainer.trick_pipeline.state_dict(), sort_keys=True)])
    return {
        "rounds": len(trainer.rounds),
        "world": accelerator.num_processes,
        "max_abs_diff": worst,
        "same_state_on_every_rank": len(set(states)) == 1,
        "replay_state_matches": json.dumps(replay.state_dict(), sort_keys=True) == states[0],
    }


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    model_dir = str(save_tiny_model(f"{out_dir}/model"))
    report = {name: check(name, model_dir, out_dir) for name in CONFIGS}
    from accelerate import PartialState

    if PartialState().is_main_process:
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
