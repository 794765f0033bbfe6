import dataclasses

import pytest
import trl
from transformers import HfArgumentParser

from trl_basics import TrickArguments, TrickPipeline


@dataclasses.dataclass
class GRPOStyleConfig(TrickArguments, trl.GRPOConfig):
    pass


@dataclasses.dataclass
class RLOOStyleConfig(TrickArguments, trl.RLOOConfig):
    pass


def test_defaults_switch_nothing_on(registry):
    pipeline = TrickPipeline.from_args(TrickArguments(), registry)
    assert not pipeline
    assert pipeline.names == []


# Redefined on purpose: TRL GRPO's field of this name (default True) weighs GRPO's own beta·k3 loss term, which no
# trl_basics trainer runs; ours (default False) weighs the trick pipeline's KL in the loss, on every config.
DELIBERATE_SHADOWS = {"use_bias_correction_kl"}


def test_trick_fields_do_not_shadow_trl_fields():
    ours = {f.name for f in dataclasses.fields(TrickArguments)}
    for parent in (trl.RLOOConfig, trl.GRPOConfig):
        assert not (ours & {f.name for f in dataclasses.fields(parent)}) - DELIBERATE_SHADOWS


def test_bias_correction_field_is_ours_and_off_on_every_config(tmp_path):
    from trl_basics import PPOMaxConfig, ReinforcePlusPlusConfig, ReinforceWithBaselineConfig, RLOOConfig

    grpo_field = next(f for f in dataclasses.fields(trl.GRPOConfig) if f.name == "use_bias_correction_kl")
    assert grpo_field.default is True  # TRL 1.16's default, for its own KL term
    for config_cls in (RLOOConfig, ReinforceWithBaselineConfig, ReinforcePlusPlusConfig, PPOMaxConfig):
        field = next(f for f in dataclasses.fields(config_cls) if f.name == "use_bias_correction_kl")
        assert field.default is False and "unlike TRL GRPO" in field.metadata["help"], config_cls.__name__


def test_every_field_has_help():
    for f in dataclasses.fields(TrickArguments):
        assert f.metadata.get("help"), f.name


def test_parser_round_trip():
    parser = HfArgumentParser(TrickArguments)
    (args,) = parser.parse_args_into_dataclasses(
        [
            "--reward_norm", "running",
            "--reward_clip", "0.3",
            "--kl_coef", "0.05",
            "--kl_estimator", "k2",
            "--kl_placement", "loss",
            "--whiten_advantages", "true",
            "--tricks", "length_penalty",
            "--trick_kwargs", '{"length_penalty": {"coef": 0.1}}',
        ]
    )  # fmt: skip
    assert args.reward_norm == "running" and args.reward_clip == 0.3
    assert args.kl_estimator == "k2" and args.kl_placement == "loss"
    assert args.whiten_advantages is True
    assert args.tricks == ["length_penalty"]
    assert args.trick_kwargs == {"length_penalty": {"coef": 0.1}}


@pytest.mark.parametrize(
    ("kwargs", "problem", "fix"),
    [
        ({"reward_norm": "zscore"}, "reward_norm='zscore' is not a valid choice", "Use one of"),
        ({"kl_placement": "reward"}, "kl_placement='reward' is not a valid choice", "token_reward"),
        ({"reward_clip": 0.0}, "reward_clip=0.0 must be positive", "Set reward_clip"),
        ({"advantage_clip": -1.0}, "advantage_clip=-1.0 must be positive", "Set advantage_clip"),
        ({"kl_coef": -0.1}, "kl_coef=-0.1 is negative", "kl_coef >= 0"),
        ({"gamma": 1.5}, "gamma=1.5 is outside", "discount factor"),
        ({"gae_lambda": -0.1}, "gae_lambda=-0.1 is outside", "λ in"),
        ({"baseline_decay": 1.0}, "baseline_decay=1.0 is outside", "decay such as"),
        ({"reward_norm": "running", "reward_scale": True}, "both rescale the reward", "Pick one"),
        ({"kl_target": 6.0}, "kl_target is set but kl_coef is None", "Set kl_coef"),
        (
            {"kl_coef": 0.1, "kl_placement": "loss", "kl_estimator": "k1"},
            "ignores the reference model",
            "kl_estimator='k2'",
        ),
        ({"whiten_advantages_center_only": True}, "needs whiten_advantages=True", "Set whiten_advantages"),
        ({"entropy_bonus_target": 2.0}, "entropy_bonus_coef is 0", "Set entropy_bonus_coef"),
        ({"kl_estimator": "k9"}, "unknown KL estimator 'k9'", "k1"),
        ({"advantage_estimator": "ppo"}, "unknown advantage estimator 'ppo'", "rloo"),
        ({"tricks": ["no_such_trick"]}, "unknown trick 'no_such_trick'", "reward_norm"),
        ({"tricks": ["reward_clip"]}, "built-in switched on by its own flag", "set reward_clip instead"),
        ({"trick_kwargs": {"length_penalty": {"coef": 1}}}, "not switched on", "Add them to tricks"),
        ({"trick_kwargs": "{not json"}, "trick_kwargs must be a JSON object", "length_penalty"),
    ],
)
def test_bad_settings_are_refused_with_the_fix(kwargs, problem, fix):
    with pytest.raises(ValueError) as err:
        TrickArguments(**kwargs)
    assert problem in str(err.value)
    assert fix in str(err.value)


def test_duplicate_listed_trick_is_refused():
    with pytest.raises(ValueError, match="listed twice"):
        TrickArguments(tricks=["length_penalty", "length_penalty"])


@pytest.mark.parametrize(
    ("config_cls", "kwargs", "problem"),
    [
        (RLOOStyleConfig, {"reward_clip": 1.0, "reward_clip_range": (-1.0, 1.0)}, "both clip the reward"),
        (RLOOStyleConfig, {"whiten_advantages": True, "normalize_advantages": True}, "both normalize"),
        (GRPOStyleConfig, {"entropy_bonus_coef": 0.01, "entropy_coef": 0.01}, "both add an entropy bonus"),
        (GRPOStyleConfig, {"kl_coef": 0.01, "beta": 0.04}, "would both apply a KL penalty"),
    ],
)
def test_conflicts_with_the_trl_parent_are_refused(config_cls, kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        config_cls(output_dir="unused", use_cpu=True, **kwargs)


def test_mixed_into_a_trl_config_keeps_both_sets_of_fields():
    config = GRPOStyleConfig(output_dir="unused", use_cpu=True, beta=0.0, kl_coef=0.01, whiten_advantages=True)
    assert config.kl_coef == 0.01 and config.loss_type == "dapo"
    pipeline = TrickPipeline.from_args(config)
    assert pipeline.names == ["kl_shaping", "advantage_whiten"]
