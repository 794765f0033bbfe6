"""Speed and memory of the trl_basics trainers against their TRL parents and against each other, in one run.

Identical geometry for every trainer: the same saved kit model, the same prompts and seed, the same number of
completions per step (``num_generations`` per prompt for every trainer, PPO-max included), and every completion forced
to exactly the same number of tokens (``min_new_tokens`` = ``max_completion_length``), so each step does the same model
work whatever the policy samples. fp32, no gradient checkpointing, one thread, one on-policy update per generation
round.

Two kinds of child process, interleaved over ``--repeats`` repeats:

- **timing** (one per geometry and repeat): every trainer is built in the same process and they train *in turns, one
  optimizer step each* (a thread per trainer, a baton passed at every step, the order rotated per repeat), together
  with a unit micro-benchmark of the model's own work (``generate``, a no-grad forward with log-probs, a
  forward+backward, the critic's passes, AdamW steps) that takes its turn in the same rotation. Background load on a
  shared machine therefore falls on every trainer alike, step by step. Per trainer: TRL's logged ``step_time``
  (wall clock of ``training_step``: generation, rewards, log-prob and value passes, loss, backward; the policy's
  optimizer step is outside it, PPO-max's critic step inside) and the thread's CPU time over the same interval.
- **memory** (one per trainer and repeat, 1x geometry): a fresh process that builds one trainer and trains a few
  steps; its RSS high-water mark minus its RSS right after the trainer was built (activations, optimizer states,
  generation caches: what training adds) and minus its RSS just before it was built (adds the weights). The parent
  reads the peak with ``os.wait4``. Its step times are reported too, as the one-trainer-per-process cross-check.

Per run the first ``--warmup`` steps are dropped and the median of the rest kept; tables show medians over repeats.
From the unit costs, the ideal step time of each algorithm is ``t_gen + n_fwd·t_fwd + n_fb·t_fb`` (+ the critic's
passes and AdamW step for PPO-max), with the pass counts in ``TRAINERS``; see ``docs/benchmarks.md``.

    OMP_NUM_THREADS=1 python benchmarks/run.py --update-docs docs/benchmarks.md   # full run (~20 min, quiet 2 cores)
    OMP_NUM_THREADS=1 python benchmarks/run.py --quick --output /tmp/bench.md    # smoke test, under a minute
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCS_MARKERS = ("<!-- benchmark-table:start -->", "<!-- benchmark-table:end -->")

# name: (hidden_size, num_layers, num_heads, intermediate_size) of the kit model (the kit's 339-token vocabulary)
MODELS = {
    "kit-tiny": (64, 2, 4, 128),
    "small": (256, 4, 4, 1024),
}
UNIT_NAMES = ("gen", "fwd", "fb", "opt", "cfwd", "cfb", "copt")


@dataclass(frozen=True)
class TrainerSpec:
    label: str
    description: str
    passes: dict  # passes per step the algorithm must do, by unit name (see ideal_step_time)


# Passes per generation round, on-policy with one micro-batch: no-grad policy/reference forwards ("fwd"), policy
# forward+backward ("fb"), and for PPO-max the critic's no-grad forward ("cfwd"), forward+backward ("cfb") and AdamW
# step ("copt", inside TRL's step_time because PPO-max steps the critic inside the loss). The policy's own optimizer
# step is outside TRL's step_time for every trainer.
TRAINERS = {
    "trl_rloo": TrainerSpec(
        "trl.RLOOTrainer",
        "TRL's RLOO, beta=0.05 (k1 summed over the sequence, in the reward): sampling-policy and reference log-probs",
        {"fwd": 2, "fb": 1},
    ),
    "rloo": TrainerSpec(
        "tb.RLOOTrainer",
        "trl_basics RLOO with no trick flag (beta=0.05, exactly TRL's algorithm)",
        {"fwd": 2, "fb": 1},
    ),
    "rloo_tricks": TrainerSpec(
        "tb.RLOOTrainer + tricks",
        "trl_basics RLOO with every applicable trick: adaptive k1 token-level KL in the reward (kl_coef=0.05, "
        "kl_target, kl_clamp; TRL's beta=0), running reward normalization + reward clip, the `length_penalty` plugin, "
        "global advantage whitening, advantage clip, entropy bonus; token-level clipped loss",
        {"fwd": 2, "fb": 1},
    ),
    "trl_grpo": TrainerSpec(
        "trl.GRPOTrainer",
        "TRL's GRPO, loss_type='dapo', beta=0.04 (k3 KL in the loss): reference log-probs only (on-policy, the loss "
        "reuses its own detached log-probs)",
        {"fwd": 1, "fb": 1},
    ),
    "reinforce_pp": TrainerSpec(
        "tb.ReinforcePlusPlusTrainer",
        "trl_basics REINFORCE++, loss_type='dapo', beta=0, k1 token-level KL in the reward (kl_coef=0.04), global "
        "whitening: the KL needs the sampling policy's log-probs before the update, one more no-grad forward than "
        "GRPO",
        {"fwd": 2, "fb": 1},
    ),
    "ppo_max": TrainerSpec(
        "tb.PPOMaxTrainer",
        "trl_basics PPO-max defaults (k1 token KL 0.05 in the reward, running reward norm + clip 0.3, GAE, value "
        "clip 0.2), critic initialised from the policy (critic_init='policy')",
        {"fwd": 2, "fb": 1, "cfwd": 1, "cfb": 1, "copt": 1},
    ),
}


# --- trainers --------------------------------------------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _common_kwargs(output_dir: str, batch_size: int, completion_length: int, num_generations: int, steps: int) -> dict:
    return {
        "output_dir": output_dir, "use_cpu": True, "bf16": False, "gradient_checkpointing": False,
        "report_to": "none", "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True, "learning_rate": 1e-4,
        "lr_scheduler_type": "constant", "per_device_train_batch_size": batch_size,
        "num_generations": num_generations, "max_completion_length": completion_length, "max_steps": steps,
        "seed": 0, "temperature": 1.0, "top_p": 1.0, "generation_kwargs": {"min_new_tokens": completion_length},
        "dataloader_num_workers": 0,
    }  # fmt: skip


def build_trainer(name: str, common: dict, model_dir: str, dataset, reward_func, **trainer_kwargs):
    """The trainer ``name`` with the shared settings ``common`` (torch is imported in the children only).

    ``trainer_kwargs`` go to the trainer's constructor as they are (e.g. ``processing_class``).
    """
    import trl

    import trl_basics as tb

    kwargs = {"model": model_dir, "reward_funcs": reward_func, "train_dataset": dataset, **trainer_kwargs}
    if name == "trl_rloo":
        return trl.RLOOTrainer(args=trl.RLOOConfig(**common, beta=0.05), **kwargs)
    if name == "rloo":
        return tb.RLOOTrainer(args=tb.RLOOConfig(**common, beta=0.05), **kwargs)
    if name == "rloo_tricks":
        config = tb.RLOOConfig(
            **common, beta=0.0, kl_coef=0.05, kl_estimator="k1", kl_placement="token_reward", kl_target=6.0,
            kl_clamp=10.0, reward_norm="running", reward_clip=5.0, whiten_advantages=True, advantage_clip=5.0,
            entropy_bonus_coef=0.01, tricks=["length_penalty"], trick_kwargs={"length_penalty": {"coef": 0.01}},
        )  # fmt: skip
        return tb.RLOOTrainer(args=config, **kwargs)
    if name == "trl_grpo":
        return trl.GRPOTrainer(args=trl.GRPOConfig(**common, loss_type="dapo", beta=0.04), **kwargs)
    if name == "reinforce_pp":
        config = tb.ReinforcePlusPlusConfig(**common, loss_type="dapo", beta=0.0, kl_coef=0.04)
        return tb.ReinforcePlusPlusTrainer(args=config, **kwargs)
    if name == "ppo_max":
        config = tb.PPOMaxConfig(**common, critic_init="policy", critic_learning_rate=1e-4)
        return tb.PPOMaxTrainer(args=config, **kwargs)
    raise ValueError(f"unknown trainer {name!r}")


def _params(trainer) -> tuple[int, int]:
    """Parameters held (policy, reference, critic) and trained (policy, critic)."""
    trained = [m for m in (trainer.model, getattr(trainer, "critic", None)) if m is not None]
    held = [*trained, *([trainer.ref_model] if getattr(trainer, "ref_model", None) is not None else [])]

    def count(models: list, only_trainable: bool) -> int:
        return sum(p.numel() for m in models for p in m.parameters() if p.requires_grad or not only_trainable)

    return count(held, False), count(trained, True)


def _instrument(trainer, clock) -> list[float]:
    """Record ``clock()`` over every ``training_step`` (the interval of TRL's ``step_time``)."""
    times: list[float] = []
    inner = trainer.training_step

    def timed_training_step(*args, **kwargs):
        start = clock()
        out = inner(*args, **kwargs)
        times.append(clock() - start)
        return out

    trainer.training_step = timed_training_step
    return times


def _step_summary(trainer, cpu_times: list[float], steps: int, warmup: int) -> dict:
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
        "params_held": _params(trainer)[0],
        "params_trained": _params(trainer)[1],
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
        common = _common_kwargs(tmp, args.batch_size, args.completion_length, args.num_generations, args.steps)
        rss_before = _rss_mb()
        trainer = build_trainer(args.trainer, common, args.model_dir, dataset, task.reward_func)
        rss_built = _rss_mb()
        cpu_times = _instrument(trainer, time.process_time)
        trainer.train()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result = _step_summary(trainer, cpu_times, args.steps, args.warmup)
    return {**result, "rss_before_mb": rss_before, "rss_built_mb": rss_built, "peak_rss_in_child_mb": peak}


# --- worker: timing (every trainer in one process, in turns) ---------------------------------------------------------


class Baton:
    """Turn-taking between threads in a fixed ring: only the holder runs; ``leave`` drops out of the ring."""

    def __init__(self, names: list[str]) -> None:
        self.order = list(names)
        self.active = set(names)
        self.turn: int | None = None  # closed until ``open``: nobody runs while the others are still being set up
        self.cond = threading.Condition()

    def open(self) -> None:
        with self.cond:
            self.turn = -1
            self._advance()
            self.cond.notify_all()

    def acquire(self, name: str) -> None:
        with self.cond:
            while self.turn is None or self.order[self.turn] != name:
                self.cond.wait()

    def release(self, name: str) -> None:
        with self.cond:
            if self.turn is not None and self.order[self.turn] == name:
                self._advance()
            self.cond.notify_all()

    def leave(self, name: str) -> None:
        with self.cond:
            self.active.discard(name)
            if self.turn is not None and self.order[self.turn] == name:
                self._advance()
            self.cond.notify_all()

    def _advance(self) -> None:
        for offset in range(1, len(self.order) + 1):
            candidate = (self.turn + offset) % len(self.order)
            if self.order[candidate] in self.active:
                self.turn = candidate
                return


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
            common = _common_kwargs(tmp, args.batch_size, args.completion_length, args.num_generations, args.steps)
            dataset = task.make_dataset(args.batch_size // args.num_generations * args.steps, seed=0)
            trainer = build_trainer(name, common, args.model_dir, dataset, task.reward_func)
            cpu_times = _instrument(trainer, time.thread_time)
            turns = TakeTurns(name)
            trainer.add_callback(turns)
            trainer.train()
            summary = _step_summary(trainer, cpu_times, args.steps, args.warmup)
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
        common = _common_kwargs(tmp, args.batch_size, T, args.num_generations, args.steps)
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


# --- the parent: interleaving and aggregation ------------------------------------------------------------------------


def run_child(argv: list[str], timeout: float, script: str | os.PathLike[str] | None = None) -> tuple[dict, float]:
    """Run ``script`` (this one by default) as a worker; return its JSON result and its peak RSS in MB
    (``os.wait4``). The worker writes its result as JSON to the path given after ``--result``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        result_path = tmp.name
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(
            [sys.executable, str(Path(script or __file__).resolve()), *argv, "--result", result_path],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                _, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.05)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            log.seek(0)
            tail = "".join(log.readlines()[-30:])
            raise RuntimeError(f"benchmark child {shlex.join(argv)} failed (exit code {code}):\n{tail}")
    with open(result_path) as f:
        result = json.load(f)
    os.unlink(result_path)
    return result, usage.ru_maxrss / 1024


def geometries(args: argparse.Namespace) -> list[tuple[int, int, str]]:
    """(batch size, completion length, label): 1x first, then each scale along T, then along B."""
    out = [(args.batch_size, args.completion_length, "1x")]
    scales = [scale for scale in args.scales if scale != 1]
    out += [(args.batch_size, args.completion_length * scale, f"T x{scale}") for scale in scales]
    out += [(args.batch_size * scale, args.completion_length, f"B x{scale}") for scale in scales]
    return out


def run_all(args: argparse.Namespace) -> dict:
    from trl_basics.kit.model import save_tiny_model

    hidden, layers, heads, intermediate = MODELS[args.model]
    geos = geometries(args)
    timing: list[dict] = []
    memory: list[dict] = []
    started = time.perf_counter()
    total = args.repeats * (len(geos) + (len(args.trainers) if args.memory else 0))
    done = 0

    def progress(text: str, t0: float) -> None:
        print(
            f"[{done}/{total} {time.perf_counter() - started:5.0f}s] {text} ({time.perf_counter() - t0:.0f}s)",
            file=sys.stderr, flush=True,
        )  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(
            save_tiny_model(
                Path(tmp) / "model", hidden_size=hidden, num_layers=layers, num_heads=heads,
                intermediate_size=intermediate,
            )
        )  # fmt: skip
        for repeat in range(args.repeats):
            shift = repeat % len(args.trainers)
            order = [*args.trainers[shift:], *args.trainers[:shift]]
            common = [
                "--model-dir", model_dir, "--task", args.task, "--num-generations", str(args.num_generations),
                "--warmup", str(args.warmup), "--unit-iters", str(args.unit_iters),
            ]  # fmt: skip
            # Memory runs between the timing runs, so that both kinds see the same phases of the machine.
            memory_order = order if args.memory else []
            slots = max(len(geos), len(memory_order))
            for slot in range(slots):
                if slot < len(geos):
                    batch, length, label = geos[slot]
                    t0 = time.perf_counter()
                    child = [
                        "--worker", "timing", "--trainers", ",".join(order), "--batch-size", str(batch),
                        "--completion-length", str(length), "--steps", str(_timing_steps(args, slot)), *common,
                    ]  # fmt: skip
                    result, _ = run_child(child, args.timeout)
                    done += 1
                    units = result.pop("units")
                    for name, summary in result.items():
                        timing.append({"repeat": repeat, "geometry": label, "batch_size": batch,
                                       "completion_length": length, "trainer": name, **summary})  # fmt: skip
                    timing.append({"repeat": repeat, "geometry": label, "batch_size": batch,
                                   "completion_length": length, "trainer": "units", **units})  # fmt: skip
                    progress(
                        f"rep {repeat} timing {label:5s} "
                        + " ".join(f"{n} {result[n]['step_cpu_s'] * 1e3:.0f}" for n in order) + " ms CPU",
                        t0,
                    )  # fmt: skip
                if slot < len(memory_order):
                    name = memory_order[slot]
                    t0 = time.perf_counter()
                    child = [
                        "--worker", "memory", "--trainer", name, "--batch-size", str(args.batch_size),
                        "--completion-length", str(args.completion_length), "--steps", str(args.memory_steps),
                        *common,
                    ]  # fmt: skip
                    result, peak = run_child(child, args.timeout)
                    done += 1
                    result.update(repeat=repeat, trainer=name, peak_rss_mb=peak)
                    result["peak_over_built_mb"] = peak - result["rss_built_mb"]
                    result["peak_over_before_mb"] = peak - result["rss_before_mb"]
                    memory.append(result)
                    progress(
                        f"rep {repeat} memory {name:12s} peak {peak:.0f} MB, +{result['peak_over_built_mb']:.0f} MB "
                        f"over built, +{result['peak_over_before_mb']:.0f} MB over pre-build",
                        t0,
                    )  # fmt: skip
    return {
        "timing": timing, "memory": memory, "wall_s": time.perf_counter() - started,
        "finished": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": _machine(), "versions": _versions(),
    }  # fmt: skip


def _median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def ideal_step_time(units: dict, passes: dict) -> float:
    return units["gen"] + sum(count * units[name] for name, count in passes.items())


def _pooled(values) -> list[float]:
    """Unit-cost entries are lists of timed iterations (or, in older result files, one median)."""
    out: list[float] = []
    for value in values:
        out.extend(value if isinstance(value, list) else [value])
    return out


def summarize(args: argparse.Namespace, results: dict) -> dict:
    """Per geometry and trainer: step times pooled over the timed steps of every repeat (median and fastest)."""
    cell: dict = {}
    kept = slice(args.warmup, None)
    for _, _, geo in geometries(args):
        rows = [r for r in results["timing"] if r["geometry"] == geo]
        units = {k: _median(_pooled(r[k] for r in rows if r["trainer"] == "units")) for k in UNIT_NAMES}
        cell[geo, "units"] = units
        for name in args.trainers:
            mine = [r for r in rows if r["trainer"] == name]
            cpu = [t for r in mine for t in r["step_cpu_times_s"][kept]]
            wall = [t for r in mine for t in r["step_times_s"][kept]]
            row = {
                "step_cpu_s": _median(cpu),
                "step_time_s": _median(wall),
                "fastest_cpu_s": min(cpu),
                "turn_cpu_s": _median(r["turn_cpu_s"] for r in mine),
                "samples": len(cpu),
                "ideal_s": ideal_step_time(units, TRAINERS[name].passes),
                "params_held": mine[0]["params_held"],
                "params_trained": mine[0]["params_trained"],
                "length": _median(r["mean_completion_length"] for r in mine),
            }
            # fp32 weights held + gradients and two AdamW moments of what is trained
            row["model_state"] = row["params_held"] + 3 * row["params_trained"]
            cell[geo, name] = row
    for name in args.trainers:
        mine = [r for r in results["memory"] if r["trainer"] == name]
        keys = ("peak_rss_mb", "peak_over_built_mb", "peak_over_before_mb", "step_time_s", "step_cpu_s")
        cell["memory", name] = {k: _median(r[k] for r in mine) for k in keys}
    return cell


def _timing_steps(args: argparse.Namespace, slot: int) -> int:
    """The 1x geometry, where the targets are read, gets more steps than the growth geometries."""
    return max(args.steps, getattr(args, "steps_1x", 0) or 0) if slot == 0 else args.steps


def ratio_interval(
    results: dict,
    args: argparse.Namespace,
    geo: str,
    num: str,
    den: str,
    level: float = 0.9,
    draws: int = 2000,
    key: str = "step_cpu_times_s",
) -> tuple[float, float]:
    """Bootstrap interval of median(num) / median(den) step times (the per-step list ``key`` of each timing row).

    Two levels, so that differences between timing processes count as well as the noise within one: draw the repeats
    with replacement, then within each drawn repeat its rounds with replacement. A round is one step of every trainer,
    back to back, so the two steps of a pair saw the same state of the machine.
    """
    import random

    steps: dict[tuple[int, str], list[float]] = {}
    for r in results["timing"]:
        if r["geometry"] == geo and r["trainer"] in (num, den):
            steps[r["repeat"], r["trainer"]] = r[key][args.warmup :]
    repeats = sorted({key[0] for key in steps if (key[0], num) in steps and (key[0], den) in steps})
    rounds = {rep: list(zip(steps[rep, num], steps[rep, den], strict=False)) for rep in repeats}
    if not repeats:
        return float("nan"), float("nan")
    rng = random.Random(0)
    estimates = []
    for _ in range(draws):
        sample = []
        for _ in repeats:
            mine = rounds[rng.choice(repeats)]
            sample += [mine[rng.randrange(len(mine))] for _ in mine]
        estimates.append(statistics.median(a for a, _ in sample) / statistics.median(b for _, b in sample))
    estimates.sort()
    tail = (1 - level) / 2
    return estimates[int(tail * draws)], estimates[int((1 - tail) * draws) - 1]


def ratio(cell: dict, geo: str, num: str, den: str, key: str = "step_cpu_s") -> float:
    return cell[geo, num][key] / cell[geo, den][key]


# --- rendering -------------------------------------------------------------------------------------------------------

# (id, label, numerator, denominator, metric, bound)
TARGETS = [
    ("rloo", "tb.RLOOTrainer, no trick / trl.RLOOTrainer", "rloo", "trl_rloo", "step", 1.03),
    ("rloo_tricks", "tb.RLOOTrainer, every trick / trl.RLOOTrainer", "rloo_tricks", "trl_rloo", "step", 1.05),
    ("rpp", "tb.ReinforcePlusPlusTrainer / trl.GRPOTrainer (dapo, KL on)", "reinforce_pp", "trl_grpo", "step", 1.10),
    ("rloo_ppo", "tb.RLOOTrainer / tb.PPOMaxTrainer, step time", "rloo", "ppo_max", "step", 0.70),
    ("rpp_ppo", "tb.ReinforcePlusPlusTrainer / tb.PPOMaxTrainer, step time", "reinforce_pp", "ppo_max", "step", 0.70),
    ("rloo_ppo_mem", "tb.RLOOTrainer / tb.PPOMaxTrainer, peak memory", "rloo", "ppo_max", "mem", 0.60),
    ("rpp_ppo_mem", "tb.ReinforcePlusPlusTrainer / tb.PPOMaxTrainer, peak memory", "reinforce_pp", "ppo_max", "mem",
     0.60),
]  # fmt: skip


def _verdict(value: float, bound: float, interval: tuple[float, float] | None = None) -> str:
    text = "pass" if value <= bound else "**miss**"
    if interval is not None and interval[0] <= bound < interval[1]:
        text += " (the bound is inside the 90% interval: not resolved by this run)"
    return text


def render(args: argparse.Namespace, results: dict, command: str) -> str:
    cell = summarize(args, results)
    geos = [label for _, _, label in geometries(args)]
    dims = {label: (b, t) for b, t, label in geometries(args)}
    base = geos[0]
    hidden, layers, heads, intermediate = MODELS[args.model]
    have = set(args.trainers)
    lines = [
        f"Command: `{command}`",
        "",
        (
            f"Run finished {results.get('finished', '?')}, {results['wall_s'] / 60:.1f} min; "
            f"{results.get('machine', _machine())}; {results.get('versions', _versions())}. "
            f"Model: kit `{args.model}` (hidden {hidden}, "
            f"{layers} layers, {heads} heads, MLP {intermediate}, vocabulary 339, fp32). 1x geometry: B = "
            f"{args.batch_size} completions per step ({args.num_generations} per prompt), each exactly T = "
            f"{args.completion_length} tokens. Timing: {_timing_steps(args, 0)} steps per trainer at 1x and "
            f"{args.steps} at the other geometries ({args.warmup} warm-up steps dropped), all trainers in turns in "
            f"one process per geometry; memory: a fresh process per trainer, {args.memory_steps} steps. "
            f"{args.repeats} repeats; step times are medians over the timed steps of all repeats "
            f"({(_timing_steps(args, 0) - args.warmup) * args.repeats} at 1x, "
            f"{(args.steps - args.warmup) * args.repeats} at the other geometries), memory medians over the repeats."
        ),
        "",
        f"### Targets (1x geometry, B = {dims[base][0]}, T = {dims[base][1]})",
        "",
        (
            "Step-time ratios compare the median CPU time per step (the thread's CPU time over TRL's `step_time` "
            "interval, pooled over the timed steps of all repeats), with a 90% bootstrap interval in brackets "
            "(repeats, then whole rounds of turns within them, resampled). Beside it: the ratio of the fastest steps "
            "(contention on a shared machine only ever adds time, so the fastest step approaches the uncontended "
            "cost), the ratio of TRL's wall-clock `step_time` medians (which also count waiting for a core), and the "
            "ideal ratio of the model's own work. Verdicts use the median CPU-time ratio."
        ),
        "",
        "| target | bound | measured (median CPU) | fastest steps | wall `step_time` | ideal (model work) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    verdicts = {}
    for key, label, num, den, metric, bound in TARGETS:
        if not {num, den} <= have:
            continue
        if metric == "step":
            cpu, wall = ratio(cell, base, num, den), ratio(cell, base, num, den, "step_time_s")
            fastest = ratio(cell, base, num, den, "fastest_cpu_s")
            ideal = ratio(cell, base, num, den, "ideal_s")
            low, high = ratio_interval(results, args, base, num, den)
            verdicts[key] = (cpu, bound)
            lines.append(
                f"| {label} | ≤ {bound:.2f} | {cpu:.3f} [{low:.3f}, {high:.3f}] | {fastest:.3f} | {wall:.3f} | "
                f"{ideal:.3f} | {_verdict(cpu, bound, (low, high))} |"
            )
        elif results["memory"]:
            a, b = cell["memory", num], cell["memory", den]
            built = a["peak_over_built_mb"] / b["peak_over_built_mb"]
            before = a["peak_over_before_mb"] / b["peak_over_before_mb"]
            ideal = cell[base, num]["model_state"] / cell[base, den]["model_state"]
            verdicts[key] = (built, bound)
            lines.append(
                f"| {label}: peak RSS above the built trainer (above the pre-build RSS: {before:.3f}) "
                f"| ≤ {bound:.2f} "
                f"| {built:.3f} | | | {ideal:.3f} (model state) | {_verdict(built, bound)} |"
            )
    if {"ppo_max", "reinforce_pp"} <= have:
        for ref in ("reinforce_pp", "trl_grpo"):
            if ref not in have:
                continue
            ideal = cell[base, "ppo_max"]["ideal_s"] / cell[base, ref]["ideal_s"]
            cpu = ratio(cell, base, "ppo_max", ref) / ideal
            low, high = (x / ideal for x in ratio_interval(results, args, base, "ppo_max", ref))
            fastest = ratio(cell, base, "ppo_max", ref, "fastest_cpu_s") / ideal
            wall = ratio(cell, base, "ppo_max", ref, "step_time_s") / ideal
            primary = ref == "reinforce_pp"
            label = f"PPO-max's own overhead: (PPO-max / {TRAINERS[ref].label}) ÷ ideal ratio {ideal:.3f}"
            if not primary:
                label += " (cross-check)"
            if primary:
                verdicts["ppo_overhead"] = (cpu, 1.15)
            lines.append(
                f"| {label} | ≤ 1.15 | {cpu:.3f} [{low:.3f}, {high:.3f}] | {fastest:.3f} | {wall:.3f} | 1 | "
                f"{_verdict(cpu, 1.15, (low, high)) if primary else ''} |"
            )

    lines += [
        "",
        "### Step time of every trainer at every geometry",
        "",
        (
            "ms per step. CPU: median thread CPU time over TRL's `step_time` interval; fastest: the fastest of those "
            "steps; wall: median of TRL's `step_time`; turn: median CPU time of the whole optimizer step (adds the "
            "policy's AdamW step, the callbacks and logging); ideal: the model's own work from the unit costs below."
        ),
        "",
        "| geometry | B | T | trainer | CPU | fastest | wall | turn | ideal | CPU / ideal |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for geo in geos:
        b, t = dims[geo]
        for name in args.trainers:
            r = cell[geo, name]
            lines.append(
                f"| {geo} | {b} | {t} | {TRAINERS[name].label} | {r['step_cpu_s'] * 1e3:.0f} | "
                f"{r['fastest_cpu_s'] * 1e3:.0f} | {r['step_time_s'] * 1e3:.0f} | {r['turn_cpu_s'] * 1e3:.0f} | "
                f"{r['ideal_s'] * 1e3:.0f} | "
                f"{r['step_cpu_s'] / r['ideal_s']:.2f} |"
            )

    lines += [
        "",
        "### Unit costs: the model's own work (CPU ms, median)",
        "",
        (
            "gen: `generate` of B completions x T tokens with TRL's generation settings; fwd: one no-grad policy "
            "forward with log-probs (TRL's log-prob function); fb: one policy forward+backward; opt: the policy's "
            "AdamW step; cfwd, cfb, copt: the same for the critic (value head instead of the LM head). Both AdamW "
            "steps are fused, the Trainer's default for the policy."
        ),
        "",
        "| geometry | B | T | " + " | ".join(UNIT_NAMES) + " |",
        "|---|---|---|" + "---|" * len(UNIT_NAMES),
    ]
    for geo in geos:
        u = cell[geo, "units"]
        lines.append(
            f"| {geo} | {dims[geo][0]} | {dims[geo][1]} | "
            + " | ".join(f"{u[k] * 1e3:.1f}" for k in UNIT_NAMES)
            + " |"
        )

    if results["memory"]:
        lines += [
            "",
            f"### Peak memory (1x geometry, fresh process per run, {args.memory_steps} steps)",
            "",
            (
                "MB. Peak: the process's RSS high-water mark (`os.wait4`). Above built: peak minus the RSS right "
                "after the trainer was built (what training adds: activations, optimizer states, generation cache). "
                "Above pre-build: peak minus the RSS before the trainer was built (adds the policy, reference and "
                "critic weights). Model state: fp32 weights held plus the gradients and two AdamW moments of the "
                "trained parameters, the part that dominates at scale (its ratio is the memory 'ideal' above). The "
                "step times of these one-trainer processes are the cross-check of the in-turn timing (noisier: each "
                "process sees the machine alone)."
            ),
            "",
            (
                "| trainer | peak RSS | above built | above pre-build | params held | params trained | model state "
                "(MB) | step CPU (ms) | step wall (ms) |"
            ),
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name in args.trainers:
            m, c = cell["memory", name], cell[base, name]
            lines.append(
                f"| {TRAINERS[name].label} | {m['peak_rss_mb']:.0f} | {m['peak_over_built_mb']:.0f} | "
                f"{m['peak_over_before_mb']:.0f} | {c['params_held']:,} | {c['params_trained']:,} | "
                f"{4 * c['model_state'] / 2**20:.0f} | {m['step_cpu_s'] * 1e3:.0f} | {m['step_time_s'] * 1e3:.0f} |"
            )

    pairs = [(a, b) for a, b in (("rloo", "trl_rloo"), ("rloo_tricks", "trl_rloo"), ("reinforce_pp", "trl_grpo"),
                                 ("ppo_max", "reinforce_pp")) if {a, b} <= have]  # fmt: skip
    if len(geos) > 1 and pairs:
        lines += [
            "",
            "### Growth with completion length T and batch size B",
            "",
            (
                "First rows: CPU-time ratio of each trainer to its reference at each geometry (flat = our code adds "
                "nothing that grows faster than the model's work); `ideal` is the same ratio from the unit costs. "
                "Then each trainer's CPU step time relative to its own 1x time, against the model's work (unit "
                "costs) at the same scale."
            ),
            "",
            "| | " + " | ".join(geos) + " |",
            "|---|" + "---|" * len(geos),
        ]
        for a, b in pairs:
            values = [f"{ratio(cell, geo, a, b):.3f}" for geo in geos]
            lines.append(f"| {TRAINERS[a].label} / {TRAINERS[b].label} | " + " | ".join(values) + " |")
            values = [f"{cell[geo, a]['ideal_s'] / cell[geo, b]['ideal_s']:.3f}" for geo in geos]
            lines.append("| ideal | " + " | ".join(values) + " |")
        for name in args.trainers:
            values = [f"{cell[geo, name]['step_cpu_s'] / cell[base, name]['step_cpu_s']:.2f}" for geo in geos]
            lines.append(f"| {TRAINERS[name].label}: CPU step / its 1x | " + " | ".join(values) + " |")
        for unit, text in (("gen", "generate"), ("fb", "policy forward+backward")):
            values = [f"{cell[geo, 'units'][unit] / cell[base, 'units'][unit]:.2f}" for geo in geos]
            lines.append(f"| model work: {text} / its 1x | " + " | ".join(values) + " |")

    lines += ["", "### Trainers", ""]
    for name in args.trainers:
        spec = TRAINERS[name]
        passes = ", ".join(f"{count} {kind}" for kind, count in spec.passes.items())
        lines.append(f"- **{spec.label}**: {spec.description}. Ideal passes per step: gen, {passes}.")
    results["verdicts"] = verdicts
    return "\n".join(lines) + "\n"


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return model


def _machine() -> str:
    return f"{os.cpu_count()} CPU cores ({cpu_model()}), load average {os.getloadavg()[0]:.1f} at the end"


def _versions() -> str:
    from importlib.metadata import version

    return f"Python {platform.python_version()}, " + ", ".join(
        f"{name} {version(name)}" for name in ("torch", "transformers", "trl")
    )


def update_docs(path: Path, table: str, markers: tuple[str, str] = DOCS_MARKERS) -> None:
    """Replace the block between the ``markers`` in ``path`` with ``table``."""
    text = path.read_text()
    start, end = markers
    if start not in text or end not in text:
        raise ValueError(f"{path} has no {start} ... {end} block to replace")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{table}{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Smoke test: tiny model and geometry, 1 repeat (<1 min).")
    parser.add_argument("--model", choices=list(MODELS), default="small", help="Kit model size (see MODELS).")
    parser.add_argument("--task", default="token_kind", help="Kit task: prompts and reward function.")
    parser.add_argument("--batch-size", type=int, default=16, help="Completions per step at 1x.")
    parser.add_argument("--completion-length", type=int, default=16, help="Tokens per completion at 1x.")
    parser.add_argument("--num-generations", type=int, default=4, help="Completions per prompt, every trainer.")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4], help="Growth factors of B and T.")
    parser.add_argument("--trainers", nargs="+", default=list(TRAINERS), choices=list(TRAINERS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="Optimizer steps per trainer in a timing run.")
    parser.add_argument("--steps-1x", type=int, default=40, help="Steps per trainer at the 1x geometry (targets).")
    parser.add_argument("--warmup", type=int, default=2, help="First steps of each run left out of the median.")
    parser.add_argument("--unit-iters", type=int, default=5, help="Timed iterations of the unit costs.")
    parser.add_argument("--memory-steps", type=int, default=4, help="Steps of each memory run.")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="Skip the memory runs.")
    parser.add_argument("--output", default=str(HERE / "results" / "latest.md"), help="Markdown written here.")
    parser.add_argument("--json", default=None, help="Raw measurements as JSON (default: next to --output).")
    parser.add_argument("--update-docs", default=None, help="Replace the marked block of this Markdown file.")
    parser.add_argument("--timeout", type=float, default=900.0, help="Seconds before a child process is killed.")
    parser.add_argument("--render", default=None, help="Only re-render the tables from a JSON file this script wrote.")
    # worker-only
    parser.add_argument("--worker", choices=["timing", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--trainer", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv) if "--worker" not in argv else _parse_worker(parser, argv)

    if args.worker:
        result = worker_timing(args) if args.worker == "timing" else worker_memory(args)
        with open(args.result, "w") as f:
            json.dump(result, f)
        return 0
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        markdown = render(argparse.Namespace(**saved["args"]), saved, saved["command"])
        if args.update_docs:
            update_docs(Path(args.update_docs), markdown)
        print(markdown)
        return 0

    if args.quick:
        args.model, args.batch_size, args.completion_length, args.scales = "kit-tiny", 8, 4, [1]
        args.repeats, args.steps, args.steps_1x, args.warmup, args.unit_iters, args.memory_steps = 1, 3, 3, 1, 2, 2
        if "--trainers" not in argv:
            args.trainers = ["trl_rloo", "rloo", "ppo_max"]
    if args.batch_size % args.num_generations:
        parser.error("--batch-size must be a multiple of --num-generations")
    results = run_all(args)
    command = shlex.join(["OMP_NUM_THREADS=1", "python", "benchmarks/run.py", *argv])
    markdown = render(args, results, command)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(markdown)
    json_path = Path(args.json) if args.json else output.with_suffix(".json")
    json_path.write_text(json.dumps({"args": vars(args), "command": command, **results}, indent=2))
    if args.update_docs:
        update_docs(Path(args.update_docs), markdown)
    print(markdown)
    print(f"Written: {output} and {json_path}", file=sys.stderr)
    return 0


def _parse_worker(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Workers get ``--trainers`` as one comma-separated string."""
    index = argv.index("--trainers") if "--trainers" in argv else None
    trainers = None
    if index is not None:
        trainers = argv[index + 1]
        argv = argv[:index] + argv[index + 2 :]
    args = parser.parse_args(argv)
    if trainers is not None:
        args.trainers = trainers
    return args


if __name__ == "__main__":
    sys.exit(main())
