"""An ordinary TRL GRPO pipeline, switched to REINFORCE++ by changing one import.

    python examples/reinforce_pp.py --output_dir trl-basics-output/reinforce_pp
    python examples/reinforce_pp.py --output_dir trl-basics-output/reinforce_pp_baseline --baseline group
"""

from _common import ExampleArguments, example_defaults, prepare, report
from trl import TrlParser

# from trl import GRPOConfig, GRPOTrainer
from trl_basics import ReinforcePlusPlusConfig as GRPOConfig
from trl_basics import ReinforcePlusPlusTrainer as GRPOTrainer


def main() -> None:
    parser = TrlParser((ExampleArguments, GRPOConfig))
    # REINFORCE++ owns the KL (kl_coef, in the reward); GRPO's beta stays 0.
    parser.set_defaults(output_dir="trl-basics-output/reinforce_pp", **example_defaults(exclude=("beta",)))
    example, training_args = parser.parse_args_and_config()
    model, task, dataset = prepare(example, training_args.output_dir)
    trainer = GRPOTrainer(model=model, reward_funcs=task.reward_func, args=training_args, train_dataset=dataset)
    trainer.train()
    report(trainer)


if __name__ == "__main__":
    main()
