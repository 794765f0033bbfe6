"""Tiny-model kit: a local word-level tokenizer, tiny random Llama models and learnable synthetic RL tasks.

Everything is built locally (nothing is downloaded), small enough to train with TRL on a CPU in seconds::

    from trl import RLOOConfig, RLOOTrainer
    from trl_basics.kit import get_task, limit_torch_threads, recommended_rl_kwargs, save_tiny_model

    path = save_tiny_model("out/tiny")
    task = get_task("target_letter")
    args = RLOOConfig(output_dir="out/run", **recommended_rl_kwargs(task.name))
    trainer = RLOOTrainer(model=str(path), reward_funcs=task.reward_func, args=args,
                          train_dataset=task.make_dataset(2000, seed=0))
    with limit_torch_threads(1):  # tiny models: one thread is faster and robust to a busy machine
        trainer.train()
"""

from trl_basics.kit.model import (
    build_tiny_model,
    build_tiny_reward_model,
    build_tiny_value_model,
    load_tiny_model,
    save_tiny_model,
    save_tiny_reward_model,
    tiny_llama_config,
)
from trl_basics.kit.recipes import CPU_RL_KWARGS, TASK_RL_KWARGS, limit_torch_threads, recommended_rl_kwargs
from trl_basics.kit.tasks import (
    EXACT_LENGTH,
    TARGET_LETTER,
    TASKS,
    TOKEN_KIND,
    ExactLengthTask,
    RewardFunc,
    SyntheticTask,
    TargetLetterTask,
    TokenKindTask,
    completion_text,
    exact_length_reward,
    get_task,
    prompt_text,
    split_words,
    target_letter_reward,
    token_kind_reward,
)
from trl_basics.kit.tokenizer import CHAT_TEMPLATE, DEFAULT_VOCAB, SPECIAL_TOKENS, build_tokenizer

__all__ = [
    "CHAT_TEMPLATE",
    "CPU_RL_KWARGS",
    "DEFAULT_VOCAB",
    "EXACT_LENGTH",
    "SPECIAL_TOKENS",
    "TARGET_LETTER",
    "TASKS",
    "TASK_RL_KWARGS",
    "TOKEN_KIND",
    "ExactLengthTask",
    "RewardFunc",
    "SyntheticTask",
    "TargetLetterTask",
    "TokenKindTask",
    "build_tiny_model",
    "build_tiny_reward_model",
    "build_tiny_value_model",
    "build_tokenizer",
    "completion_text",
    "exact_length_reward",
    "get_task",
    "limit_torch_threads",
    "load_tiny_model",
    "prompt_text",
    "recommended_rl_kwargs",
    "save_tiny_model",
    "save_tiny_reward_model",
    "split_words",
    "target_letter_reward",
    "tiny_llama_config",
    "token_kind_reward",
]
