"""Trainer callbacks shipped with trl_basics."""

from __future__ import annotations

import signal
import threading

from transformers import TrainerCallback


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
