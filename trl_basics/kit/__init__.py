"""Tiny-model kit: local tokenizers (word-level, and byte-level for tool calls), tiny random Llama models, learnable
synthetic RL tasks and tool-use tasks (a calculator tool, a guess-the-number environment).

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

from trl_basics.kit.byte_model import save_tiny_byte_model
from trl_basics.kit.byte_tokenizer import build_byte_tokenizer, load_tool_chat_template
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
from trl_basics.kit.tool_rollout import opening_call_rollout
from trl_basics.kit.tool_tasks import (
    GUESS_NUMBER_TASK,
    MULTIPLY_TOOL_TASK,
    TOOL_TASKS,
    GuessNumberEnvironment,
    ToolTask,
    guess_number_reward,
    multiply,
    multiply_reward,
    tool_call_reward,
    tool_corpus,
)

__all__ = [
    "CHAT_TEMPLATE",
    "CPU_RL_KWARGS",
    "DEFAULT_VOCAB",
    "EXACT_LENGTH",
    "GUESS_NUMBER_TASK",
    "MULTIPLY_TOOL_TASK",
    "SPECIAL_TOKENS",
    "TARGET_LETTER",
    "TASKS",
    "TASK_RL_KWARGS",
    "TOKEN_KIND",
    "TOOL_TASKS",
    "ExactLengthTask",
    "GuessNumberEnvironment",
    "RewardFunc",
    "SyntheticTask",
    "TargetLetterTask",
    "TokenKindTask",
    "ToolTask",
    "build_byte_tokenizer",
    "build_tiny_model",
    "build_tiny_reward_model",
    "build_tiny_value_model",
    "build_tokenizer",
    "completion_text",
    "exact_length_reward",
    "get_task",
    "guess_number_reward",
    "limit_torch_threads",
    "load_tiny_model",
    "load_tool_chat_template",
    "multiply",
    "multiply_reward",
    "opening_call_rollout",
    "prompt_text",
    "recommended_rl_kwargs",
    "save_tiny_byte_model",
    "save_tiny_model",
    "save_tiny_reward_model",
    "split_words",
    "target_letter_reward",
    "tiny_llama_config",
    "token_kind_reward",
    "tool_call_reward",
    "tool_corpus",
]
