"""The `trl-basics` command: `train`, `demo`, `compare`, `ablate`, `reproduce` and `plugins`.

Subcommand dispatch is a plain argument parser, as in TRL's own `trl` command; every subcommand parses its flags
(and an optional `--config` YAML file) with TRL's `TrlParser`, so every config field is a flag with its help text.
"""

from __future__ import annotations

import os
import sys
import traceback

from ..algorithms import ALGORITHMS
from .environment import LAUNCH_ENVIRONMENT  # read here, before any YAML `env:` block; child runs start from it
from .errors import did_you_mean

USAGE = """usage: trl-basics COMMAND [ARGS]

commands:
  demo                 the whole RLHF pipeline on the built-in tiny model and task (SFT, reward model, RL with
                       RLOO, REINFORCE++, REINFORCE++-baseline, PPO-max and TRL's GRPO); writes a report with plots
  train ALGO           train one algorithm: {algorithms}
  compare              run several algorithms side by side on one task and seed; writes a table and plots
  ablate ALGO          switch each trick of ALGO off in turn; writes a table and plots
  reproduce [PAPER]    measure the claims of the RLOO, REINFORCE++ and PPO-max papers (rloo, reinforce_pp,
                       ppo_max; all by default) over several seeds; writes claims tables, plots and claims.json
  plugins              list the installed tricks, advantage estimators and KL estimators

Run `trl-basics COMMAND --help` for the flags of a command.
"""


COMMANDS = ("demo", "train", "compare", "ablate", "reproduce", "plugins")
BUG_NOTE = (
    "This is a bug in trl_basics or a library it uses, not a problem with your input: please report it with the "
    "command and the traceback above."
)


def smoke_flags(command: str, argv: list[str]) -> list[str]:
    """With TRL_BASICS_SMOKE set, the demo's SFT and reward-model phases and its evaluation shrink too (each RL run
    is capped by `train`)."""
    if command != "demo" or os.environ.get("TRL_BASICS_SMOKE", "").strip() in ("", "0"):
        return argv
    given = {token.split("=", 1)[0] for token in argv}
    extra = [["--sft_steps", "2"], ["--reward_model_steps", "2"], ["--eval_prompts", "16"]]
    extra = [pair for pair in extra if pair[0] not in given]
    if extra:
        print(f"trl-basics: TRL_BASICS_SMOKE is set: {' '.join(' '.join(pair) for pair in extra)}", file=sys.stderr)
    return argv + [token for pair in extra for token in pair]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = USAGE.format(algorithms=", ".join(ALGORITHMS))
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        hint = did_you_mean(command, COMMANDS)
        print(f"trl-basics: unknown command {command!r}.{hint}\n\n{usage}", file=sys.stderr)
        return 2
    if command == "train" and (not rest or rest[0].startswith("-")):
        print(f"trl-basics train: name an algorithm first: {', '.join(ALGORITHMS)}", file=sys.stderr)
        return 2
    name = (
        f"{command} {rest[0]}" if command in ("train", "ablate") and rest and not rest[0].startswith("-") else command
    )
    try:
        if command == "train":
            from .train import run

            return run(rest[0], rest[1:])
        if command in ("demo", "compare", "ablate", "reproduce"):
            return run_experiment(command, smoke_flags(command, rest))
        from ..plugins import Registry, describe

        for kind, plugin, origin in describe(Registry.from_plugin_manager()):
            print(f"{kind:20} {plugin:20} {origin}")
        return 0
    except ValueError as err:  # bad input: say what and how to fix it, without a traceback
        print(f"trl-basics {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"trl-basics {name}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - reported as a problem with the input
        traceback.print_exc()
        print(f"trl-basics {name}: {BUG_NOTE}", file=sys.stderr)
        return 1


def run_experiment(command: str, argv: list[str]) -> int:
    """`demo`, `compare`, `ablate` or `reproduce` (each imports TRL's parser, so only when asked for)."""
    if command == "reproduce":
        from .reproduce import run_reproduce

        return run_reproduce(argv)
    if command == "demo":
        from .demo import run_demo

        return run_demo(argv)
    if command == "compare":
        from .compare import run_compare

        return run_compare(argv)
    from .ablate import run_ablate

    return run_ablate(argv)


__all__ = ["BUG_NOTE", "COMMANDS", "LAUNCH_ENVIRONMENT", "USAGE", "main", "run_experiment", "smoke_flags"]


if __name__ == "__main__":
    raise SystemExit(main())
