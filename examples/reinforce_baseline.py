"""REINFORCE with a moving-average baseline (Back to Basics), in the shape of a TRL RLOO pipeline.

    python examples/reinforce_baseline.py --output_dir trl-basics-output/reinforce_baseline --num_generations 1
"""

from _common import ExampleArguments, example_defaults, prepare, report
from trl import TrlParser

# from trl import RLOOConfig, RLOOTrainer
from trl_basics import ReinforceWithBaselineConfig as RLOOConfig
from trl_basics import ReinforceWithBaselineTrainer as RLOOTrainer


def main() -> None:
    parser = TrlParser((ExampleArguments, RLOOConfig))
    parser.set_defaults(output_dir="trl-basics-output/reinforce_baseline", **example_defaults())
    example, training_args = parser.parse_args_and_config()
    model, task, dataset = prepare(example, training_args.output_dir)
    trainer = RLOOTrainer(model=model, reward_funcs=task.reward_func, args=training_args, train_dataset=dataset)
    trainer.train()
    report(trainer)


if __name__ == "__main__":
    main()
