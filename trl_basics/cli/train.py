"""`trl-basics train ALGO`: one training run, configured by flags and/or a YAML file through TRL's parser.

Order of work: the flags are checked against the stored flag list (no torch import; see `flags.py`), then TRL's
parser reads them, then every input is checked (output folder, data set, reward sources, tools and environment,
model) before anything is written, and only then are the model and the trainer built. A run that fails before
training starts removes what it wrote in ``--output_dir``.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Collection
from pathlib import Path

from .errors import UsageError, lookup_algorithm
from .flags import check_train_args
from .loading import (
    KIT_PREFIX,
    check_dataset_source,
    check_local_pretrained,
    check_pretrained,
    check_prompt_dataset,
    check_reward_spec,
    context_length,
    is_kit_model,
    kit_task,
    load_prompts,
    resolve_model,
    reward_sources,
)
from .multi_turn import check_multi_turn, is_kit_tool_task, multi_turn_inputs
from .parser import make_parser, script_arguments_class

SMOKE_ENV = "TRL_BASICS_SMOKE"
SMOKE_MAX_STEPS = 2
RESUME_LATEST = ("latest", "true")


def __getattr__(name: str):
    if name == "TrainScriptArguments":
        return script_arguments_class()
    raise AttributeError(name)


def say(message: str) -> None:
    print(f"trl-basics: {message}", file=sys.stderr, flush=True)


# --- the output folder -----------------------------------------------------------------------------------------------


def check_output_dir(output_dir: str) -> None:
    """Refuse an output folder that cannot be created or written, without creating it."""
    path = Path(output_dir).expanduser().absolute()
    for part in path.parts:
        if len(os.fsencode(part)) > 255:
            raise UsageError(f"cannot create --output_dir {output_dir!r}: the name {part[:40]!r}... is too long.")
    try:
        _check_writable(path, output_dir)
    except OSError as err:
        raise UsageError(
            f"cannot use --output_dir {output_dir!r}: {err.strerror}. Choose another --output_dir."
        ) from None


def _check_writable(path: Path, output_dir: str) -> None:
    if path.exists() and not path.is_dir():
        raise UsageError(f"--output_dir {output_dir!r} is a file, not a folder. Choose another --output_dir.")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(
            f"cannot create --output_dir {output_dir!r}: {str(ancestor)!r} is a file. Choose another --output_dir."
        )
    try:  # the only sure test of "can write here" (root ignores permission bits; some file systems are read-only)
        os.rmdir(tempfile.mkdtemp(prefix=".trl-basics-probe-", dir=ancestor))
    except OSError as err:
        raise UsageError(
            f"cannot write --output_dir {output_dir!r}: {err.strerror} in {str(ancestor)!r}. Choose a folder you can "
            "write to with --output_dir."
        ) from None


class OutputGuard:
    """Remembers what ``output_dir`` held; `clean` removes whatever was added since (a failed start leaves nothing)."""

    def __init__(self, output_dir: str) -> None:
        self.path = Path(output_dir).expanduser().absolute()
        top = self.path
        while not top.parent.exists():
            top = top.parent
        self.created = None if self.path.exists() else top  # the outermost folder this run creates
        self.before = set(self.path.iterdir()) if self.path.exists() else set()

    def clean(self) -> None:
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
            return
        for entry in set(self.path.iterdir()) - self.before if self.path.exists() else ():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


# --- building the run ------------------------------------------------------------------------------------------------


def precheck(algorithm_name: str, given: dict) -> None:
    """The checks that need no torch, on the values the command line and the YAML file give."""
    check_output_dir(str(given.get("output_dir") or f"trl-basics-output/{algorithm_name}"))
    if not given.get("datasets"):
        check_dataset_source(str(given.get("dataset_name") or "kit:token_kind"))
    specs = given.get("reward_funcs") or []
    for spec in [specs] if isinstance(specs, str) else specs:
        check_reward_spec(str(spec))
    dataset_name = None if given.get("datasets") else str(given.get("dataset_name") or "kit:token_kind")
    check_multi_turn(algorithm_name, given.get("tools"), given.get("environment_factory"), dataset_name)
    output_dir = Path(str(given.get("output_dir") or f"trl-basics-output/{algorithm_name}")).expanduser()
    if resume_value(given.get("resume_from_checkpoint")) is True and not any(output_dir.glob("checkpoint-*")):
        raise UsageError(
            f"--resume_from_checkpoint {given['resume_from_checkpoint']}: there is no checkpoint in --output_dir "
            f"{str(output_dir)!r} to resume from. Point --output_dir at the earlier run's folder, or drop the flag to "
            "start afresh."
        )
    for flag in ("model_name_or_path", "reward_model_name_or_path"):
        value = given.get(flag)
        if value and not is_kit_model(str(value)):
            check_local_pretrained(str(value), f"--{flag}")


def check_inputs(script_args, config, model_args) -> None:
    """Every cheap check, in the order a user fixes things: where to write, what to train on, rewards, model."""
    check_output_dir(config.output_dir)
    if not script_args.datasets:
        check_dataset_source(script_args.dataset_name)
    if model_args.model_name_or_path and not is_kit_model(model_args.model_name_or_path):
        check_pretrained(model_args.model_name_or_path, "--model_name_or_path")


def load_datasets(script_args, config, explicit: Collection[str]):
    """(train, eval or None) the way TRL's scripts load them: a `datasets:` mixture, else ``--dataset_name``."""
    want_eval = str(getattr(config.eval_strategy, "value", config.eval_strategy)) != "no"
    if script_args.datasets:
        from trl import get_dataset

        if "dataset_name" in explicit:
            say("a `datasets:` mixture is given, so --dataset_name is ignored (as in TRL's scripts)")
        try:
            mixture = get_dataset(script_args)
        except Exception as err:  # noqa: BLE001 - reported as a problem with the input
            raise UsageError(f"cannot load the `datasets:` mixture: {type(err).__name__}: {err}") from None
        for split in [script_args.dataset_train_split] + ([script_args.dataset_test_split] if want_eval else []):
            if split not in mixture:
                raise UsageError(
                    f"the `datasets:` mixture has no split {split!r} (it has {', '.join(mixture)}); set test_split_size "
                    "in the YAML file or --dataset_train_split/--dataset_test_split."
                )
        train = check_prompt_dataset(mixture[script_args.dataset_train_split], "the `datasets:` mixture")
        evaluation = mixture[script_args.dataset_test_split] if want_eval else None
        return train, evaluation
    name = script_args.dataset_name
    train = load_prompts(
        name, script_args.dataset_train_split, script_args.num_prompts, config.seed, script_args.dataset_config
    )
    if not want_eval:
        return train, None
    if name.startswith(KIT_PREFIX):
        return train, kit_task(name).make_dataset(256, seed=10_000 + config.seed)
    if Path(name).expanduser().exists():
        raise UsageError(
            f"--eval_strategy {config.eval_strategy} needs a test split, and the local dataset {name!r} has only one. "
            "Use a named dataset with a test split, a `datasets:` mixture with test_split_size, or --eval_strategy no."
        )
    return train, load_prompts(
        name, script_args.dataset_test_split, seed=config.seed, config=script_args.dataset_config
    )


