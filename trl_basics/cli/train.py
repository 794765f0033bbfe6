"""`trl-basics train ALGO`: one training run, configured by flags and/or a YAML file through TRL's parser."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser, get_peft_config

from ..callbacks import GracefulInterrupt
from .algorithms import get_algorithm
from .loading import load_prompts, resolve_model, reward_sources


@dataclass
class TrainScriptArguments:
    """What to train on. Model options come from TRL's ``ModelConfig``, training options from the algorithm's config."""

    dataset_name: str = field(
        default="kit:token_kind",
        metadata={
            "help": "Prompts: 'kit:<task>' (built-in synthetic task with its own verifiable reward), a local "
            ".jsonl/.json/.parquet/.csv file or saved dataset folder with a 'prompt' column, or a name for "
            "datasets.load_dataset."
        },
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on (named datasets)."})
    num_prompts: int = field(default=4096, metadata={"help": "Prompts to generate for a kit:<task> data set."})
    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A saved sequence-classification reward model (folder or model id)."}
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Reward functions as 'package.module:function' (installed modules only; nothing is eval'd)."},
    )


def make_parser(algorithm_name: str, prog: str | None = None) -> TrlParser:
    algorithm = get_algorithm(algorithm_name)
    parser = TrlParser(
        (TrainScriptArguments, algorithm.config_class(), ModelConfig),
        prog=prog or f"trl-basics train {algorithm_name}",
        description=algorithm.summary,
    )
    parser.set_defaults(output_dir=f"trl-basics-output/{algorithm_name}", **machine_defaults(), **algorithm.defaults)
    return parser


def machine_defaults() -> dict:
    """Without a GPU, default to the CPU in full precision (TRL's bf16 default fails there)."""
    import torch

    if torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()):
        return {}
    return {"use_cpu": True, "bf16": False}


def build_trainer(algorithm_name: str, script_args, config, model_args, callbacks=()):
    """The trainer for ``algorithm_name``, exactly as a TRL script would build it."""
    algorithm = get_algorithm(algorithm_name)
    # Cheapest checks first, so a typo fails before anything is built.
    rewards = reward_sources(script_args.reward_model_name_or_path, script_args.reward_funcs, script_args.dataset_name)
    dataset = load_prompts(script_args.dataset_name, script_args.dataset_train_split, script_args.num_prompts, config.seed)
    model = resolve_model(model_args.model_name_or_path, config.output_dir)
    return algorithm.trainer_class()(
        model=model,
        reward_funcs=rewards,
        args=config,
        train_dataset=dataset,
        peft_config=get_peft_config(model_args),
        callbacks=list(callbacks),
    )


def run(algorithm_name: str, argv: list[str]) -> int:
    parser = make_parser(algorithm_name)
    script_args, config, model_args = parser.parse_args_and_config(argv)
    interrupt = GracefulInterrupt()
    trainer = build_trainer(algorithm_name, script_args, config, model_args, callbacks=[interrupt])
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    if interrupt.received is not None:
        print(
            f"Stopped by a signal at step {trainer.state.global_step}; the checkpoint is in {config.output_dir}. "
            f"Resume with the same command plus --resume_from_checkpoint "
            f"{config.output_dir}/checkpoint-{trainer.state.global_step}"
        )
        trainer.save_state()
        return 130
    trainer.save_model(config.output_dir)
    trainer.save_state()  # trainer_state.json: the full metric history, read by `compare`, `ablate` and `demo`
    print(f"Saved the trained model to {config.output_dir}")
    return 0
