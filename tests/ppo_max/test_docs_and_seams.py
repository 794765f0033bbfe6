"""The PPO-max docs list every flag the config adds or presets, the flags parse from the command line, and the
TRL/transformers members the trainer relies on beyond the shared seams keep their signatures."""

import dataclasses
import inspect
from pathlib import Path

import pytest
import transformers
import trl
from transformers import HfArgumentParser

from trl_basics import PPOMaxConfig, TrickArguments

DOCS = Path(__file__).resolve().parents[2] / "docs" / "ppo_max.md"
OWN_FIELDS = sorted(
    {f.name for f in dataclasses.fields(PPOMaxConfig)}
    - {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    - {f.name for f in dataclasses.fields(TrickArguments)}
)
PRESETS = ["reward_norm", "reward_clip", "kl_coef", "advantage_estimator", "gae_lambda", "num_generations",
           "loss_type", "scale_rewards", "learning_rate"]  # fmt: skip


def test_the_config_adds_the_expected_fields():
    expected = ["critic_model_path", "critic_init", "critic_learning_rate", "critic_max_grad_norm",
                "critic_warmup_steps", "value_clip", "ptx_coef", "ptx_batch_size", "ptx_max_length",
                "ptx_text_field"]  # fmt: skip
    assert sorted(expected) == OWN_FIELDS


@pytest.mark.parametrize("name", OWN_FIELDS + PRESETS)
def test_every_flag_is_documented_with_help(name):
    assert f"`{name}`" in DOCS.read_text(), name
    field = next(f for f in dataclasses.fields(PPOMaxConfig) if f.name == name)
    assert field.metadata.get("help"), name
    if name in OWN_FIELDS:
        assert f"\n    {name} (`" in PPOMaxConfig.__doc__, name


def test_flags_round_trip_through_hf_argument_parser(tmp_path):
    (config,) = HfArgumentParser(PPOMaxConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--use_cpu", "--critic_init", "policy", "--value_clip", "0.1",
         "--critic_warmup_steps", "3", "--collapse_alarm", "stop", "--reward_clip", "0.8", "--gae_lambda", "0.95"]
    )  # fmt: skip
    assert (config.critic_init, config.value_clip, config.critic_warmup_steps) == ("policy", 0.1, 3)
    assert (config.collapse_alarm, config.reward_clip, config.gae_lambda) == ("stop", 0.8, 0.95)


SEAMS = {
    (transformers.Trainer, "save_model"): ["self", "output_dir", "_internal_call"],
    (transformers.Trainer, "_get_output_dir"): ["self", "trial"],
    (transformers.Trainer, "_get_learning_rate"): ["self"],
    (transformers.TrainerCallback, "on_pre_optimizer_step"): ["self", "args", "state", "control", "kwargs"],
    (transformers.TrainerCallback, "on_log"): ["self", "args", "state", "control", "kwargs"],
}


@pytest.mark.parametrize(("owner", "name"), sorted(SEAMS, key=str), ids=lambda x: getattr(x, "__name__", x))
def test_trainer_members_keep_their_signatures(owner, name):
    assert list(inspect.signature(getattr(owner, name)).parameters) == SEAMS[(owner, name)]
