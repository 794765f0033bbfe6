"""RL learns to use a tool: the guess-the-number environment, through TRL's multi-turn tool loop.

The task: "Guess my number between 1 and 8." The only way to score is the environment's ``guess`` tool, which
answers ``higher``, ``lower`` or ``correct``; success is finding the number (``env.found``) within four tool calls.
A plain answer, however right, never reaches the environment and scores 0.

The start (shared by every seed): the kit's tiny byte model after a supervised warm-up with
``sft_on_demonstrations``: 300 steps on worked conversations of which about a third are binary searches through the
tool (the form of a call), then 6 steps on answers given without the tool (the no-tool habit). Each seed measures
the start: it calls the tool in about one rollout in ten and finds the number in 3-5 % of them. What RL must learn:
to open with a call rather than an answer, to keep calling after ``higher`` or ``lower`` instead of stopping, and
which numbers to try. Nothing in the rollouts is scripted: every call is the model's own.

The trainer: the RLOO estimator on the GRPO base (``ReinforcePlusPlusTrainer`` with ``advantage_estimator="rloo"``),
32 rollouts per step (8 prompts x 4), learning rate 1e-3, 20 steps. Success and the share of rollouts that called
the tool are measured on 16 held-out prompts x 4 samples by ``trainer.evaluate()`` (the same tool loop) before and
after RL, and logged each step as zero-weight rewards (``rewards/solved/mean``, ``rewards/tool_call_reward/mean``)
next to TRL's ``tools/call_frequency``. A seed has learned when success rises by 0.25 and the tool share by 0.4,
several standard errors of a 64-rollout estimate (at most 0.0625 for a share). Every seed must learn.

The start's decision to call sits on a knife edge (two more no-tool steps and it never calls; one fewer and it calls
in two rollouts out of three). With 16 rollouts per step and learning rate 2e-3 the first updates pushed some seeds
over it: the model stopped calling and, with no call left to reward, never came back (1 seed of 3). Twice the
rollouts at half the rate keep the estimate of the call's advantage steady enough. Measured (trl 1.16, 2 CPU cores),
before -> after: seed 0 success 0.05 -> 0.69, tool share 0.13 -> 0.86; seed 1 success 0.03 -> 0.70, tool share
0.09 -> 0.97; seed 2 success 0.03 -> 0.73, tool share 0.08 -> 0.94; and a fourth seed, 3, outside the test: success
0.03 -> 0.69, tool share 0.14 -> 0.86.
"""

from __future__ import annotations

import dataclasses

import pytest

from trl_basics import ReinforcePlusPlusConfig, ReinforcePlusPlusTrainer
from trl_basics.kit import GUESS_NUMBER_TASK, save_tiny_byte_model, tool_call_reward, tool_corpus
from trl_basics.kit.tool_sft import demonstrations, sft_on_demonstrations

TASK = dataclasses.replace(GUESS_NUMBER_TASK, high=8)
SEEDS = (0, 1, 2)
RL_STEPS = 20
SUCCESS_MARGIN, SHARE_MARGIN = 0.25, 0.4
START_SHARE_LIMIT = 0.3


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
    with_calls = demonstrations(TASK, 512, tool_share=0.35, seed=0)
    calls = sft_on_demonstrations(base, with_calls, tmp_path_factory.mktemp("calls"), tools, steps=300, batch_size=8)
    direct = demonstrations(TASK, 512, tool_share=0.0, seed=1)
    out = tmp_path_factory.mktemp("no-tool")
    return str(sft_on_demonstrations(calls, direct, out, tools, steps=6, batch_size=8, learning_rate=1e-3))


def measure(trainer) -> tuple[float, float, float]:
    logs = trainer.evaluate()
    return (
        logs["eval_rewards/solved/mean"],
        logs["eval_rewards/tool_call_reward/mean"],
        logs["eval_tools/call_frequency"],
    )


def run_seed(seed: int, model_dir: str, output_dir) -> tuple[tuple[float, ...], tuple[float, ...], list]:
    """RL from the SFT start with ``seed``: (success, tool share, calls per rollout) before and after, and the logs."""
    args = ReinforcePlusPlusConfig(
        output_dir=str(output_dir),
        advantage_estimator="rloo",  # the RLOO estimator on the GRPO base: sequence-level, leave-one-out
        whiten_advantages=False,
        loss_type="luspo",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
        seed=seed,
        max_steps=RL_STEPS,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        per_device_train_batch_size=32,
        per_device_eval_batch_size=16,
        num_generations=4,
        max_completion_length=224,
        max_tool_calling_iterations=4,
        reward_weights=[1.0, 0.0, 0.0],  # success and tool use are only measured
    )
    trainer = ReinforcePlusPlusTrainer(
        model=model_dir,
        reward_funcs=[TASK.reward_func, solved, tool_call_reward],
        args=args,
        train_dataset=TASK.make_dataset(1024, seed=seed),
        eval_dataset=TASK.make_dataset(16, seed=1000),
        environment_factory=TASK.environment_factory,
    )
    before = measure(trainer)
    trainer.train()
    after = measure(trainer)
    return before, after, [e for e in trainer.state.log_history if "loss" in e]


@pytest.mark.slow
def test_rl_learns_to_use_the_tool(warm_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    learned = []
    for seed in SEEDS:
        before, after, steps = run_seed(seed, warm_model_dir, tmp_path / f"seed{seed}")
        print(
            f"seed {seed}: success {before[0]:.3f} -> {after[0]:.3f}, rollouts calling the tool {before[1]:.3f} -> "
            f"{after[1]:.3f}, calls per rollout {before[2]:.2f} -> {after[2]:.2f}"
        )
        # The premise: the start mostly answers without the tool and rarely succeeds.
        assert before[1] <= START_SHARE_LIMIT and before[0] <= 0.1, (seed, before)
        assert len(steps) == RL_STEPS
        assert all("tools/call_frequency" in e and "rewards/tool_call_reward/mean" in e for e in steps)
        if after[0] >= before[0] + SUCCESS_MARGIN and after[1] >= before[1] + SHARE_MARGIN:
            learned.append(seed)
    assert learned == list(SEEDS), f"learned on seeds {learned} of {list(SEEDS)}"
