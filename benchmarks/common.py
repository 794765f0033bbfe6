"""What the benchmark scripts share: the trainers and how each is built, the shared trainer settings, the timing
instruments, the turn-taking of trainers in one process, the child processes, the statistics and the targets.

Used by ``run.py`` (CPU speed and memory), ``gpu.py`` (one GPU, a real model size) and ``profile_step.py``. The
trainers of trl_basics are taken from the algorithm table, ``trl_basics.algorithms``; the references are TRL's own
trainers. Nothing here imports torch: the parent processes never do.
"""

from __future__ import annotations

import argparse
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
from dataclasses import dataclass, field
from pathlib import Path

from trl_basics.algorithms import ALGORITHMS, Algorithm

DOCS_MARKERS = ("<!-- benchmark-table:start -->", "<!-- benchmark-table:end -->")  # run.py's block of the docs

# name: (hidden_size, num_layers, num_heads, intermediate_size) of the kit model (the kit's 339-token vocabulary)
MODELS = {
    "kit-tiny": (64, 2, 4, 128),
    "small": (256, 4, 4, 1024),
}
UNIT_NAMES = ("gen", "fwd", "fb", "opt", "cfwd", "cfb", "copt")  # the model's own work, measured by run.py


@dataclass(frozen=True)
class TrainerSpec:
    label: str
    description: str
    passes: dict  # passes per step the algorithm must do, by unit name (see run_report.ideal_step_time)
    algorithm: Algorithm  # its trainer and config classes (trl_basics' from `ALGORITHMS`)
    config: dict = field(default_factory=dict)  # config values beyond the shared settings and the algorithm's own


# TRL's own trainers, the references (not trl_basics algorithms, so not in its table)
TRL_RLOO = Algorithm("trl_rloo", "TRL's RLOO", "trl:RLOOTrainer", "trl:RLOOConfig")
TRL_GRPO = Algorithm("trl_grpo", "TRL's GRPO", "trl:GRPOTrainer", "trl:GRPOConfig")


# Passes per generation round, on-policy with one micro-batch: no-grad policy/reference forwards ("fwd"), policy
# forward+backward ("fb"), and for PPO-max the critic's no-grad forward ("cfwd"), forward+backward ("cfb") and AdamW
# step ("copt", inside TRL's step_time because PPO-max steps the critic inside the loss). The policy's own optimizer
# step is outside TRL's step_time for every trainer.
TRAINERS = {
    "trl_rloo": TrainerSpec(
        "trl.RLOOTrainer",
        "TRL's RLOO, beta=0.05 (k1 summed over the sequence, in the reward): sampling-policy and reference log-probs",
        {"fwd": 2, "fb": 1},
        TRL_RLOO,
        {"beta": 0.05},
    ),
    "rloo": TrainerSpec(
        "tb.RLOOTrainer",
        "trl_basics RLOO with no trick flag (beta=0.05, exactly TRL's algorithm)",
        {"fwd": 2, "fb": 1},
        ALGORITHMS["rloo"],
        {"beta": 0.05},
    ),
    "rloo_tricks": TrainerSpec(
        "tb.RLOOTrainer + tricks",
        "trl_basics RLOO with every applicable trick: adaptive k1 token-level KL in the reward (kl_coef=0.05, "
        "kl_target, kl_clamp; TRL's beta=0), running reward normalization + reward clip, the `length_penalty` plugin, "
        "global advantage whitening, advantage clip, entropy bonus; token-level clipped loss",
        {"fwd": 2, "fb": 1},
        ALGORITHMS["rloo"],
        {
            "beta": 0.0,
            "kl_coef": 0.05,
            "kl_estimator": "k1",
            "kl_placement": "token_reward",
            "kl_target": 6.0,
            "kl_clamp": 10.0,
            "reward_norm": "running",
            "reward_clip": 5.0,
            "whiten_advantages": True,
            "advantage_clip": 5.0,
            "entropy_bonus_coef": 0.01,
            "tricks": ["length_penalty"],
            "trick_kwargs": {"length_penalty": {"coef": 0.01}},
        },
    ),
    "trl_grpo": TrainerSpec(
        "trl.GRPOTrainer",
        "TRL's GRPO, loss_type='dapo', beta=0.04 (k3 KL in the loss): reference log-probs only (on-policy, the loss "
        "reuses its own detached log-probs)",
        {"fwd": 1, "fb": 1},
        TRL_GRPO,
        {"loss_type": "dapo", "beta": 0.04},
    ),
    "reinforce_pp": TrainerSpec(
        "tb.ReinforcePlusPlusTrainer",
        "trl_basics REINFORCE++, loss_type='dapo', beta=0, k1 token-level KL in the reward (kl_coef=0.04), global "
        "whitening: the KL needs the sampling policy's log-probs before the update, one more no-grad forward than "
        "GRPO",
        {"fwd": 2, "fb": 1},
        ALGORITHMS["reinforce_pp"],
        {"loss_type": "dapo", "beta": 0.0, "kl_coef": 0.04},
    ),
    "ppo_max": TrainerSpec(
        "tb.PPOMaxTrainer",
        "trl_basics PPO-max defaults (k1 token KL 0.05 in the reward, running reward norm + clip 0.3, GAE, value "
        "clip 0.2), critic initialised from the policy (critic_init='policy')",
        {"fwd": 2, "fb": 1, "cfwd": 1, "cfb": 1, "copt": 1},
        ALGORITHMS["ppo_max"],
        {"critic_init": "policy", "critic_learning_rate": 1e-4},
    ),
}


