"""Profile training steps of benchmark trainers and attribute the time spent in trl_basics' own code.

Each trainer named on the command line is built exactly as in ``benchmarks/run.py`` (same model, geometry and
settings), trained for ``--warmup`` steps, then profiled with cProfile over ``--steps`` steps. For each it prints

- the CPU time per profiled step (cProfile slows Python code down, so compare trainers with each other, not with
  ``run.py``'s numbers);
- the time attributable to trl_basics per step: the self time of every function in ``trl_basics`` (the kit, which
  plays the user's reward function, excluded) plus the whole time of every call those functions make into torch,
  accelerate or other libraries; calls back into the TRL parent (``super()...``) are the parent's work and are not
  counted. Model passes that trl_basics itself makes (PPO-max's critic, REINFORCE++'s sampling log-probs) are listed
  separately, because they are model work rather than overhead;
- the trl_basics functions with the most attributed time, and (with ``--top``) the whole profile by self time.

    OMP_NUM_THREADS=1 python benchmarks/profile_step.py trl_rloo rloo rloo_tricks
    OMP_NUM_THREADS=1 python benchmarks/profile_step.py trl_grpo reinforce_pp ppo_max --top 25
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MODELS, TRAINERS, build_trainer, common_kwargs

# Functions of trl_basics that run model passes themselves: model work, reported apart from the overhead. The value
# is what the pass is; the key's inclusive time is the pass's cost.
MODEL_PASSES = {
    "sampling_logprobs": "no-grad forward of the sampling policy (KL in the reward; on-policy GRPO skips it)",
    "Critic.values": "critic: no-grad forward for V_old",
    "_critic_update": "critic: forward + backward of the clipped value loss, AdamW step",
}
# trl_basics functions inside those passes (their attributed time is the passes' model work, not overhead).
MODEL_PASS_FUNCTIONS = {"sampling_logprobs", "_critic_update", "critic_values", "clipped_value_loss", "_optimizer_step"}
# A pass named Class.method is the method of that name in the module defining the class (``ppo_max/critic.py``).
PASS_MODULES = {"Critic": "/ppo_max/critic.py"}


def _is_ours(filename: str) -> bool:
    path = filename.replace(os.sep, "/")
    return "/trl_basics/" in path and "/trl_basics/kit/" not in path


def _is_parent(filename: str) -> bool:
    """TRL, transformers and the kit (the user's reward function): work that is not trl_basics' overhead."""
    path = filename.replace(os.sep, "/")
    return any(part in path for part in ("/trl/", "/transformers/", "/trl_basics/kit/"))


def _where(func: tuple) -> str:
    filename, line, name = func
    path = filename.replace(os.sep, "/")
    return f"{path.split('/trl_basics/', 1)[-1]}:{line}({name})"


def attribute(stats: pstats.Stats) -> tuple[float, dict[str, float]]:
    """Seconds attributable to trl_basics in total and per trl_basics function (see the module docstring).

    A library function that calls back into trl_basics (``torch.no_grad``'s decorator around one of our methods) is
    not counted as a whole: what runs inside it is attributed on its own.
    """
    reentrant = {caller for func, value in stats.stats.items() if _is_ours(func[0]) for caller in value[4]}
    per_function: dict[str, float] = {}
    for func, (_, _, tottime, _, callers) in stats.stats.items():
        filename = func[0]
        if _is_ours(filename):
            per_function[_where(func)] = per_function.get(_where(func), 0.0) + tottime
            continue
        if _is_parent(filename) or func in reentrant:
            continue
        for caller, edge in callers.items():
            if _is_ours(caller[0]):
                per_function[_where(caller)] = per_function.get(_where(caller), 0.0) + edge[3]
    return sum(per_function.values()), per_function


def sync_owner(frame) -> str | None:
    """Who a host read made from ``frame`` is charged to: the innermost frame that belongs to trl_basics (its own
    code, the kit excluded) gives ``"trl_basics"``, one in a library (TRL, transformers, accelerate, ...) ``"other"``;
    ``None`` for reads inside ``torch.optim`` (a non-fused AdamW reads its step counters, CPU tensors even when
    training on a GPU)."""
    while frame is not None:
        name = frame.f_code.co_filename.replace(os.sep, "/")
        if "/torch/optim/" in name:
            return None
        if _is_ours(name):
            return "trl_basics"
        if _is_parent(name) or "/accelerate/" in name:
            return "other"
        frame = frame.f_back
    return "other"


def sync_counter():
    """A dispatch mode counting the ops that copy tensor data to the host (``item``/``float``/``bool`` of a tensor,
    boolean-mask indexing; ``tolist`` is not seen: add [`count_tolist`]): on a GPU each waits for the queued kernels.
    Each is charged as [`sync_owner`] says; reads inside ``torch.optim`` are not counted."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    reads = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default, torch.ops.aten.item.default}

    class CountSyncs(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in reads:
                owner = sync_owner(sys._getframe(1))
                if owner is not None:
                    self.counts[owner] += 1
            return func(*args, **(kwargs or {}))

    mode = CountSyncs()
    mode.counts = {"trl_basics": 0, "other": 0}
    return mode


class count_tolist:
    """Inside the block, every ``Tensor.tolist()`` adds one read to ``counter.counts`` (charged as [`sync_owner`]
    says): ``tolist`` copies to the host without passing the dispatcher, so [`sync_counter`]'s mode alone misses it.
    Patches ``torch.Tensor.tolist`` for the whole process while open; open it in one thread at a time."""

    def __init__(self, counter) -> None:
        self.counter = counter

    def __enter__(self):
        import torch

        self.original = original = torch.Tensor.tolist
        counts = self.counter.counts

        def tolist(tensor):
            owner = sync_owner(sys._getframe(1))
            if owner is not None:
                counts[owner] += 1
            return original(tensor)

        torch.Tensor.tolist = tolist
        return self

    def __exit__(self, *exc) -> None:
        import torch

        torch.Tensor.tolist = self.original


def _name(where: str) -> str:
    return where.rsplit("(", 1)[-1].rstrip(")")


def inclusive(stats: pstats.Stats, name: str) -> float:
    owner, _, name = name.rpartition(".")
    module = PASS_MODULES.get(owner, "")
    return sum(
        v[3]
        for func, v in stats.stats.items()
        if func[2] == name and _is_ours(func[0]) and func[0].replace(os.sep, "/").endswith(module or func[0])
    )


def profile_trainer(name: str, args: argparse.Namespace, model_dir: str) -> None:
    import torch
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    from trl_basics.kit.tasks import get_task

    torch.set_num_threads(1)
    task = get_task(args.task)
    steps = args.warmup + args.steps
    profiler = cProfile.Profile()
    clock = {}

    counter = sync_counter()
    tolists = count_tolist(counter)

    class Window(TrainerCallback):
        def on_step_begin(self, a, state, control, **k):
            if state.global_step < args.warmup:
                counter.__enter__()
                tolists.__enter__()
            if state.global_step == args.warmup:
                clock["start"] = time.process_time()
                profiler.enable()

        def on_step_end(self, a, state, control, **k):
            if state.global_step <= args.warmup:
                tolists.__exit__(None, None, None)
                counter.__exit__(None, None, None)
            if state.global_step == steps:
                profiler.disable()
                clock["end"] = time.process_time()

    with tempfile.TemporaryDirectory() as tmp:
        common = common_kwargs(tmp, args.batch_size, args.completion_length, args.num_generations, steps)
        dataset = task.make_dataset(args.batch_size // args.num_generations * steps, seed=0)
        trainer = build_trainer(name, common, model_dir, dataset, task.reward_func)
        trainer.remove_callback(PrinterCallback)  # the log dicts on stdout
        trainer.add_callback(Window())
        trainer.train()
    stats = pstats.Stats(profiler)
    per_step = (clock["end"] - clock["start"]) / args.steps
    total, per_function = attribute(stats)
    passes = {fn: inclusive(stats, fn) / args.steps for fn in MODEL_PASSES if inclusive(stats, fn) > 0}
    in_passes = sum(t for where, t in per_function.items() if _name(where) in MODEL_PASS_FUNCTIONS) / args.steps
    overhead = total / args.steps - in_passes
    print(f"\n## {TRAINERS[name].label} ({name})")
    print(f"CPU time per profiled step (optimizer step included): {per_step * 1e3:.1f} ms")
    print(f"model passes run by trl_basics itself: {sum(passes.values()) * 1e3:.1f} ms/step")
    for fn, seconds in passes.items():
        print(f"  {seconds * 1e3:7.1f}  {fn}: {MODEL_PASSES[fn]}")
    print(
        f"overhead of trl_basics' own code (everything else attributable to it): {overhead * 1e3:.2f} ms/step "
        f"({100 * overhead / per_step:.1f}% of the step)"
    )
    syncs = {k: v / args.warmup for k, v in counter.counts.items()}
    print(
        "tensor reads to the host per step (item/float/bool/tolist of a tensor, boolean masks; each a host-device "
        f"sync on a GPU; counted in the warm-up steps): trl_basics {syncs['trl_basics']:.0f}, "
        f"TRL and the rest {syncs['other']:.0f}"
    )
    print("top trl_basics functions (self time + direct calls into libraries), ms/step:")
    ranked = sorted(
        ((where, t) for where, t in per_function.items() if _name(where) not in MODEL_PASS_FUNCTIONS),
        key=lambda kv: -kv[1],
    )
    for fn, seconds in ranked[: args.functions]:
        print(f"  {seconds / args.steps * 1e3:7.2f}  {fn}")
    if args.top:
        stats.sort_stats("tottime").print_stats(args.top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trainers", nargs="+", choices=list(TRAINERS))
    parser.add_argument("--model", choices=list(MODELS), default="small")
    parser.add_argument("--task", default="token_kind")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--completion-length", type=int, default=16)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="Profiled steps.")
    parser.add_argument("--warmup", type=int, default=2, help="Steps before profiling starts.")
    parser.add_argument("--functions", type=int, default=12, help="trl_basics functions listed per trainer.")
    parser.add_argument("--top", type=int, default=0, help="Also print the whole profile's top N by self time.")
    args = parser.parse_args()

    from trl_basics.kit.model import save_tiny_model

    hidden, layers, heads, intermediate = MODELS[args.model]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(
            save_tiny_model(
                Path(tmp) / "model", hidden_size=hidden, num_layers=layers, num_heads=heads,
                intermediate_size=intermediate,
            )
        )  # fmt: skip
        for name in args.trainers:
            profile_trainer(name, args, model_dir)


if __name__ == "__main__":
    main()
