"""One run per output_dir: a second run on a live run's folder is refused at once, naming the live run; a killed
run leaves nothing that blocks its own resume."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from transformers import TrainerCallback

from trl_basics import checkpoints
from trl_basics.cli import main

from .conftest import make_trainer, run_forked
from .test_cli_resume import FAST

HOST = socket.gethostname()


def test_a_second_lock_is_refused_until_the_first_is_released(tmp_path):
    first = checkpoints.RunLock(str(tmp_path)).acquire()
    record = (tmp_path / checkpoints.LOCK_FILE).read_text()
    assert f"pid={os.getpid()}\nhost={HOST}\nstarted=" in record
    with pytest.raises(checkpoints.OutputDirInUseError) as caught:
        checkpoints.RunLock(str(tmp_path)).acquire()  # a second open file in the same process: refused as well
    assert str(caught.value).startswith(
        f"output_dir {tmp_path} is in use by another training run: process {os.getpid()} (this process) on host "
        f"{HOST}, started "
    )
    with pytest.raises(checkpoints.OutputDirInUseError):
        checkpoints.check_output_dir_free(str(tmp_path))
    first.release()
    checkpoints.check_output_dir_free(str(tmp_path))
    with checkpoints.RunLock(str(tmp_path)) as again:
        assert again.held


def test_what_a_dead_run_left_in_the_lock_file_is_not_a_holder(tmp_path):
    (tmp_path / checkpoints.LOCK_FILE).write_text("pid=999999\nhost=elsewhere\nstarted=2020-01-01T00:00:00+00:00\n")
    checkpoints.check_output_dir_free(str(tmp_path))
    lock = checkpoints.RunLock(str(tmp_path)).acquire()
    assert f"pid={os.getpid()}\n" in (tmp_path / checkpoints.LOCK_FILE).read_text()
    lock.release()


def test_a_second_trainer_in_the_same_process_is_refused_while_the_first_trains(tmp_path, tiny_model_dir, task,
                                                                                 dataset):  # fmt: skip
    out = tmp_path / "run"
    refusals = []

    class StartAnother(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                second = make_trainer("rloo", tiny_model_dir, task, dataset, out, max_steps=2)
                try:
                    second.train()
                except checkpoints.OutputDirInUseError as err:
                    refusals.append(str(err))

    first = make_trainer("rloo", tiny_model_dir, task, dataset, out, max_steps=2)
    first.add_callback(StartAnother())
    first.train()
    assert len(refusals) == 1 and f"process {os.getpid()} (this process) on host {HOST}" in refusals[0]
    assert first.state.global_step == 2
    assert checkpoints.find_resumable_checkpoint(str(out)) == str(out / "checkpoint-2")
    assert checkpoints.checkpoint_problems(str(out / "checkpoint-2")) == []
    checkpoints.check_output_dir_free(str(out))  # released when train returned


def _cli(out, model_dir, max_steps):
    argv = [sys.executable, "-m", "trl_basics.cli", "train", "rloo", "--model_name_or_path", model_dir,
            "--output_dir", str(out), *FAST]  # fmt: skip
    argv[argv.index("--max_steps") + 1] = str(max_steps)
    return argv


@pytest.mark.slow
def test_two_cli_runs_on_one_folder(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(
        _cli(out, tiny_model_dir, 6), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        deadline = time.time() + 300
        for line in first.stdout:  # training has begun: the lock is held
            if "'loss'" in line or '"loss"' in line:
                break
            assert time.time() < deadline, "training did not start"
        first.send_signal(signal.SIGSTOP)  # the first run stays alive, holding its lock, while the second starts
        started = time.monotonic()
        second = subprocess.run(
            _cli(out, tiny_model_dir, 6), check=False, capture_output=True, text=True, env=env, timeout=300
        )
        refused_after = time.monotonic() - started
    finally:
        first.send_signal(signal.SIGCONT)
    output, _ = first.communicate(timeout=300)

    assert second.returncode == 2, second.stderr[-3000:]
    assert (
        f"trl-basics train rloo: error: output_dir {out} is in use by another training run: process {first.pid} on "
        f"host {HOST}, started "
    ) in second.stderr, second.stderr[-3000:]
    assert "Wait for that run to finish, stop it, or use another output_dir (--output_dir)." in second.stderr
    assert "Saved the trained model" not in second.stdout
    assert refused_after < 120, refused_after  # no model was loaded, no step run
    assert first.returncode == 0, output[-3000:]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 6
    assert checkpoints.find_resumable_checkpoint(str(out)) == str(out / "checkpoint-6")
    assert checkpoints.checkpoint_problems(str(out / "checkpoint-6")) == []
    checkpoints.check_output_dir_free(str(out))


def _main(argv):
    assert main(argv) == 0


def test_a_killed_run_does_not_block_its_own_resume(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    argv = ["train", "rloo", "--model_name_or_path", tiny_model_dir, "--output_dir", str(out), *FAST]
    assert run_forked(_main, argv, kill_at="checkpoint:saved@2") == -9  # kill -9 while it holds the lock
    record = (out / checkpoints.LOCK_FILE).read_text()
    assert "pid=" in record and f"pid={os.getpid()}\n" not in record  # the dead child's record is still there
    assert main([*argv, "--resume_from_checkpoint", "latest"]) == 0
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3
    checkpoints.check_output_dir_free(str(out))


def test_a_probe_does_not_refuse_a_run_that_starts_meanwhile(tmp_path, monkeypatch):
    import fcntl

    from trl_basics.checkpoints import lock as lock_module

    (tmp_path / checkpoints.LOCK_FILE).write_text("pid=999999\nhost=elsewhere\nstarted=then\n")
    probe = os.open(tmp_path / checkpoints.LOCK_FILE, os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a second run's probe, at the very moment this one starts
    real_sleep = time.sleep

    def sleep(seconds):  # the probe lets go while the run waits
        os.close(probe)
        monkeypatch.setattr(lock_module.time, "sleep", real_sleep)
        real_sleep(seconds)

    monkeypatch.setattr(lock_module.time, "sleep", sleep)
    checkpoints.RunLock(str(tmp_path)).acquire().release()
