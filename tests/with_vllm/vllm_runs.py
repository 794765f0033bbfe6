"""Trainings with vLLM generation, run by ``.venv-vllm/bin/python`` for ``tests/with_vllm/`` (one process per group of runs,
so that the engine's process group and environment variables never reach other tests).

    python tests/with_vllm/vllm_runs.py model DIR              # save the kit model vLLM can serve (head_dim 32)
    python tests/with_vllm/vllm_runs.py train SPEC.json OUT.json

``SPEC.json`` holds ``{"model": DIR, "output_dir": DIR, "runs": [run, ...]}``; each run names a trainer id, a setting
(``defaults`` or ``tricks``), the vLLM mode (``colocate`` or ``server`` with ``server_url``), whether to train a LoRA
adapter, and the importance-sampling mode (or ``null`` for none). A run with ``"task": "multiply"`` or
``"task": "guess_number"`` trains on that tool task through TRL's tool loop (``tools=`` or ``environment_factory=``),
from its own ``"model"`` (one that has learnt to write the task's calls). ``OUT.json`` gets one result per run: the
merged training logs, the parameters that did not move, how far the engine's weights and log-probs are from the
trainer's after a weight sync, and what the trainer's advantages and values were computed from.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB per engine; without it each takes about 0.3 x RAM

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The tiny model vLLM's CPU attention accepts: head_dim = 64 / 2 = 32 (16 is refused).
MODEL_SHAPE = {"hidden_size": 64, "num_heads": 2}
# Fixed token sequences (prompt of 3, then 5 scored tokens) on which engine and trainer log-probs are compared.
PROBE = [[1, 5, 9, 12, 20, 33, 40, 7], [1, 6, 6, 30, 31, 2, 48, 49], [1, 44, 3, 17, 18, 19, 45, 12]]
PROBE_PROMPT = 3

TRICK_SET = {
    "reward_norm": "running",
    "reward_clip": 3.0,
    "kl_coef": 0.1,
    "kl_estimator": "k2",
    "kl_placement": "loss",
    "whiten_advantages": True,
    "advantage_clip": 3.0,
    "entropy_bonus_coef": 0.01,
}
RLOO_ON_GRPO = {"advantage_estimator": "rloo", "whiten_advantages": False, "loss_type": "luspo"}


def trainers() -> dict:
    """trainer id -> (trainer class, config class, fixed config fields)."""
    import trl

    from trl_basics import (
        PPOMaxConfig,
        PPOMaxTrainer,
        ReinforcePlusPlusConfig,
        ReinforcePlusPlusTrainer,
        ReinforceWithBaselineConfig,
        ReinforceWithBaselineTrainer,
        RLOOConfig,
        RLOOTrainer,
    )

    return {
        "rloo": (RLOOTrainer, RLOOConfig, {}),
        "reinforce_ma": (ReinforceWithBaselineTrainer, ReinforceWithBaselineConfig, {}),
        "reinforce_pp": (ReinforcePlusPlusTrainer, ReinforcePlusPlusConfig, {"baseline": "none"}),
        "reinforce_pp_baseline": (ReinforcePlusPlusTrainer, ReinforcePlusPlusConfig, {"baseline": "group"}),
        "rloo_grpo": (ReinforcePlusPlusTrainer, ReinforcePlusPlusConfig, RLOO_ON_GRPO),
        "reinforce_ma_grpo": (
            ReinforcePlusPlusTrainer,
            ReinforcePlusPlusConfig,
            {**RLOO_ON_GRPO, "advantage_estimator": "moving_average"},
        ),
        "ppo_max": (PPOMaxTrainer, PPOMaxConfig, {"critic_init": "policy", "critic_learning_rate": 3e-3}),
        "grpo": (trl.GRPOTrainer, trl.GRPOConfig, {}),
    }


RLOO_BASED = ("rloo", "reinforce_ma")

# The tool tasks: the entry point TRL gets them through, and room for their calls. A multiply call, its result and the
# answer take about 50 tokens; a binary search over 1..16 up to four calls with their replies.
TOOL_TASKS = {
    "multiply": ("tools", {"max_completion_length": 96, "max_tool_calling_iterations": 1}),
    "guess_number": ("environment_factory", {"max_completion_length": 256, "max_tool_calling_iterations": 4}),
}


def config_fields(trainer_id: str, setting: str, fixed: dict, output_dir: str) -> dict:
    fields = {
        "output_dir": output_dir,
        "use_cpu": True,
        "bf16": False,
        "gradient_checkpointing": False,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "learning_rate": 3e-3,
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "max_completion_length": 4,
        "max_steps": 2,
        "seed": 0,
    }
    fields.update(fixed)
    if setting == "tricks":
        fields.update(TRICK_SET)
        if trainer_id in RLOO_BASED:
            fields["beta"] = 0.0  # kl_coef replaces TRL's beta
    return fields


def vllm_fields(run: dict) -> dict:
    fields = {"use_vllm": True, "vllm_mode": run["mode"]}
    if run["mode"] == "colocate":
        fields["vllm_gpu_memory_utilization"] = 0.05
    else:
        fields["vllm_server_base_url"] = run["server_url"]
        fields["vllm_server_timeout"] = 60
    if run["trainer"] not in RLOO_BASED:  # TRL's RLOO has no importance-sampling correction
        fields["vllm_importance_sampling_correction"] = run.get("is_mode") is not None
        if run.get("is_mode") is not None:
            fields["vllm_importance_sampling_mode"] = run["is_mode"]
    for key in ("top_k", "top_p", "temperature"):
        if key in run:
            fields[key] = run[key]
    return fields


def merged_train_logs(trainer) -> dict:
    merged = {}
    for entry in trainer.state.log_history:
        if "loss" in entry:
            merged.update(entry)
    return merged


def trainer_weights(model) -> dict:
    """The weights the trainer would send to vLLM, under the checkpoint's names (LoRA merged in)."""
    from accelerate.utils import is_peft_model

    if is_peft_model(model):
        model.merge_adapter()
        try:
            weights = {
                name.removeprefix("base_model.model.").replace(".base_layer", ""): param.detach().clone()
                for name, param in model.named_parameters()
                if "lora_" not in name
            }
        finally:
            model.unmerge_adapter()
        return weights
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def engine_weight_gap(engine_model, weights: dict) -> tuple[float, list[str]]:
    """Largest |engine - trainer| over every weight of the colocated engine (vLLM fuses q/k/v and gate/up)."""
    import torch

    gap, missing = 0.0, []
    fused = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
    for name, value in engine_model.named_parameters():
        parts = next(((key, parts) for key, parts in fused.items() if key in name), None)
        try:
            if parts is None:
                reference = weights[name]
            else:
                reference = torch.cat([weights[name.replace(parts[0], part)] for part in parts[1]])
        except KeyError:
            missing.append(name)
            continue
        # vLLM pads the vocabulary dimension of the embedding; the rows past the real vocabulary are never used.
        # Compared in the engine's dtype: TRL builds the colocated engine with vLLM's default dtype, which runs a
        # float32 checkpoint in bfloat16 on CPU.
        value = value.detach().cpu()[: reference.shape[0]]
        gap = max(gap, (value.float() - reference.to(value.dtype).float()).abs().max().item())
    return gap, missing


