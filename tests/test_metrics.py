"""Host reads of the trick pipeline and the trainers' metric logging: none where none is needed, one per step for the
metrics (each read of a GPU tensor makes the host wait for the GPU).

The meta device stands in for a GPU on the CPU: any read of a meta tensor to the host fails, and so does mixing a
CPU tensor into a meta one, so code that runs on meta tensors neither syncs nor leaves a tensor on the wrong device.
"""

import importlib.util
import math
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from trl_basics import Rollout, TrickArguments, TrickContext, TrickPipeline
from trl_basics.metrics import DeferredMetrics, log_distribution
from trl_basics.pipeline import _zero_unscorable
from trl_basics.trainer_mixin import TrickTrainerMixin

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def profile_step():
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("benchmarks_profile_step", BENCHMARKS / "profile_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Reads:
    """Counts tensor reads to the host (``item``/``float``/``bool``/``tolist``, boolean masks) inside the block."""

    def __init__(self, profile_step):
        self.mode = profile_step.sync_counter()
        self.tolist = profile_step.count_tolist(self.mode)

    def __enter__(self):
        self.mode.__enter__()
        self.tolist.__enter__()
        return self

    def __exit__(self, *exc):
        self.tolist.__exit__(*exc)
        self.mode.__exit__(*exc)

    @property
    def total(self):
        return sum(self.mode.counts.values())


def collecting_context(**kwargs):
    logged = {}
    return logged, TrickContext(log=logged.__setitem__, **kwargs)


def test_deferred_metrics_read_every_tensor_of_a_step_at_once(profile_step):
    deferred, metrics = DeferredMetrics(), defaultdict(list)
    log = deferred.sink(metrics)
    with Reads(profile_step) as reads:
        log("a", torch.tensor(0.5))
        log("b", torch.tensor([2], dtype=torch.int64))  # one element, any dtype
        log("a", torch.tensor(1.5, dtype=torch.float64))
        log("c", 3.0)  # floats go straight in
    assert reads.total == 0
    assert dict(metrics) == {"c": [3.0]}
    with Reads(profile_step) as reads:
        deferred.flush()
    assert reads.total == 1
    assert dict(metrics) == {"c": [3.0], "a": [0.5, 1.5], "b": [2.0]}
    assert all(type(v) is float for values in metrics.values() for v in values)
    deferred.flush()  # nothing pending: nothing changes
    assert dict(metrics) == {"c": [3.0], "a": [0.5, 1.5], "b": [2.0]}


def test_deferred_metrics_read_at_once_in_evaluation_and_refuse_non_scalars():
    deferred, metrics = DeferredMetrics(), defaultdict(list)
    log = deferred.sink(metrics, defer=False)
    log("x", torch.tensor(0.25))
    assert metrics["x"] == [0.25] and not deferred.pending
    with pytest.raises(ValueError, match=r"metric 'y' must be a scalar, got a tensor of shape \(2,\)"):
        deferred.sink(metrics)("y", torch.tensor([1.0, 2.0]))


def test_log_distribution_is_exact_without_a_host_read(profile_step):
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, float("nan"), 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    logged, ctx = collecting_context()
    with Reads(profile_step) as reads:
        log_distribution(ctx, "adv", values, mask)
    assert reads.total == 0
    # active entries 1, 2, 3, 6: mean 3, population variance (1+4+9+36)/4 - 9 = 3.5
    assert {k: float(v) for k, v in logged.items()} == pytest.approx(
        {"adv/mean": 3.0, "adv/std": math.sqrt(3.5), "adv/min": 1.0, "adv/max": 6.0}
    )
    # (B,) values: a row is active when any of its tokens is
    logged, ctx = collecting_context()
    log_distribution(ctx, "r", torch.tensor([4.0, 8.0]), torch.tensor([[1, 0], [0, 0]]))
    assert {k: float(v) for k, v in logged.items()} == {"r/mean": 4.0, "r/std": 0.0, "r/min": 4.0, "r/max": 4.0}
    # nothing active: mean 0, extremes at the float range (as before)
    logged, ctx = collecting_context()
    log_distribution(ctx, "e", torch.tensor([1.0]), torch.tensor([[0]]))
    big = torch.finfo(torch.float32).max
    assert {k: float(v) for k, v in logged.items()} == {"e/mean": 0.0, "e/std": 0.0, "e/min": big, "e/max": -big}


class _Mixin:
    pass


def test_log_rollout_is_exact_without_a_host_read(profile_step):
    raw = torch.tensor([1.0, float("nan"), 3.0, 5.0])
    rollout = Rollout(
        rewards=torch.tensor([0.0, float("nan"), 1.0, 2.0]),
        num_generations=2,
        completion_mask=torch.ones(4, 2),
        logprobs=torch.tensor([[-1.0, -1.0], [-2.0, -2.0], [-1.0, -1.0], [-1.0, -1.0]]),
        ref_logprobs=torch.full((4, 2), -1.5),
        advantages=torch.tensor([1.0, 0.0, -1.0, 0.0]),
    )
    logged, ctx = collecting_context()
    with Reads(profile_step) as reads:
        TrickTrainerMixin.log_rollout(_Mixin(), rollout, raw, ctx)
    assert reads.total == 0
    values = {k: float(v) for k, v in logged.items()}
    assert values["reward_raw/mean"] == 3.0
    assert values["reward_transformed/mean"] == 1.0 and values["reward_transformed/std"] == 1.0  # unbiased
    assert values["kl_to_ref/k1_token_mean"] == pytest.approx((0.5 * 6 - 0.5 * 2) / 8)
    # one scorable reward: std 0; none: NaN mean and std (raw mean NaN too)
    logged, ctx = collecting_context()
    one = rollout.replace(rewards=torch.tensor([float("nan"), float("nan"), 2.0, float("nan")]))
    TrickTrainerMixin.log_rollout(_Mixin(), one, raw, ctx)
    assert float(logged["reward_transformed/mean"]) == 2.0 and float(logged["reward_transformed/std"]) == 0.0
    logged, ctx = collecting_context()
    none = rollout.replace(rewards=torch.full((4,), float("nan")))
    TrickTrainerMixin.log_rollout(_Mixin(), none, torch.full((4,), float("nan")), ctx)
    assert all(math.isnan(float(logged[k])) for k in ("reward_raw/mean", "reward_transformed/mean",
                                                       "reward_transformed/std"))  # fmt: skip


def meta_rollout(n=4, t=3):
    meta = torch.device("meta")
    return Rollout(
        rewards=torch.empty(n, device=meta),
        num_generations=2,
        completion_mask=torch.empty(n, t, device=meta),
        completion_lengths=torch.empty(n, device=meta),
        logprobs=torch.empty(n, t, device=meta),
        ref_logprobs=torch.empty(n, t, device=meta),
        advantages=torch.empty(n, t, device=meta),
    )


def test_zero_unscorable_makes_no_host_read_and_no_cpu_tensor():
    logged, ctx = collecting_context()
    out = _zero_unscorable(meta_rollout(), ctx)
    assert out.advantages.device.type == "meta"
    assert set(logged) == {"tricks/unscorable_fraction", "tricks/nonfinite_advantage_fraction"}
    assert all(v.device.type == "meta" for v in logged.values())


@pytest.mark.parametrize("placement", ["token_reward", "sequence_reward"])
def test_kl_shaping_keeps_its_tensors_on_the_rollouts_device(registry, placement):
    """The per-sequence count used to be a CPU tensor stacked with the KL: an error on any other device."""
    args = TrickArguments(kl_coef=0.1, kl_placement=placement)  # fixed coefficient: no read to the host
    pipeline = TrickPipeline.from_args(args, registry)
    logged, ctx = collecting_context()
    (kl,) = pipeline.tricks
    out = kl.apply(meta_rollout(), ctx)
    assert (out.dense_rewards if placement == "token_reward" else out.rewards).device.type == "meta"
    assert logged["k1_sequence_mean"].device.type == "meta"


def test_pipeline_of_every_rollout_trick_reads_the_host_once(registry, profile_step):
    """Running reward normalization's moments are host state (one read); everything else stays on the device."""
    args = TrickArguments(
        reward_norm="running", reward_clip=5.0, kl_coef=0.05, kl_placement="token_reward", whiten_advantages=True,
        advantage_clip=5.0, advantage_estimator="reinforce",
    )  # fmt: skip
    pipeline = TrickPipeline.from_args(args, registry)
    rollout = Rollout(
        rewards=torch.tensor([1.0, float("nan"), 3.0, 0.5]),
        num_generations=2,
        completion_mask=torch.ones(4, 3),
        completion_lengths=torch.full((4,), 3.0),
        logprobs=-torch.rand(4, 3),
        ref_logprobs=-torch.rand(4, 3),
    )
    logged, ctx = collecting_context()
    with Reads(profile_step) as reads:
        out = pipeline.process(rollout, ctx)
    assert reads.total == 1
    assert torch.isfinite(out.advantages).all()
    assert float(logged["tricks/unscorable_fraction"]) == 0.25
    assert float(logged["tricks/reward_clip/clip_fraction"]) == 0.0


def test_deferred_metrics_are_registered_once_even_when_a_subclass_skips_the_trick_setup():
    class Trainer(TrickTrainerMixin):
        def __init__(self):
            self.callbacks = []

        def add_callback(self, callback):
            self.callbacks.append(callback)

    trainer = Trainer()  # like a subclass that sets its (empty) pipeline up itself
    first = trainer.deferred_metrics
    assert isinstance(first, DeferredMetrics) and trainer.deferred_metrics is first
    assert trainer.callbacks == [first]
