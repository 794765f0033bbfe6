"""REINFORCE++ and REINFORCE++-baseline (Hu 2025) on TRL's GRPOTrainer.

TRL's GRPO gives generation (transformers, vLLM, tools), reward functions, the token-level clipped loss and every
``loss_type``. This trainer changes only the advantages: per-token KL in the reward, rewards-to-go, and global
whitening, all from the trick pipeline. GRPO's own KL (``beta``, k3 in the loss) is switched off during the loss;
the reference model is still loaded and its log-probs computed whenever KL shaping needs them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
import trl
from trl.models.utils import disable_gradient_checkpointing

from ..rloo.rloo_trainer import _FORWARD_KEYS, _bind_trainer_arguments, _model_name
from ..trainer_mixin import TrickTrainerMixin, coerce_config, parent_beta
from .reinforce_pp_config import ReinforcePlusPlusConfig


class ReinforcePlusPlusTrainer(TrickTrainerMixin, trl.GRPOTrainer):
    """``trl.GRPOTrainer`` with REINFORCE++ advantages (``baseline="group"`` for REINFORCE++-baseline).

    Accepts a ``trl_basics.ReinforcePlusPlusConfig`` or a plain ``trl.GRPOConfig`` (fields left at GRPO's defaults
    take REINFORCE++'s), and ``plugin_manager``.
    """

    _tag_names = ["trl", "reinforce++", "trl_basics"]
    _name = "REINFORCE++ (trl_basics)"
    _paper = {
        "title": "REINFORCE++: Stabilizing Critic-Free Policy Optimization with Global Advantage Normalization",
        "id": "2501.03262",
    }
    config_class = ReinforcePlusPlusConfig

    def __init__(self, *args: Any, plugin_manager: Any = None, **kwargs: Any) -> None:
        arguments = _bind_trainer_arguments(trl.GRPOTrainer.__init__, args, kwargs)
        config = arguments.get("args")
        if config is None:
            config = self.config_class(output_dir=f"{_model_name(arguments['model'])}-{type(self).__name__}")
        config = coerce_config(config, self.config_class, trl.GRPOConfig)
        arguments["args"] = config
        needs_ref = config.kl_coef is not None and config.kl_coef > 0
        with parent_beta(config, 1.0 if needs_ref else config.beta):
            super().__init__(**arguments)
        self.beta = config.beta  # 0.0: GRPO's own KL term in the loss stays off
        self._setup_tricks(plugin_manager)

    def _default_estimator(self) -> str | None:
        return "group_mean" if self.args.baseline == "group" else "reinforce"

    # --- generation round -----------------------------------------------------------------------------------------

    def _rollout_logprobs(self, out: dict, recorded: list):
        logprobs = out.get("old_per_token_logps")
        if logprobs is None and self._kl_shaping is not None:
            # On-policy GRPO skips this pass (the loss reuses its own detached log-probs), but KL in the reward is
            # needed now, before the update: one extra forward without gradient.
            logprobs = self._sampling_logprobs(out)
        return logprobs, out.get("ref_per_token_logps")

    @torch.no_grad()
    def _sampling_logprobs(self, out: dict) -> torch.Tensor:
        input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        attention_mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            logprobs, _, _ = self._get_per_token_logps_and_entropies(
                self.model,
                input_ids,
                attention_mask,
                out["completion_ids"].size(1),
                batch_size=self.args.per_device_train_batch_size,
                **{key: out[key] for key in _FORWARD_KEYS if key in out},
            )
        return logprobs

    # --- update -----------------------------------------------------------------------------------------------------

    def _policy_loss(self, model, inputs):
        with self._grpo_kl_off():
            return super()._policy_loss(model, inputs)

    @contextmanager
    def _grpo_kl_off(self):
        """GRPO adds beta·k3 to the loss when beta != 0; KL here is owned by the trick pipeline."""
        saved, self.beta = self.beta, 0.0
        try:
            yield
        finally:
            self.beta = saved
