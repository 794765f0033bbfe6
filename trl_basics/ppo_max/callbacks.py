"""The collapse alarm: a ``TrainerCallback`` that watches the logs for the signature of PPO's pattern collapse.

Zheng et al. 2023 (Secrets of RLHF Part I, §5.2, Fig. 4): before the win rate falls, the response length climbs to
the generation cap, the perplexity of the policy's own samples drops towards 1 and the KL to the reference spikes,
all while the reward model's score keeps rising. Reward and loss alone do not show it.

The alarm compares the latest window of logged steps with the first window (length and perplexity: where training
started) and with the window just before it (KL spike, reward still rising). It fires when all four signals agree.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

LENGTH_KEY = "completions/mean_length"
PERPLEXITY_KEY = "perplexity"
REWARD_KEY = "reward"


@dataclass(frozen=True)
class CollapseSignals:
    """The four signals of one check and whether they add up to the collapse signature."""

    step: int
    length_at_cap: bool  # mean length reached the cap after starting well below it
    perplexity_to_one: bool  # (perplexity - 1) shrank to a fraction of where it started
    kl_spike: bool  # KL jumped against the previous window and is above a floor
    reward_rising: bool  # the reward still rises against the previous window

    @property
    def collapse(self) -> bool:
        return self.length_at_cap and self.perplexity_to_one and self.kl_spike and self.reward_rising


def _mean(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


class CollapseAlarmCallback(TrainerCallback):
    """Warns (``mode="warn"``) or warns and stops training (``mode="stop"``) on the collapse signature.

    Args:
        mode: ``"warn"`` or ``"stop"`` (``"off"`` makes the callback inert).
        max_completion_length: The generation cap the length is compared with.
        kl_key: Name of the logged KL-to-reference metric (per-sequence sum; e.g.
            ``"tricks/kl_shaping/k1_sequence_mean"``). Without it the KL signal, and so the alarm, never fires.
        window: Logged steps per window.
        length_cap_fraction: "At the cap": recent mean length >= this fraction of ``max_completion_length``.
        length_jump_fraction: "Jumps": the first window's mean length was at least this fraction of the cap lower.
        perplexity_fraction: "Heads to 1": recent (perplexity - 1) <= this fraction of the first window's.
        kl_spike_factor: "Spikes": recent KL >= this factor times the previous window's KL ...
        kl_floor: ... and recent KL >= this many nats per sequence.
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
    ) -> None:
        if mode not in ("off", "warn", "stop"):
            raise ValueError(f"mode={mode!r} is not one of 'off', 'warn', 'stop'")
        self.mode = mode
        self.max_completion_length = max_completion_length
        self.kl_key = kl_key
        self.window = window
        self.length_cap_fraction = length_cap_fraction
        self.length_jump_fraction = length_jump_fraction
        self.perplexity_fraction = perplexity_fraction
        self.kl_spike_factor = kl_spike_factor
        self.kl_floor = kl_floor
        self._first: dict[str, list[float]] = {}
        self._recent: dict[str, deque] = {}
        self.alarms: list[CollapseSignals] = []

    def _keys(self) -> tuple[str, ...]:
        return (LENGTH_KEY, PERPLEXITY_KEY, REWARD_KEY) + ((self.kl_key,) if self.kl_key else ())

    def observe(self, step: int, logs: dict) -> CollapseSignals | None:
        """Record one log entry; return the signals once two full windows are in (``None`` before)."""
        if REWARD_KEY not in logs:  # not a training-step log (e.g. the final summary or an evaluation)
            return None
        for key in self._keys():
            value = logs.get(key)
            value = math.nan if value is None else float(value)
            first = self._first.setdefault(key, [])
            if len(first) < self.window:
                first.append(value)
            self._recent.setdefault(key, deque(maxlen=2 * self.window)).append(value)
        recent_reward = self._recent[REWARD_KEY]
        if len(recent_reward) < 2 * self.window or len(self._first[REWARD_KEY]) < self.window:
            return None
        return self.signals(step)

    def signals(self, step: int) -> CollapseSignals:
        w = self.window

        def previous_and_latest(key):
            values = list(self._recent.get(key, []))
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
        return CollapseSignals(
            step, bool(length_at_cap), bool(perplexity_to_one), bool(kl_spike), reward > previous_reward
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.mode == "off" or not logs:
            return control
        signals = self.observe(state.global_step, logs)
        if signals is None or not signals.collapse:
            return control
        self.alarms.append(signals)
        message = (
            f"PPO collapse signature at step {state.global_step} (Zheng et al. 2023, §5.2): the response length is at "
            f"the cap ({self.max_completion_length} tokens), the perplexity heads to 1 and the KL to the reference "
            "spikes while the reward still rises. The reward is likely being hacked; check samples, raise the KL "
            "coefficient or lower the learning rate."
        )
        if self.mode == "stop":
            message += " Stopping training (collapse_alarm='stop')."
            control.should_training_stop = True
        logger.warning(message)
        return control
