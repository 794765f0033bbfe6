"""A disk that fills up during a save, at every write the save makes: one clear error, older checkpoints intact,
no new checkpoint that looks complete, and a resume, once there is space again, that continues exactly."""

from __future__ import annotations

import builtins
import errno
import hashlib
import os
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch
import transformers.modeling_utils

from trl_basics import checkpoints

from .conftest import assert_same_checkpoint, make_trainer


class _CountedFile:
    """A file opened for writing whose first ``write`` counts as one write of the save (and may fail)."""

    def __init__(self, handle, disk, path):
        self._handle, self._disk, self._path, self._counted = handle, disk, path, False

    def write(self, data):
        if not self._counted:
            self._counted = True
            self._disk.hit(self._path)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __iter__(self):
        return iter(self._handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)


class FullDisk:
    """Counts the files a save writes under ``root`` (Python file writes, ``torch.save``, safetensors); the
    ``fail_at``-th raises ``OSError(code)`` before any of its bytes is written (``None``: only count)."""

    def __init__(self, root, fail_at=None, code=errno.ENOSPC):
        self.root = os.path.abspath(root)
        self.fail_at, self.code, self.writes = fail_at, code, []
        self._patches = pytest.MonkeyPatch()

    def hit(self, path):
        if not isinstance(path, (str, os.PathLike)):
            return
        path = os.path.abspath(os.fspath(path))
        if not (path == self.root or path.startswith(self.root + os.sep)):
            return
        self.writes.append(path)
        if len(self.writes) == self.fail_at:
            raise OSError(self.code, os.strerror(self.code), path)

    def __enter__(self):
        real_open, real_torch_save, real_safe_save = builtins.open, torch.save, safetensors.torch.save_file

        def open_(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            writing = isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+")
            return _CountedFile(handle, self, file) if writing else handle

        def torch_save(obj, f, *args, **kwargs):
            self.hit(f)
            return real_torch_save(obj, f, *args, **kwargs)

        def safe_save(tensors, filename, *args, **kwargs):
            self.hit(filename)
            return real_safe_save(tensors, filename, *args, **kwargs)

        self._patches.setattr(builtins, "open", open_)
        self._patches.setattr(torch, "save", torch_save)
        self._patches.setattr(safetensors.torch, "save_file", safe_save)
        self._patches.setattr(transformers.modeling_utils, "safe_save_file", safe_save)
        return self

    def __exit__(self, *exc):
        self._patches.undo()


def digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_full_disk_at_any_write_of_a_save_leaves_the_older_checkpoint(tmp_path, tiny_model_dir, task, dataset):
    out = tmp_path / "run"
    trainer = make_trainer("rloo", tiny_model_dir, task, dataset, out, max_steps=1, keep=2)
    trainer.train()
    first, second = out / "checkpoint-1", out / "checkpoint-2"
    before = digest(first)
    trainer.state.global_step = 2
    with FullDisk(second) as disk:  # one save without a failure: how many files it writes
        trainer._save_checkpoint(trainer.model, None)
    total = len(disk.writes)
    # config, generation config, weights, tokenizer files, training args, optimizer, scheduler, rng, trainer state,
    # trick state, marker (tokenizers writes tokenizer.json from Rust: not counted here)
    assert total >= 12, disk.writes
    assert checkpoints.find_resumable_checkpoint(str(out)) == str(second)
    checkpoints.rotate(str(out), str(first), 10, None)
    shutil.rmtree(second)

    for fail_at in range(1, total + 1):
        with FullDisk(second, fail_at=fail_at) as disk, pytest.raises(checkpoints.DiskFullError) as caught:
            trainer._save_checkpoint(trainer.model, None)
        message, failed = str(caught.value), disk.writes[-1]
        assert message == (
            f"No space left on device while saving checkpoint {second} at step 2 (writing {failed}); the run "
            f"stopped. The incomplete checkpoint was removed. The newest complete checkpoint, {first}, is intact. "
            "Free space on that disk (or delete files you do not need, or lower save_total_limit), then resume: "
            "trainer.train(resume_from_checkpoint=True), or the same command with --resume_from_checkpoint latest."
        ), f"write {fail_at} ({failed})"
        cause = checkpoints.disk_full_cause(caught.value.__cause__)
        assert cause is not None and cause.errno == errno.ENOSPC
        assert not second.exists(), f"write {fail_at} ({failed})"
        assert checkpoints.find_resumable_checkpoint(str(out)) == str(first)
        assert checkpoints.checkpoint_problems(str(first)) == []
        assert digest(first) == before, f"write {fail_at} ({failed})"


def test_a_quota_and_no_checkpoint_yet(tmp_path, tiny_model_dir, task, dataset):
    out = tmp_path / "run"
    with FullDisk(out / "checkpoint-1", fail_at=2, code=errno.EDQUOT), pytest.raises(checkpoints.DiskFullError) as e:
        make_trainer("rloo", tiny_model_dir, task, dataset, out, max_steps=2).train()
    message = str(e.value)
    assert message.startswith(f"Disk quota exceeded while saving checkpoint {out / 'checkpoint-1'} at step 1 ")
    assert message.endswith(
        f"There is no complete checkpoint in {out} yet, so there is nothing to resume from. Free space on that disk "
        "(or use an output_dir on another disk), then start the run again."
    )
    assert not (out / "checkpoint-1").exists()
    assert not checkpoints.RunLock(str(out)).acquire().release()  # the run let go of its output_dir


def test_resume_after_the_disk_frees_continues_exactly(tmp_path, tiny_model_dir, task, dataset):
    make_trainer("rloo", tiny_model_dir, task, dataset, tmp_path / "reference", max_steps=3).train()

    out = tmp_path / "run"
    with FullDisk(out / "checkpoint-2", fail_at=3), pytest.raises(checkpoints.DiskFullError, match="checkpoint-1, is"):
        make_trainer("rloo", tiny_model_dir, task, dataset, out, max_steps=3).train()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]

    resumed = make_trainer("rloo", tiny_model_dir, task, dataset, out, max_steps=3)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 3
    assert_same_checkpoint(out / "checkpoint-3", tmp_path / "reference" / "checkpoint-3")