def trainer_probe_logprobs(model):
    import torch

    ids = torch.tensor(PROBE)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
    return logprobs[:, PROBE_PROMPT - 1 :]


def engine_probe_logprobs(trainer, mode: str):
    """The engine's log-probs of the probe tokens (prompt log-probs, no sampling)."""
    import torch

    generation = trainer.vllm_generation
    if mode == "server":
        out = generation.vllm_client.get_sequence_logprobs(PROBE, [PROBE_PROMPT] * len(PROBE), top_logprobs=1)
        return torch.tensor(out["actual_logprobs"])[..., 0]
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, prompt_logprobs=1, temperature=1.0)
    outputs = generation.llm.generate([{"prompt_token_ids": seq} for seq in PROBE], params, use_tqdm=False)
    rows = []
    for seq, output in zip(PROBE, outputs, strict=True):
        rows.append([output.prompt_logprobs[i][seq[i]].logprob for i in range(PROBE_PROMPT, len(seq))])
    return torch.tensor(rows)


def record_rollouts(trainer, sink: list) -> list:
    """Record, per generation round, what the trainer's advantages were computed from: the log-probs in the rollout
    against a fresh forward pass of the trainer and against vLLM's sampling log-probs, and (PPO-max) the values; all
    on the tokens the policy chose (tool outputs left out). Returns the rounds' batches, for ``tool_token_entries``
    once the trainer has written its advantages into them."""
    import torch

    from trl_basics.trainer_mixin import action_mask

    batches: list = []
    if not hasattr(trainer, "build_rollout"):
        return batches
    original = trainer.build_rollout

    def build_rollout(out, passes):
        rollout = original(out, passes)
        entry = {}
        mask = action_mask(out).bool()
        if rollout.logprobs is not None:
            fresh = trainer.completion_logprobs(out)
            entry["logprobs_vs_trainer_forward"] = (rollout.logprobs - fresh)[mask].abs().max().item()
            sampling = out.get("sampling_per_token_logps")
            if sampling is not None:
                gap = (rollout.logprobs - sampling)[mask].abs()
                entry["logprobs_vs_vllm"] = gap.max().item()
                entry["logprobs_vs_vllm_mean"] = gap.mean().item()
        if rollout.values is not None:
            with torch.no_grad():
                again = trainer.critic.values(out)
            entry["values_vs_critic_forward"] = (rollout.values - again)[mask].abs().max().item()
        sink.append(entry)
        batches.append(out)
        return rollout

    trainer.build_rollout = build_rollout
    return batches