# --- building and timing trainers ------------------------------------------------------------------------------------


def common_kwargs(output_dir: str, batch_size: int, completion_length: int, num_generations: int, steps: int) -> dict:
    return {
        "output_dir": output_dir, "use_cpu": True, "bf16": False, "gradient_checkpointing": False,
        "report_to": "none", "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True, "learning_rate": 1e-4,
        "lr_scheduler_type": "constant", "per_device_train_batch_size": batch_size,
        "num_generations": num_generations, "max_completion_length": completion_length, "max_steps": steps,
        "seed": 0, "temperature": 1.0, "top_p": 1.0, "generation_kwargs": {"min_new_tokens": completion_length},
        "dataloader_num_workers": 0,
    }  # fmt: skip


def build_trainer(name: str, common: dict, model_dir: str, dataset, reward_func, **trainer_kwargs):
    """The trainer ``name`` of `TRAINERS` with the shared settings ``common`` (torch is imported in the children only).

    ``trainer_kwargs`` go to the trainer's constructor as they are (e.g. ``processing_class``).
    """
    if name not in TRAINERS:
        raise ValueError(f"unknown trainer {name!r}")
    spec = TRAINERS[name]
    config = spec.algorithm.config_class()(**{**common, **spec.algorithm.defaults, **spec.config})
    return spec.algorithm.trainer_class()(
        model=model_dir, reward_funcs=reward_func, train_dataset=dataset, args=config, **trainer_kwargs
    )


def parameter_counts(trainer) -> tuple[int, int]:
    """Parameters held (policy, reference, critic) and trained (policy, critic)."""
    critic = getattr(trainer, "critic", None)
    trained = [trainer.model, *([critic.model] if critic is not None else [])]
    held = [*trained, *([trainer.ref_model] if getattr(trainer, "ref_model", None) is not None else [])]

    def count(models: list, only_trainable: bool) -> int:
        return sum(p.numel() for m in models for p in m.parameters() if p.requires_grad or not only_trainable)

    return count(held, False), count(trained, True)


def instrument(trainer, clock) -> list[float]:
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


# --- every trainer in one process, in turns --------------------------------------------------------------------------


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


# --- the geometries of run.py ---------------------------------------------------------------------------------------


def geometries(args: argparse.Namespace) -> list[tuple[int, int, str]]:
    """(batch size, completion length, label): 1x first, then each scale along T, then along B."""
    out = [(args.batch_size, args.completion_length, "1x")]
    scales = [scale for scale in args.scales if scale != 1]
    out += [(args.batch_size, args.completion_length * scale, f"T x{scale}") for scale in scales]
    out += [(args.batch_size * scale, args.completion_length, f"B x{scale}") for scale in scales]
    return out


def timing_steps(args: argparse.Namespace, slot: int) -> int:
    """The 1x geometry, where the targets are read, gets more steps than the growth geometries."""
    return max(args.steps, getattr(args, "steps_1x", 0) or 0) if slot == 0 else args.steps


# --- child processes -------------------------------------------------------------------------------------------------


def run_child(argv: list[str], timeout: float, script: str | os.PathLike[str]) -> tuple[dict, float]:
    """Run ``script`` as a worker; return its JSON result and its peak RSS in MB (``os.wait4``). The worker writes
    its result as JSON to the path given after ``--result``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        result_path = tmp.name
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(
            [sys.executable, str(Path(script).resolve()), *argv, "--result", result_path],
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


# --- statistics, targets, verdicts -----------------------------------------------------------------------------------


def median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


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


def verdict(value: float, bound: float, interval: tuple[float, float] | None = None) -> str:
    text = "pass" if value <= bound else "**miss**"
    if interval is not None and interval[0] <= bound < interval[1]:
        text += " (the bound is inside the 90% interval: not resolved by this run)"
    return text


# --- the machine and the docs ----------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return model


def update_docs(path: Path, table: str, markers: tuple[str, str] = DOCS_MARKERS) -> None:
    """Replace the block between the ``markers`` in ``path`` with ``table``."""
    text = path.read_text()
    start, end = markers
    if start not in text or end not in text:
        raise ValueError(f"{path} has no {start} ... {end} block to replace")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{table}{end}{tail}")
