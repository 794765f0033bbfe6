"""Runs the trick pipeline on a fixed global batch; launched by test_two_processes.py with 1 or 2 processes.

Each process owns its rows of the token-level fields (as in a TRL trainer) and sees the whole gathered reward
vector; collectives come from accelerate. Writes this rank's advantages, pipeline state and metrics to a file.
"""

import sys

import torch
from accelerate import Accelerator

from trl_basics import Rollout, TrickArguments, TrickContext, TrickPipeline

CONFIGS = {
    "reinforce_pp": dict(kl_coef=0.05, kl_estimator="k1", advantage_estimator="reinforce", whiten_advantages=True),
    "reinforce_pp_baseline": dict(
        kl_coef=0.05, kl_estimator="k2", advantage_estimator="group_mean", whiten_advantages=True, advantage_clip=1.5
    ),
    "ppo_max_rewards": dict(
        reward_norm="running", reward_clip=1.0, kl_coef=0.1, kl_target=0.5, kl_placement="sequence_reward",
        advantage_estimator="moving_average", whiten_advantages=True,
    ),
    "rloo_sequence_kl": dict(kl_coef=0.05, kl_placement="sequence_reward", advantage_estimator="rloo"),
}
NUM_COMPLETIONS, NUM_GENERATIONS, LENGTH, ROUNDS = 8, 4, 6, 3


def global_batch(round_index: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234 + round_index)
    lengths = torch.randint(1, LENGTH + 1, (NUM_COMPLETIONS,), generator=gen)
    mask = (torch.arange(LENGTH)[None, :] < lengths[:, None]).float()
    rewards = torch.randn(NUM_COMPLETIONS, generator=gen, dtype=torch.float64)
    rewards[3] = float("nan")  # one unscorable completion
    logprobs = -torch.rand(NUM_COMPLETIONS, LENGTH, generator=gen, dtype=torch.float64) * 3
    ref_logprobs = logprobs + 0.3 * torch.randn(NUM_COMPLETIONS, LENGTH, generator=gen, dtype=torch.float64)
    return dict(rewards=rewards, mask=mask, lengths=lengths, logprobs=logprobs, ref_logprobs=ref_logprobs)


def run_config(accelerator: Accelerator, config_name: str) -> dict:
    rank, world = accelerator.process_index, accelerator.num_processes
    rows = NUM_COMPLETIONS // world
    local = slice(rank * rows, (rank + 1) * rows)
    pipeline = TrickPipeline.from_args(TrickArguments(**CONFIGS[config_name]))
    metrics: dict[str, float] = {}
    ctx = TrickContext.from_accelerator(accelerator, log=metrics.__setitem__)
    advantages = []
    for round_index in range(ROUNDS):
        batch = global_batch(round_index)
        rollout = Rollout(
            rewards=batch["rewards"],
            num_generations=NUM_GENERATIONS,
            process_slice=local,
            completion_mask=batch["mask"][local],
            completion_lengths=batch["lengths"],
            logprobs=batch["logprobs"][local],
            ref_logprobs=batch["ref_logprobs"][local],
        )
        advantages.append(pipeline.process(rollout, ctx).advantages)
    return {"advantages": advantages, "state": pipeline.state_dict(), "metrics": metrics}


def main(out_path: str) -> None:
    accelerator = Accelerator(cpu=True)
    results = {name: run_config(accelerator, name) for name in CONFIGS}
    torch.save(results, out_path.replace("RANK", str(accelerator.process_index)))


def shut_down() -> None:
    """Leave the process group in order: a gloo group torn down at interpreter exit can abort the process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    shut_down()