def tool_token_entries(batches: list, rounds: list) -> None:
    """Add to each round what reached the tool-output tokens (``tool_mask`` 0 inside the completion): how many there
    were, and the largest advantage and value target the trainer wrote there."""
    for out, entry in zip(batches, rounds, strict=True):
        if "tool_mask" not in out:
            continue
        holes = out["completion_mask"].bool() & ~out["tool_mask"].bool()
        entry["tool_tokens"] = int(holes.sum())
        entry["policy_tokens"] = int((out["completion_mask"].bool() & out["tool_mask"].bool()).sum())
        advantages = out["advantages"]
        if advantages.dim() == 2:
            entry["advantage_at_tool_tokens"] = advantages[holes].abs().max().item() if holes.any() else 0.0
            entry["advantage_at_policy_tokens"] = advantages[~holes & out["completion_mask"].bool()].abs().max().item()
        if "returns" in out:
            entry["return_at_tool_tokens"] = out["returns"][holes].abs().max().item() if holes.any() else 0.0


def task_inputs(run: dict) -> tuple[dict, dict]:
    """The trainer's task arguments for ``run`` (reward functions, data, tools or an environment) and the config
    fields the task needs."""
    from trl_basics.kit import GUESS_NUMBER_TASK, MULTIPLY_TOOL_TASK, get_task, tool_call_reward

    name = run.get("task", "token_kind")
    if name not in TOOL_TASKS:
        task = get_task(name)
        return {"reward_funcs": task.reward_func, "train_dataset": task.make_dataset(64, seed=0)}, {}
    entry, fields = TOOL_TASKS[name]
    task = MULTIPLY_TOOL_TASK if name == "multiply" else GUESS_NUMBER_TASK
    inputs = {
        "reward_funcs": [task.reward_func, tool_call_reward],
        "train_dataset": task.make_dataset(64, seed=0),
        entry: list(task.tools) if entry == "tools" else task.environment_factory,
    }
    return inputs, fields


