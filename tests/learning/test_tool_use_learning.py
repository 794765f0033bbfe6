"""REINFORCE++-baseline learns to use a tool: the guess-the-number environment, through TRL's multi-turn tool loop.

The task: "Guess my number between 1 and 8." The only way to score is the environment's ``guess`` tool, which
answers ``higher``, ``lower`` or ``correct``; success is finding the number (``env.found``) within four tool calls.
A plain answer, however right, never reaches the environment and scores 0.

The start: the kit's tiny byte model after a short supervised warm-up (``sft_on_demonstrations``, 300 steps) on
worked conversations of which one in five is a binary search through the tool and the rest state a number at once.
The warm-up teaches the form of a call; it leaves a model that almost always answers without the tool. What RL must
learn: to open with a call rather than an answer, to keep calling after ``higher`` or ``lower`` instead of stopping,
and which numbers to try. Nothing in the rollouts is scripted: every call is the model's own.

Measured on 16 held-out prompts x 4 samples by ``trainer.evaluate()`` (the same tool loop) before and after RL:
success and the share of rollouts that called the tool (both logged each step as zero-weight rewards,
``rewards/solved/mean`` and ``rewards/tool_call_reward/mean``, next to TRL's ``tools/call_frequency``). Seen with
seeds 0-2: success 0.0-0.03 -> 0.4-0.6, tool share 0.0-0.05 -> 0.8-1.0. The margins (success +0.25, tool share
+0.4) are several standard errors of a 64-rollout estimate (at most 0.0625 for a share).
"""

from __future__ import annotations

import dataclasses

import pytest

from trl_basics import ReinforcePlusPlusConfig, ReinforcePlusPlusTrainer
from trl_basics.kit import GUESS_NUMBER_TASK, save_tiny_byte_model, tool_call_reward, tool_corpus
from trl_basics.kit.tool_sft import demonstrations, sft_on_demonstrations

TASK = dataclasses.replace(GUESS_NUMBER_TASK, high=8)
SEEDS = (0, 1, 2)
RL_STEPS = 16
SUCCESS_MARGIN, SHARE_MARGIN = 0.25, 0.4
START_SHARE_LIMIT = 0.3  # the premise: the start mostly answers without the tool


def solved(environments, **kwargs) -> list[float]:
    """1.0 when the rollout's environment heard the right number."""
    return [float(env.found) for env in environments]


@pytest.fixture(scope="module")
def warm_model_dir(tmp_path_factory):
    """The SFT start, shared by every seed. First the form of a call: 300 steps on worked conversations, about a
    third of them binary searches through the tool (the rest state a number). Then the no-tool habit: 6 steps on
    conversations that answer at once, after which the model rarely opens with a call (measured by each test)."""
    tools = TASK.schema_tools()
    base = save_tiny_byte_model(tmp_path_factory.mktemp("byte"), corpus=tool_corpus())
    calls = sft_on_demonstrations(
        base, demonstrations(TASK, 512, tool_share=0.35, seed=0), tmp_path_factory.mktemp("calls"), tools, steps=300,
        batch_size=8,
    )  # fmt: skip
    return str(
        sft_on_demonstrations(
            calls, demonstrations(TASK, 512, tool_share=0.0, seed=1), tmp_path_factory.mktemp("no-tool"), tools,
            steps=6, batch_size=8, learning_rate=1e-3,
        )  # fmt: skip
    )


def measure(trainer) -> tuple[float, float, float]:
    logs = trainer.evaluate()
    return logs["eval_rewards/solved/mean"], logs["eval_rewards/tool_call_reward/mean"], logs["eval_tools/call_frequency"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_rl_learns_to_use_the_tool(seed, warm_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    args = ReinforcePlusPlusConfig(
        output_dir=str(tmp_path),
        baseline="group",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
        seed=seed,
        max_steps=RL_STEPS,
        learning_rate=2e-3,
        kl_coef=None,  # no KL: a per-token KL in the reward charges a multi-turn search more than a one-line answer
        lr_scheduler_type="constant",
        per_device_train_batch_size=32,
        per_device_eval_batch_size=16,
        num_generations=4,
        max_completion_length=224,
        max_tool_calling_iterations=4,
        reward_weights=[1.0, 0.0, 0.0],  # success and tool use are only measured
    )
    trainer = ReinforcePlusPlusTrainer(
        model=warm_model_dir,
        reward_funcs=[TASK.reward_func, solved, tool_call_reward],
        args=args,
        train_dataset=TASK.make_dataset(1024, seed=seed),
        eval_dataset=TASK.make_dataset(16, seed=1000),
        environment_factory=TASK.environment_factory,
    )
    before = measure(trainer)
    assert before[1] <= START_SHARE_LIMIT, f"the SFT start calls the tool in {before[1]:.2f} of rollouts"
    trainer.train()
    after = measure(trainer)
    print(
        f"seed {seed}: success {before[0]:.3f} -> {after[0]:.3f}, rollouts calling the tool {before[1]:.3f} -> "
        f"{after[1]:.3f}, calls per rollout {before[2]:.2f} -> {after[2]:.2f}"
    )
    assert after[0] >= before[0] + SUCCESS_MARGIN, (before, after)
    assert after[1] >= before[1] + SHARE_MARGIN, (before, after)
    shares = [e["rewards/tool_call_reward/mean"] for e in trainer.state.log_history if "loss" in e]
    assert len(shares) == RL_STEPS and all("tools/call_frequency" in e for e in trainer.state.log_history if "loss" in e)
