"""Helpers shared by the trainer tests (imported by the conftest files of tests/trainers and tests/ppo_max)."""


def cpu_kwargs(output_dir, **overrides):
    """A few fast CPU steps: fp32, no checkpointing, no logging backends, nothing saved unless asked."""
    kwargs = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        learning_rate=3e-3,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=4,
        max_steps=2,
        seed=0,
    )
    kwargs.update(overrides)
    return kwargs


def logged(trainer, name):
    """Every logged value of a metric, in step order."""
    return [entry[name] for entry in trainer.state.log_history if name in entry]