def fit_completion_length(
    config, model_config: dict, dataset_name: str, explicit: Collection[str], kit_model: bool
) -> None:
    """When --max_completion_length was not given and TRL's default does not fit the model, pick one and say so."""
    if "max_completion_length" in explicit or config.max_completion_length is None:
        return
    positions = context_length(model_config)
    if dataset_name.startswith(KIT_PREFIX) and kit_model:
        from ..kit.recipes import TASK_RL_KWARGS, TOOL_TASK_RL_KWARGS

        recipes = TOOL_TASK_RL_KWARGS if is_kit_tool_task(dataset_name) else TASK_RL_KWARGS
        length = recipes[dataset_name.removeprefix(KIT_PREFIX)]["max_completion_length"]
        reason = f"the recipe for {dataset_name} on the kit model ({positions} positions)"
    elif positions is not None and config.max_completion_length >= positions:
        length = positions // 2
        reason = f"half the model's {positions} positions; the default {config.max_completion_length} does not fit"
    else:
        return
    if length != config.max_completion_length:
        say(f"max_completion_length={length} ({reason}); set --max_completion_length to choose another")
        config.max_completion_length = length


def apply_smoke(config) -> None:
    smoke = os.environ.get(SMOKE_ENV, "").strip() not in ("", "0")
    if smoke and (config.max_steps <= 0 or config.max_steps > SMOKE_MAX_STEPS):
        say(f"{SMOKE_ENV} is set: max_steps={SMOKE_MAX_STEPS} (was {config.max_steps})")
        config.max_steps = SMOKE_MAX_STEPS


