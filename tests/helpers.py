"""Helpers shared by the tests: CPU trainer settings, logged metrics, simulated multi-process all-reduce and random
masked batches."""

from __future__ import annotations

import itertools
import json
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trl_basics import Rollout, TrickContext, TrickPipeline

GARBAGE = (float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 123.0)


def run_in_lockstep(fn: Callable[[Any, Callable[[Tensor], Tensor]], Any], shards: Sequence[Any]) -> list[Any]:
    """Run ``fn(shard, reduce_fn)`` once per shard, each in its own thread acting as one process.

    ``reduce_fn`` behaves like ``accelerator.reduce(t, "sum")``: it blocks until every "process" has called it, then
    returns the element-wise sum of all their tensors (in rank order, so every process gets identical bits). Any
    number of collectives per call works, as long as all processes make the same sequence of calls.
    """
    world = len(shards)
    barrier = threading.Barrier(world)
    slots: list[Tensor | None] = [None] * world
    results: list[Any] = [None] * world
    errors: list[Exception] = []

    def make_reduce_fn(rank: int) -> Callable[[Tensor], Tensor]:
        def reduce_fn(t: Tensor) -> Tensor:
            slots[rank] = t.detach().clone()
            barrier.wait()
            total = torch.stack(slots).sum(dim=0)  # type: ignore[arg-type]
            barrier.wait()  # nobody overwrites a slot before everyone has summed
            return total

        return reduce_fn

    def worker(rank: int) -> None:
        try:
            results[rank] = fn(shards[rank], make_reduce_fn(rank))
        except Exception as err:  # noqa: BLE001 - re-raised in the main thread below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def split_rows(cuts: Sequence[int], *tensors: Tensor) -> list[tuple[Tensor, ...]]:
    """Split every tensor along dim 0 at the sorted positions ``cuts`` (empty shards allowed)."""
    bounds = [0, *sorted(cuts), tensors[0].shape[0]]
    return [tuple(t[lo:hi] for t in tensors) for lo, hi in itertools.pairwise(bounds)]


def random_batch(
    seed: int, batch: int, length: int, *, prefix_mask: bool = True, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor, torch.Generator]:
    """Random (B, T) values and a 0/1 mask: right-padded prefixes (some possibly empty) or arbitrary holes."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, generator=gen, dtype=dtype)
    if prefix_mask:
        lengths = torch.randint(0, length + 1, (batch,), generator=gen)
        mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    else:
        mask = torch.rand(batch, length, generator=gen) < 0.7
    return x, mask, gen


def fill_masked(x: Tensor, mask: Tensor, garbage: float) -> Tensor:
    """``x`` with every masked-out position replaced by ``garbage``."""
    return torch.where(mask.bool(), x, torch.full_like(x, garbage))


def append_garbage(x: Tensor, mask: Tensor, pad: int, garbage: float) -> tuple[Tensor, Tensor]:
    """Append ``pad`` masked-out columns holding ``garbage`` to ``x`` and ``mask``."""
    x_pad = torch.cat([x, torch.full((*x.shape[:-1], pad), garbage, dtype=x.dtype)], dim=-1)
    mask_pad = torch.cat([mask, torch.zeros((*mask.shape[:-1], pad), dtype=mask.dtype)], dim=-1)
    return x_pad, mask_pad


def cpu_kwargs(output_dir, **overrides):
    """A few fast CPU steps: fp32, no checkpointing, no logging backends, nothing saved unless asked."""
    kwargs = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        learning_rate=3e-3,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=4,
        max_steps=2,
        seed=0,
    )
    kwargs.update(overrides)
    return kwargs


def logged(trainer, name):
    """Every logged value of a metric, in step order."""
    return [entry[name] for entry in trainer.state.log_history if name in entry]


def ppo_max_cpu_kwargs(output_dir, **overrides):
    """The trainer tests' CPU settings, with PPO-max's: one sample per prompt, a critic as fast as the policy."""
    return cpu_kwargs(output_dir, **{"critic_learning_rate": 3e-3, "num_generations": 1, **overrides})


# --- the trick pipeline on hand-made rollouts -------------------------------------------------------------------------


def run_pipeline(args, rollout, registry, ctx=None, default_estimator=None):
    pipeline = TrickPipeline.from_args(args, registry, default_estimator=default_estimator)
    return pipeline, pipeline.process(rollout, ctx or TrickContext())


def one_token_rollout(rewards, log_ratio, num_generations=2):
    """A rollout whose completions are one token long, with log π - log π_ref = log_ratio per completion."""
    n = len(rewards)
    return Rollout(
        rewards=torch.tensor(rewards, dtype=torch.float64),
        num_generations=num_generations,
        completion_mask=torch.ones(n, 1),
        logprobs=torch.tensor(log_ratio, dtype=torch.float64).unsqueeze(1),
        ref_logprobs=torch.zeros(n, 1, dtype=torch.float64),
    )


def model_with_short_completions(model_dir, tmp_path) -> str:
    """A copy of the tiny model whose generation also ends at token 46, which it often emits: completions of one
    batch then hold different numbers of tokens."""
    target = Path(tmp_path) / "model"
    shutil.copytree(model_dir, target)
    config = json.loads((target / "generation_config.json").read_text())
    config["eos_token_id"] = [config["eos_token_id"], 46]
    (target / "generation_config.json").write_text(json.dumps(config))
    return str(target)
