"""An ordinary TRL RLOO pipeline, switched to trl_basics by changing one import.

    python examples/rloo.py --output_dir trl-basics-output/rloo
    python examples/rloo.py --output_dir trl-basics-output/rloo --reward_norm running --reward_clip 3
    python examples/rloo.py --output_dir trl-basics-output/rloo --paper_faithful true
"""

from _common import ExampleArguments, example_defaults, prepare, report
from trl import TrlParser

# from trl import RLOOConfig, RLOOTrainer
from trl_basics import RLOOConfig, RLOOTrainer


def main() -> None:
    parser = TrlParser((ExampleArguments, RLOOConfig))
    parser.set_defaults(output_dir="trl-basics-output/rloo", **example_defaults())
    example, training_args = parser.parse_args_and_config()
    model, task, dataset = prepare(example, training_args.output_dir)
    trainer = RLOOTrainer(model=model, reward_funcs=task.reward_func, args=training_args, train_dataset=dataset)
    trainer.train()
    report(trainer)


if __name__ == "__main__":
    main()
