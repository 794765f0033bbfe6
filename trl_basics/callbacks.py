"""Trainer callbacks shipped with trl_basics: the graceful interrupt and the collapse alarm."""

from __future__ import annotations

import logging
import math
import signal
import threading
from collections import deque
from dataclasses import dataclass

from transformers import TrainerCallback

from .config import COLLAPSE_ALARM_CHOICES
from .metrics import ENTROPY, MEMORY_RSS_BUILT, PARENT_KL, PERPLEXITY

logger = logging.getLogger(__name__)


class GracefulInterrupt(TrainerCallback):
    """On SIGINT (Ctrl-C) or SIGTERM (what schedulers send), finish the current step, save a checkpoint, and stop.

    A second signal interrupts at once. The checkpoint holds the model, optimizer, scheduler, RNG state and the trick
    state, so ``train(resume_from_checkpoint=...)`` continues from it. Handlers are installed for the duration of
    training only, and only in the main thread (where Python delivers signals).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt  # second signal: stop now
        self.received = signum
        print(f"\nReceived {signal.Signals(signum).name}: saving a checkpoint after this step, then stopping.")

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


# --- the collapse alarm ------------------------------------------------------------------------------------------------

LENGTH_KEY = "completions/mean_length"
PERPLEXITY_KEY = PERPLEXITY
REWARD_KEY = "reward"
ENTROPY_KEY = ENTROPY
COLLAPSE_SIGNALS = (
    "length_at_cap", "perplexity_to_one", "kl_spike", "reward_rising", "reward_drop_after_rise", "entropy_jump",
)  # fmt: skip


@dataclass(frozen=True)
class CollapseSignals:
    """The signals of one check and whether they add up to a collapse.

    Two patterns count as a collapse:

    - **the slow one** (Zheng et al. 2023, §5.2, Fig. 4): the length runs to the cap, the perplexity heads to 1 and
      the KL to the reference spikes, all while the reward keeps rising (the reward is being hacked);
    - **the sudden one**: after the reward has risen, one step's reward falls back by most of the rise while the
      policy's entropy, or the perplexity of its samples, jumps (the update broke the policy: it samples
      near-uniformly and the reward is lost).
    """

    step: int
    length_at_cap: bool  # mean length reached the cap after starting well below it
    perplexity_to_one: bool  # (perplexity - 1) shrank to a fraction of where it started
    kl_spike: bool  # KL jumped against the previous window and is above a floor
    reward_rising: bool  # the reward still rises against the previous window
    reward_drop_after_rise: bool = False  # the reward rose clearly, and this step lost most of the rise
    entropy_jump: bool = False  # this step's entropy (or perplexity of its samples) is far above the previous window's

    @property
    def slow_collapse(self) -> bool:
        return self.length_at_cap and self.perplexity_to_one and self.kl_spike and self.reward_rising

    @property
    def sudden_collapse(self) -> bool:
        return self.reward_drop_after_rise and self.entropy_jump

    @property
    def collapse(self) -> bool:
        return self.slow_collapse or self.sudden_collapse

    def metrics(self) -> dict[str, float]:
        """The ``collapse/*`` metrics of this check (1.0 or 0.0 each)."""
        values = {f"collapse/{name}": float(getattr(self, name)) for name in COLLAPSE_SIGNALS}
        return values | {"collapse/alarm": float(self.collapse)}


def _mean(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _stdev(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if len(values) < 2:
        return math.nan
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


class CollapseAlarmCallback(TrainerCallback):
    """Warns (``mode="warn"``) or warns and stops training (``mode="stop"``) when the policy collapses.

    Every trl_basics trainer installs one (config field ``collapse_alarm``). It reads each step's metrics, checks the
    two collapse patterns of [`CollapseSignals`], and adds ``collapse/*`` metrics (1.0 when a signal holds, 0.0
    otherwise; ``collapse/alarm`` when the signals add up to a collapse) to the step's log. Nothing is checked before
    ``2 * window`` training steps are in; until then every ``collapse/*`` metric is 0.

    Standalone (passed in ``callbacks`` without ``metrics``), it reads the logs instead and adds no metrics.

    Args:
        mode: ``"warn"``, ``"stop"`` or ``"off"`` (``"off"`` makes the callback inert).
        max_completion_length: The generation cap the length is compared with.
        kl_key: Name of the logged KL-to-reference metric (per-sequence sum; the ``kl_metric`` the trainer's tricks
            declare, or the parent's ``"kl"``). Without it the KL signal, and so the slow pattern, never fires.
        window: Steps per window.
        length_cap_fraction: "At the cap": recent mean length >= this fraction of ``max_completion_length``.
        length_jump_fraction: "Jumps": the first window's mean length was at least this fraction of the cap lower.
        perplexity_fraction: "Heads to 1": recent (perplexity - 1) <= this fraction of the first window's.
        kl_spike_factor: "Spikes": recent KL >= this factor times the previous window's KL ...
        kl_floor: ... and recent KL >= this many nats per sequence.
        rise_noise_factor: "The reward rose clearly": the best window mean is this many step-to-step standard
            deviations (of the previous window) above the first window's mean.
        drop_fraction: "Lost most of the rise": this step's reward is below best - ``drop_fraction`` × rise ...
        drop_noise_factor: ... and at least this many standard deviations below the previous window's mean.
        entropy_jump_fraction: "Entropy jumps": this step's entropy >= (1 + this) × the previous window's mean ...
        perplexity_jump_fraction: ... or this step's perplexity >= (1 + this) × the previous window's mean, ...
        entropy_noise_factor: ... each also at least this many of the previous window's standard deviations above.
        metrics: The trainer's ``parent_metrics`` (``{"train": {name: [values]}}``): read each step, ``collapse/*`` added.
    """

    def __init__(
        self,
        mode: str = "warn",
        max_completion_length: int | None = None,
        kl_key: str | None = None,
        window: int = 10,
        length_cap_fraction: float = 0.95,
        length_jump_fraction: float = 0.25,
        perplexity_fraction: float = 0.5,
        kl_spike_factor: float = 2.0,
        kl_floor: float = 0.1,
        rise_noise_factor: float = 3.0,
        drop_fraction: float = 0.6,
        drop_noise_factor: float = 4.0,
        entropy_jump_fraction: float = 0.25,
        perplexity_jump_fraction: float = 0.5,
        entropy_noise_factor: float = 2.5,
        metrics: dict | None = None,
    ) -> None:
        if mode not in COLLAPSE_ALARM_CHOICES:
            raise ValueError(f"mode={mode!r} is not one of {', '.join(map(repr, COLLAPSE_ALARM_CHOICES))}")
        if window < 1:
            raise ValueError(f"window={window} must be >= 1")
        self.mode = mode
        self.max_completion_length = max_completion_length
        self.kl_key = kl_key
        self.window = window
        self.length_cap_fraction = length_cap_fraction
        self.length_jump_fraction = length_jump_fraction
        self.perplexity_fraction = perplexity_fraction
        self.kl_spike_factor = kl_spike_factor
        self.kl_floor = kl_floor
        self.rise_noise_factor = rise_noise_factor
        self.drop_fraction = drop_fraction
        self.drop_noise_factor = drop_noise_factor
        self.entropy_jump_fraction = entropy_jump_fraction
        self.perplexity_jump_fraction = perplexity_jump_fraction
        self.entropy_noise_factor = entropy_noise_factor
        self.metrics = metrics
        self._first: dict[str, list[float]] = {}
        self._recent: dict[str, deque] = {}
        self._best_reward_window = -math.inf
        self._seen: dict[str, tuple[list, int]] = {}
        self.alarms: list[CollapseSignals] = []

    def _keys(self) -> tuple[str, ...]:
        return (LENGTH_KEY, PERPLEXITY_KEY, REWARD_KEY, ENTROPY_KEY) + ((self.kl_key,) if self.kl_key else ())

    def observe(self, step: int, logs: dict) -> CollapseSignals | None:
        """Record one training step's metrics; return the signals once two full windows are in (``None`` before)."""
        if REWARD_KEY not in logs:  # not a training-step log (e.g. the final summary or an evaluation)
            return None
        w = self.window
        reward_history = self._recent.get(REWARD_KEY)
        if reward_history is not None and len(reward_history) >= w:
            # The best window mean before this step, for the drop-after-rise check.
            self._best_reward_window = max(self._best_reward_window, _mean(list(reward_history)[-w:]))
        for key in self._keys():
            value = logs.get(key)
            value = math.nan if value is None else float(value)
            first = self._first.setdefault(key, [])
            if len(first) < w:
                first.append(value)
            # The previous 2w steps, then this one.
            self._recent.setdefault(key, deque(maxlen=2 * w + 1)).append(value)
        if len(self._recent[REWARD_KEY]) < 2 * w + 1:
            return None
        return self.signals(step)

    def signals(self, step: int) -> CollapseSignals:
        w = self.window

        def history(key):
            return list(self._recent.get(key, []))

        def previous_and_latest(key):  # windows of w steps ending at this step
            values = history(key)[1:]
            return _mean(values[:w]), _mean(values[w:])

        first_length, length = _mean(self._first[LENGTH_KEY]), previous_and_latest(LENGTH_KEY)[1]
        cap = self.max_completion_length
        length_at_cap = (
            cap is not None
            and length >= self.length_cap_fraction * cap
            and first_length <= length - self.length_jump_fraction * cap
        )
        first_ppl, ppl = _mean(self._first[PERPLEXITY_KEY]), previous_and_latest(PERPLEXITY_KEY)[1]
        perplexity_to_one = ppl - 1.0 <= self.perplexity_fraction * (first_ppl - 1.0)
        kl_spike = False
        if self.kl_key:
            previous_kl, kl = previous_and_latest(self.kl_key)
            kl_spike = kl >= self.kl_floor and kl >= self.kl_spike_factor * max(previous_kl, 0.0)
        previous_reward, reward = previous_and_latest(REWARD_KEY)

        # The sudden pattern compares this step with the w steps before it.
        rewards = history(REWARD_KEY)
        before, now = rewards[-w - 1 : -1], rewards[-1]
        noise = _stdev(before)
        rise = self._best_reward_window - _mean(self._first[REWARD_KEY])
        drop_after_rise = (
            not math.isnan(noise)
            and rise > self.rise_noise_factor * noise
            and now < self._best_reward_window - self.drop_fraction * rise
            and now < _mean(before) - self.drop_noise_factor * noise
        )
        entropy_jump = self._jumped(history(ENTROPY_KEY), self.entropy_jump_fraction) or self._jumped(
            history(PERPLEXITY_KEY), self.perplexity_jump_fraction
        )
        return CollapseSignals(
            step, bool(length_at_cap), bool(perplexity_to_one), bool(kl_spike), reward > previous_reward,
            bool(drop_after_rise), bool(entropy_jump),
        )  # fmt: skip

    def _jumped(self, values: list[float], fraction: float) -> bool:
        """This step's value is ``1 + fraction`` times, and ``entropy_noise_factor`` standard deviations, above the
        mean of the ``window`` steps before it."""
        before, now = values[-self.window - 1 : -1], values[-1]
        mean, noise = _mean(before), _stdev(before)
        if math.isnan(noise) or math.isnan(now):
            return False
        return now >= (1.0 + fraction) * mean and now >= mean + self.entropy_noise_factor * noise

    def _step_metrics(self) -> dict[str, float]:
        """The mean of what each watched metric gained since the last step (the trainer logs the same means)."""
        train = self.metrics.get("train", {})
        logs = {}
        for key in self._keys():
            values = train.get(key, [])
            seen_list, seen = self._seen.get(key, (None, 0))
            new = values[seen:] if values is seen_list else values  # a log in between starts fresh lists
            self._seen[key] = (values, len(values))
            if new:
                logs[key] = _mean(new)
        return logs

    def _check(self, step: int, logs: dict, control):
        signals = self.observe(step, logs)
        if signals is None or not signals.collapse:
            return signals, control
        self.alarms.append(signals)
        if signals.slow_collapse:
            message = (
                f"PPO collapse signature at step {step} (Zheng et al. 2023, §5.2): the response length is at the cap "
                f"({self.max_completion_length} tokens), the perplexity heads to 1 and the KL to the reference "
                "spikes while the reward still rises. The reward is likely being hacked; check samples, raise the KL "
                "coefficient or lower the learning rate."
            )
        else:
            message = (
                f"Policy collapse at step {step}: the reward fell back by most of its rise in one step while the "
                "entropy jumped. The last update broke the policy; lower the learning rate or max_grad_norm, raise "
                "the KL coefficient, or resume from an earlier checkpoint."
            )
        if self.mode == "stop":
            message += " Stopping training (collapse_alarm='stop')."
            control.should_training_stop = True
        logger.warning(message)
        return signals, control

    def on_step_end(self, args, state, control, **kwargs):
        if self.mode == "off" or self.metrics is None:
            return control
        logs = self._step_metrics()
        signals, control = self._check(state.global_step, logs, control)
        if REWARD_KEY in logs:
            values = signals.metrics() if signals is not None else dict.fromkeys(_zero_metric_names(), 0.0)
            train = self.metrics["train"]
            for name, value in values.items():
                train[name].append(value)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.mode == "off" or self.metrics is not None or not logs:
            return control
        return self._check(state.global_step, logs, control)[1]


def _zero_metric_names() -> list[str]:
    return [f"collapse/{name}" for name in COLLAPSE_SIGNALS] + ["collapse/alarm"]


def install_collapse_alarm(trainer) -> CollapseAlarmCallback | None:
    """Add the collapse alarm the trainer's config asks for (``collapse_alarm``, default ``"warn"``) to ``trainer``.

    Sets ``trainer.collapse_alarm`` to the callback (``None`` when the config says ``"off"``).
    """
    config = trainer.args
    mode = getattr(config, "collapse_alarm", "warn")
    trainer.collapse_alarm = None
    if mode == "off":
        return None
    pipeline = getattr(trainer, "trick_pipeline", None)
    kl_metric = pipeline.requirements.kl_metric if pipeline is not None else None
    trainer.collapse_alarm = CollapseAlarmCallback(
        mode=mode,
        max_completion_length=config.max_completion_length,
        kl_key=kl_metric or PARENT_KL,
        window=getattr(config, "collapse_alarm_window", 10),
        metrics=trainer.parent_metrics,
    )
    trainer.add_callback(trainer.collapse_alarm)
    return trainer.collapse_alarm


class TrainerMemoryMark(TrainerCallback):
    """Logs ``memory/rss_built_mb`` once, at the first step: this process's resident memory when training began.

    The peak resident memory of the process minus this is what training adds to the built trainer (generation,
    activations, optimizer state), the measure ``trl-basics compare`` reports and ``benchmarks/run.py`` uses.
    """

    def __init__(self, log) -> None:
        self.log = log  # the trainer's metric path: log(name, value)
        self.rss_mb: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.rss_mb = current_rss_mb()

    def on_step_end(self, args, state, control, **kwargs):
        if self.rss_mb is not None:
            self.log(MEMORY_RSS_BUILT, self.rss_mb)
            self.rss_mb = None


def current_rss_mb() -> float | None:
    """This process's resident set size in MB (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def install_monitors(trainer) -> None:
    """What every trl_basics trainer watches: the collapse alarm (per its config) and the memory mark."""
    install_collapse_alarm(trainer)
    trainer.add_callback(TrainerMemoryMark(lambda name, value: trainer.metric_log()(name, value)))