def resume_value(value):
    """``--resume_from_checkpoint latest`` or ``true`` (any case) mean the newest complete checkpoint (True)."""
    if isinstance(value, str) and value.strip().lower() in RESUME_LATEST:
        return True
    return value


def build_trainer(algorithm_name: str, script_args, config, model_args, callbacks=(), explicit: Collection[str] = ()):
    """The trainer for ``algorithm_name``, exactly as a TRL script would build it (call `check_inputs` first)."""
    from trl import get_peft_config

    algorithm = lookup_algorithm(algorithm_name)
    rewards = reward_sources(
        script_args.reward_model_name_or_path,
        script_args.reward_funcs,
        script_args.dataset_name if not script_args.datasets else "",
        max_completion_length=config.max_completion_length,
    )
    dataset_name = script_args.dataset_name if not script_args.datasets else ""
    multi_turn = multi_turn_inputs(script_args.tools, script_args.environment_factory, dataset_name)
    train_dataset, eval_dataset = load_datasets(script_args, config, explicit)
    kit_model = is_kit_model(model_args.model_name_or_path)
    model = resolve_model(model_args.model_name_or_path, config.output_dir, byte_level=is_kit_tool_task(dataset_name))
    model_config = check_pretrained(model, "--model_name_or_path")
    fit_completion_length(config, model_config, script_args.dataset_name, explicit, kit_model)
    return algorithm.trainer_class()(
        model=model,
        reward_funcs=rewards,
        args=config,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
        callbacks=list(callbacks),
        **multi_turn,
    )


def _stop_on_sigterm():
    def stop(signum, frame):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread
        return None


def run(algorithm_name: str, argv: list[str]) -> int:
    prog = f"trl-basics train {algorithm_name}"
    lookup_algorithm(algorithm_name)
    explicit = check_train_args(algorithm_name, argv, prog)  # fast: no torch yet
    precheck(algorithm_name, explicit)
    from transformers import TrainerCallback

    from ..callbacks import GracefulInterrupt

    parser = make_parser(algorithm_name)
    script_args, config, model_args = parser.parse_args_and_config(argv)
    apply_smoke(config)
    check_inputs(script_args, config, model_args)
    from ..checkpoints import OutputDirInUseError, check_output_dir_free

    check_output_dir_free(config.output_dir)  # a live run there: refused before any model loads

    class Started(TrainerCallback):
        began = False

        def on_train_begin(self, args, state, control, **kwargs):
            Started.began = True

    interrupt = GracefulInterrupt()
    guard = OutputGuard(config.output_dir)
    previous = _stop_on_sigterm()  # until training begins (then GracefulInterrupt takes over), SIGTERM cleans up too
    try:
        trainer = build_trainer(
            algorithm_name, script_args, config, model_args, callbacks=[interrupt, Started()], explicit=explicit
        )
        trainer.train(resume_from_checkpoint=resume_value(config.resume_from_checkpoint))
    except BaseException as err:
        if not Started.began and not isinstance(err, OutputDirInUseError):  # what is there belongs to the live run
            guard.clean()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if interrupt.received is not None:
        print(
            f"Stopped by a signal at step {trainer.state.global_step}; the checkpoint is in {config.output_dir}. "
            "Resume with the same command plus --resume_from_checkpoint latest"
        )
        trainer.save_state()
        return 130
    trainer.save_model(config.output_dir)
    trainer.save_state()  # trainer_state.json: the full metric history, read by `compare`, `ablate` and `demo`
    print(f"Saved the trained model to {config.output_dir}")
    return 0
