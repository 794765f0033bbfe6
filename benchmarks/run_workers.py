"""The child processes of ``run.py``: memory (one trainer in a fresh process) and timing (every trainer and the
unit costs of the model's own work in one process, one optimizer step each in turn). Each is started as
``run.py --worker memory|timing ...`` and writes its result as JSON."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time

from common import UNIT_NAMES, Baton, build_trainer, common_kwargs, instrument, parameter_counts


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def step_summary(trainer, cpu_times: list[float], steps: int, warmup: int) -> dict:
    history = trainer.state.log_history
    step_times = [e["step_time"] for e in history if "step_time" in e]
    lengths = [e["completions/mean_length"] for e in history if "completions/mean_length" in e]
    if len(step_times) != steps or len(cpu_times) != steps:
        raise RuntimeError(f"expected {steps} step times, got {len(step_times)} logged and {len(cpu_times)} timed")
    return {
        "step_time_s": statistics.median(step_times[warmup:]),
        "step_cpu_s": statistics.median(cpu_times[warmup:]),
        "step_times_s": step_times,
        "step_cpu_times_s": cpu_times,
        "mean_completion_length": statistics.mean(lengths) if lengths else float("nan"),
        "params_held": parameter_counts(trainer)[0],
        "params_trained": parameter_counts(trainer)[1],
    }


# --- worker: memory (one trainer, fresh process) ---------------------------------------------------------------------


def worker_memory(args: argparse.Namespace) -> dict:
    import resource

    import torch

    torch.set_num_threads(1)
    import trl  # noqa: F401  (imported before the baseline RSS is read)

    import trl_basics.ppo_max  # noqa: F401
    from trl_basics.kit.tasks import get_task

    task = get_task(args.task)
    dataset = task.make_dataset(args.batch_size // args.num_generations * args.steps, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        common = common_kwargs(tmp, args.batch_size, args.completion_length, args.num_generations, args.steps)
        rss_before = rss_mb()
        trainer = build_trainer(args.trainer, common, args.model_dir, dataset, task.reward_func)
        rss_built = rss_mb()
        cpu_times = instrument(trainer, time.process_time)
        trainer.train()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result = step_summary(trainer, cpu_times, args.steps, args.warmup)
    return {**result, "rss_before_mb": rss_before, "rss_built_mb": rss_built, "peak_rss_in_child_mb": peak}


# --- worker: timing (every trainer in one process, in turns) ---------------------------------------------------------


def worker_timing(args: argparse.Namespace) -> dict:
    """All trainers and the unit costs at one geometry, one optimizer step each in turn."""
    import torch
    from transformers import TrainerCallback

    torch.set_num_threads(1)
    from trl_basics.kit.tasks import get_task

    task = get_task(args.task)
    names = args.trainers.split(",")
    baton = Baton([*names, "units"])
    ready = threading.Event()
    results: dict = {}
    errors: list[BaseException] = []

    class TakeTurns(TrainerCallback):
        def __init__(self, name: str) -> None:
            self.name, self.holding, self.cpu, self.started = name, False, [], None

        def on_step_begin(self, *a, **k):
            if self.holding:  # everything since our last turn began (optimizer step, logging, next batch) was ours
                self.cpu.append(time.thread_time() - self.started)
                baton.release(self.name)
            ready.set()
            baton.acquire(self.name)
            self.holding, self.started = True, time.thread_time()

        def on_train_end(self, *a, **k):
            if self.holding:
                self.cpu.append(time.thread_time() - self.started)
            self.holding = False
            baton.leave(self.name)

    def run_trainer(name: str, tmp: str) -> None:
        try:
            common = common_kwargs(tmp, args.batch_size, args.completion_length, args.num_generations, args.steps)
            dataset = task.make_dataset(args.batch_size // args.num_generations * args.steps, seed=0)
            trainer = build_trainer(name, common, args.model_dir, dataset, task.reward_func)
            cpu_times = instrument(trainer, time.thread_time)
            turns = TakeTurns(name)
            trainer.add_callback(turns)
            trainer.train()
            summary = step_summary(trainer, cpu_times, args.steps, args.warmup)
            summary["turn_cpu_s"] = statistics.median(turns.cpu[args.warmup :])
            results[name] = summary
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)
            ready.set()
        finally:
            baton.leave(name)

    def run_units() -> None:
        try:
            step = unit_costs(args, task)
            times: dict[str, list[float]] = {unit: [] for unit in UNIT_NAMES}
            ready.set()  # set up: the baton may open
            # One turn per round like the trainers; the timed iterations are spread evenly over the rounds, so the
            # unit costs see the same phases of the machine as the trainers' steps.
            stride = max(1, (args.steps - args.warmup) // max(1, args.unit_iters))
            for index in range(args.steps):
                baton.acquire("units")
                timed = index >= args.warmup and (index - args.warmup) % stride == 0
                if index < args.warmup or (timed and len(times["gen"]) < args.unit_iters):
                    for unit, seconds in step().items():
                        if timed:
                            times[unit].append(seconds)
                baton.release("units")
            results["units"] = times
        except BaseException as err:  # noqa: BLE001
            errors.append(err)
            ready.set()
        finally:
            baton.leave("units")

    with tempfile.TemporaryDirectory() as tmp:
        threads = []
        # Built and set up one at a time: each thread is started once the previous one waits for its first turn.
        for name in names:
            ready.clear()
            thread = threading.Thread(target=run_trainer, args=(name, f"{tmp}/{name}"), name=name)
            thread.start()
            threads.append(thread)
            ready.wait()
        ready.clear()
        thread = threading.Thread(target=run_units, name="units")
        thread.start()
        threads.append(thread)
        ready.wait()
        baton.open()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return results


def unit_costs(args: argparse.Namespace, task):
    """A function that runs each unit of the model's work once and returns its thread CPU seconds."""
    import copy

    import torch
    import trl

    from trl_basics.ppo_max.critic import critic_values, load_value_model

    T = args.completion_length
    with tempfile.TemporaryDirectory() as tmp:
        # TRL's own generation settings, tokenizer and log-prob function: the units run the very same model code.
        common = common_kwargs(tmp, args.batch_size, T, args.num_generations, args.steps)
        reference = trl.RLOOTrainer(
            model=args.model_dir, reward_funcs=task.reward_func, train_dataset=task.make_dataset(8, seed=0),
            args=trl.RLOOConfig(**common, beta=0.0),
        )  # fmt: skip
    model, tokenizer = reference.model, reference.processing_class
    model.train()
    critic = load_value_model(args.model_dir)
    critic.train()
    # Fused AdamW, as the Trainer builds the policy's by default (`optim="adamw_torch_fused"`): the ideal uses the
    # fastest implementation for the critic's step too.
    policy_opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=1e-6, fused=True)
    dataset = task.make_dataset(args.batch_size // args.num_generations, seed=0)
    prompts = [p for p in dataset["prompt"] for _ in range(args.num_generations)]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    prompt_ids, prompt_mask = encoded["input_ids"], encoded["attention_mask"]
    generation_config = copy.deepcopy(reference.generation_config)
    state = {}

    def gen():
        with torch.no_grad():
            state["sequences"] = model.generate(
                input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=generation_config
            )
        if state["sequences"].size(1) != prompt_ids.size(1) + T:
            raise RuntimeError("completions are not exactly completion_length tokens")

    gen()
    attention_mask = torch.cat([prompt_mask, prompt_mask.new_ones(prompt_ids.size(0), T)], dim=1)

    def fwd():
        with torch.no_grad():
            reference._get_per_token_logps_and_entropies(model, state["sequences"], attention_mask, T)

    def fb():
        logps, entropies, _ = reference._get_per_token_logps_and_entropies(
            model, state["sequences"], attention_mask, T, compute_entropy=True
        )
        (-(logps.mean()) - 0.0 * entropies.mean()).backward()
        model.zero_grad(set_to_none=True)

    def opt():
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        policy_opt.step()
        model.zero_grad(set_to_none=True)

    def cfwd():
        with torch.no_grad():
            critic_values(critic, state["sequences"], attention_mask, T)

    def cfb():
        critic_values(critic, state["sequences"], attention_mask, T).square().mean().backward()
        critic.zero_grad(set_to_none=True)

    def copt():
        for p in critic.parameters():
            p.grad = torch.zeros_like(p)
        critic_opt.step()
        critic.zero_grad(set_to_none=True)

    units = {"gen": gen, "fwd": fwd, "fb": fb, "opt": opt, "cfwd": cfwd, "cfb": cfb, "copt": copt}

    def step() -> dict[str, float]:
        out = {}
        for name, fn in units.items():
            start = time.thread_time()
            fn()
            out[name] = time.thread_time() - start
        return out

    return step
