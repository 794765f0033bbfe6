"""The checks every vLLM training in ``tests/with_vllm/`` passes, on the results ``vllm_runs.py`` writes."""

from __future__ import annotations

GRPO_BASED = ("reinforce_pp", "reinforce_pp_baseline", "rloo_grpo", "reinforce_ma_grpo", "ppo_max")
RLOO_BASED = ("rloo", "reinforce_ma")
IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
IS_METRICS = (
    "sampling/sampling_logp_difference/mean",
    "sampling/sampling_logp_difference/max",
    "sampling/importance_sampling_ratio/min",
    "sampling/importance_sampling_ratio/mean",
    "sampling/importance_sampling_ratio/max",
)
TRICK_METRICS = ("tricks/reward_norm/running_std", "tricks/kl_shaping/loss", "tricks/entropy_bonus/loss")


def check_run(result: dict) -> None:
    assert "error" not in result, result["error"]
    run, logs = result["run"], result["logs"]
    assert result["trainable"] > 0
    assert result["unchanged"] == [], f"parameters that did not move: {result['unchanged']}"
    assert logs["loss"] == logs["loss"], "non-finite loss"
    assert result["vllm_model_is_policy"]
    # The engine moved with the trainer, and after the sync it scores tokens as the trainer does.
    assert result["probe_engine_moved"] > 1e-3
    tolerance = 2e-5 if run["mode"] == "server" else 5e-2  # the colocated engine runs in bfloat16
    assert result["probe_gap_after_sync"] < tolerance
    if run["mode"] == "colocate":
        assert result["engine_dtype"] == "torch.bfloat16"
        assert result["engine_weights_not_in_trainer"] == []
        assert result["engine_parameter_count"] == 14  # embeddings, 2 x (qkv, o, gate_up, down, 2 norms), norm
        assert result["weight_gap_after_sync"] == 0.0
    if run["setting"] == "tricks":
        missing = [key for key in TRICK_METRICS if key not in logs]
        assert not missing, f"trick metrics not logged: {missing}"
    if run.get("is_mode") is not None:
        missing = [key for key in IS_METRICS if key not in logs]
        assert not missing, f"importance-sampling metrics not logged: {missing}"
        assert logs["sampling/importance_sampling_ratio/min"] <= logs["sampling/importance_sampling_ratio/mean"]
        assert logs["sampling/importance_sampling_ratio/mean"] <= logs["sampling/importance_sampling_ratio/max"]
        assert abs(logs["sampling/importance_sampling_ratio/mean"] - 1.0) < 0.05
        assert 0.0 <= logs["sampling/sampling_logp_difference/mean"] <= logs["sampling/sampling_logp_difference/max"]
    if run["trainer"] in GRPO_BASED:
        assert len(result["rounds"]) == 2  # one generation round per step
        for round_ in result["rounds"]:
            # The advantages (token KL, returns, GAE) are built on the trainer's own log-probs...
            assert round_["logprobs_vs_trainer_forward"] < 1e-6
            if run["trainer"] == "ppo_max":
                # ... and PPO-max's values on its critic's forward pass.
                assert round_["values_vs_critic_forward"] < 1e-6
    if run["trainer"] == "ppo_max":
        assert result["critic_parameters"] > 0
        assert "value/explained_variance" in logs
    if run["trainer"] in RLOO_BASED:
        assert result["trainer_class"] in ("RLOOTrainer", "ReinforceWithBaselineTrainer")
