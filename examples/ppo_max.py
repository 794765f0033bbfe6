"""An ordinary TRL GRPO pipeline, switched to PPO-max (a critic, GAE and the PPO-max tricks) by changing one import.

    python examples/ppo_max.py --output_dir trl-basics-output/ppo_max
    python examples/ppo_max.py --output_dir trl-basics-output/ppo_max_rm --reward_model_path PATH  # critic from the RM
    # On GPUs, with DeepSpeed (the kit defaults are CPU ones; override them):
    accelerate launch --config_file examples/accelerate/deepspeed_zero2.yaml examples/ppo_max.py \
        --use_cpu false --bf16 true --model_name_or_path YOUR_SFT_MODEL --reward_model_path YOUR_REWARD_MODEL

On the kit's tiny model and ``token_kind`` task it runs on a CPU in well under a minute (100 steps) and prints the mean
reward of the first and last steps, e.g. 0.42 -> 0.96.
"""

from dataclasses import dataclass, field

from _common import ExampleArguments, example_defaults, prepare, report
from trl import TrlParser

# from trl import GRPOConfig, GRPOTrainer
from trl_basics import PPOMaxConfig as GRPOConfig
from trl_basics import PPOMaxTrainer as GRPOTrainer


@dataclass
class PPOMaxExampleArguments(ExampleArguments):
    reward_model_path: str | None = field(
        default=None,
        metadata={"help": "A reward model (sequence classification, one output) to score with instead of the task's "
                  "function; the critic then starts from it (PPO-max)."},
    )  # fmt: skip


def main() -> None:
    parser = TrlParser((PPOMaxExampleArguments, GRPOConfig))
    # PPO-max owns the KL (kl_coef, in the reward); GRPO's beta stays 0. One sample per prompt: the critic is the
    # baseline. The tiny critic learns at the policy's (large) kit learning rate.
    defaults = example_defaults(exclude=("beta", "num_generations"))
    parser.set_defaults(
        output_dir="trl-basics-output/ppo_max", critic_learning_rate=defaults["learning_rate"], **defaults
    )
    example, training_args = parser.parse_args_and_config()
    model, task, dataset = prepare(example, training_args.output_dir)
    reward = example.reward_model_path or task.reward_func
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=training_args, train_dataset=dataset)
    trainer.train()
    trainer.save_model()  # the policy, and the critic in <output_dir>/critic
    report(trainer)


if __name__ == "__main__":
    main()