def test_writers_that_do_not_raise_oserror_are_recognised(tmp_path, monkeypatch):
    from trl_basics.checkpoints import disk_full

    rust = RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '' })")
    assert checkpoints.disk_full_cause(rust).errno == errno.ENOSPC
    assert checkpoints.disk_full_cause(ValueError("x")) is None
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert checkpoints.disk_full_cause(wrapped).errno == errno.EDQUOT
    torch_error = RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                               "data/0: file write failed")  # fmt: skip
    assert checkpoints.disk_full_cause(torch_error, str(tmp_path)) is None  # there is space: some other fault
    monkeypatch.setattr(disk_full, "_free_bytes", lambda folder: 0)
    assert checkpoints.disk_full_cause(torch_error, str(tmp_path / "checkpoint-9")).errno == errno.ENOSPC
    assert checkpoints.disk_full_cause(torch_error) is None  # without the folder nothing can be told


def test_the_command_line_says_it_in_one_line_and_resumes(tmp_path, tiny_model_dir, capsys):
    from trl_basics.cli import main

    from .test_cli_resume import FAST

    out = tmp_path / "run"
    argv = ["train", "rloo", "--model_name_or_path", tiny_model_dir, "--output_dir", str(out), *FAST]
    with FullDisk(out / "checkpoint-2", fail_at=1):
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        f"trl-basics train rloo: error: No space left on device while saving checkpoint {out / 'checkpoint-2'} " in err
    )
    assert f"The newest complete checkpoint, {out / 'checkpoint-1'}, is intact." in err
    assert "Traceback" not in err
    assert main([*argv, "--resume_from_checkpoint", "latest"]) == 0
    assert checkpoints.find_resumable_checkpoint(str(out)) == str(out / "checkpoint-3")