def one_run(run: dict, model_dir: str, output_dir: str) -> dict:
    import torch

    from trl_basics.seams import vllm_engine_model

    trainer_cls, config_cls, fixed = trainers()[run["trainer"]]
    fields = config_fields(run["trainer"], run["setting"], fixed, output_dir)
    fields.update(vllm_fields(run))
    kwargs, task_fields = task_inputs(run)
    fields.update(task_fields)
    fields.update(run.get("config", {}))
    if run.get("peft"):
        from peft import LoraConfig

        kwargs["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    started = time.perf_counter()
    trainer = trainer_cls(model=run.get("model", model_dir), args=config_cls(**fields), **kwargs)
    built = time.perf_counter()
    rounds: list = []
    batches = record_rollouts(trainer, rounds)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    engine_before = engine_probe_logprobs(trainer, run["mode"]) if run.get("probe_initial", True) else None
    trainer.train()
    trained = time.perf_counter()
    tool_token_entries(batches, rounds)
    del batches
    unchanged = [n for n, p in trainer.model.named_parameters() if n in before and torch.equal(before[n], p)]
    # The last optimizer step comes after the last generation: push it, then compare engine and trainer.
    trainer.vllm_generation.sync_weights()
    result = {
        "trainer_class": type(trainer).__name__,
        "logs": merged_train_logs(trainer),
        "trainable": len(before),
        "unchanged": unchanged,
        "rounds": rounds,
        "steps": [entry for entry in trainer.state.log_history if "loss" in entry],
        "seconds": {"build": built - started, "train": trained - built},
        "vllm_model_is_policy": trainer.vllm_generation.model is trainer.model,
    }
    if getattr(trainer, "environments", None):  # the last round's environments: the guesses they heard
        result["environment_guesses"] = sum(len(env.guesses) for env in trainer.environments)
    trainer_logprobs = trainer_probe_logprobs(trainer.model)
    engine_after = engine_probe_logprobs(trainer, run["mode"])
    result["probe_gap_after_sync"] = (engine_after - trainer_logprobs).abs().max().item()
    if engine_before is not None:
        result["probe_engine_moved"] = (engine_after - engine_before).abs().max().item()
    if run["mode"] == "colocate":
        engine = vllm_engine_model(trainer)
        gap, missing = engine_weight_gap(engine, trainer_weights(trainer.model))
        result["weight_gap_after_sync"] = gap
        result["engine_weights_not_in_trainer"] = missing
        result["engine_parameter_count"] = sum(1 for _ in engine.named_parameters())
        result["engine_dtype"] = str(next(engine.parameters()).dtype)
        del engine
    trainer.vllm_generation.llm = None  # let the engine go before the next run builds its own
    if hasattr(trainer, "critic"):
        critic_names = (
            {name for name, _ in trainer.critic.model.named_parameters()}
            if hasattr(trainer.critic, "model")
            else set()
        )
        result["critic_parameters"] = len(critic_names)
    del trainer
    gc.collect()
    return result


def train(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    results = []
    for index, run in enumerate(spec["runs"]):
        output_dir = os.path.join(spec["output_dir"], f"run{index}")
        try:
            result = one_run(run, spec["model"], output_dir)
        except Exception:  # noqa: BLE001 - reported to the test, which fails with it
            result = {"error": traceback.format_exc()}
        results.append({"run": run, **result})
        Path(out_path).write_text(json.dumps(results, indent=1))  # what is done so far, should a later run hang


def save_model(directory: str) -> None:
    from trl_basics.kit import save_tiny_model

    save_tiny_model(directory, **MODEL_SHAPE)


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    if command == "model":
        save_model(*arguments)
    elif command == "train":
        train(*arguments)
    else:
        raise SystemExit(f"unknown command {command!r}: use 'model DIR' or 'train SPEC.json OUT.json'")
