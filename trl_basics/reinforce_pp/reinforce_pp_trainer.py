"""REINFORCE++ and REINFORCE++-baseline (Hu 2025) on TRL's GRPOTrainer.

TRL's GRPO gives generation (transformers, vLLM, tools), reward functions, the token-level clipped loss and every
``loss_type``. This trainer changes only the advantages: per-token KL in the reward, rewards-to-go, and global
whitening, all from the trick pipeline. GRPO's own KL (``beta``, k3 in the loss) is switched off during the loss;
the reference model is still loaded and its log-probs computed whenever KL shaping needs them.
"""

from __future__ import annotations

from typing import Any

from ..grpo_base import GRPOTrickTrainer
from ..pipeline import TrickPipeline
from ..tricks.estimators import token_level_estimator
from .reinforce_pp_config import ReinforcePlusPlusConfig


class ReinforcePlusPlusTrainer(GRPOTrickTrainer):
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
    state_settings = ("baseline",)

    def __init__(self, *args: Any, plugin_manager: Any = None, **kwargs: Any) -> None:
        self._init_parent(args, kwargs, plugin_manager)  # beta stays 0: GRPO's own KL term in the loss stays off
        self._setup_tricks()

    def build_pipeline(self, args: Any = None) -> TrickPipeline:
        pipeline = super().build_pipeline(args)
        # REINFORCE++ is defined per token (whitening over all active tokens, v1 Eq. 8 / v9 Eq. 7), so its estimator
        # always gives (B, T) advantages, also when the KL is in the loss, in the sequence reward, or off.
        pipeline.estimator = token_level_estimator(pipeline.estimator)
        return pipeline

    def default_estimator(self, args: Any) -> str | None:
        return "group_mean" if args.baseline == "group" else "reinforce"
