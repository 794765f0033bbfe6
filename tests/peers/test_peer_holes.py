"""Peer parity on masks with interior holes (tool outputs inside a completion), for every estimator.

The rule (docs/reinforce_pp.md and docs/ppo_max.md, "Holes in the mask"): a hole is transparent, so every estimator
gives a completion with holes what it gives the completion with the holes deleted. verl @1dda039 follows the same
rule in REINFORCE++'s returns and in GAE; OpenRLHF spends γ (γλ) per masked position, and the tests here and in
test_peer_parity.py (HOLES) show the exact relation. Uses the batches and pipelines of test_peer_parity.py.
"""

from __future__ import annotations

import pytest
import torch

from trl_basics import TrickArguments
from trl_basics.pipeline import TrickPipeline
from trl_basics.types import TrickContext

from . import reference as ref
from .test_peer_parity import (
    F64,
    SEEDS,
    as_openrlhf,
    close,
    has_holes,
    on_active,
    random_batch,
    registry,
    rloo_pipeline,
    rollout_of,
    rpp_pipeline,
)


def without_holes(b):
    """The batch with every hole deleted: each row's active tokens moved to the front, in order (holes become
    right padding), with their log-probs and values."""
    order = torch.argsort((b["mask"] == 0).to(torch.int8), dim=-1, stable=True)
    moved = {key: b[key].gather(-1, order) for key in ("mask", "logp", "ref", "values")}
    return {**b, **moved}


def hole_free_pipelines():
    """Every estimator as its trainer configures it, at γ = 1 and γ < 1, with the whitening the trainer applies."""
    gae = TrickArguments(advantage_estimator="gae", gamma=0.95, gae_lambda=0.9, kl_coef=0.05)
    return {
        "reinforce_pp": lambda: rpp_pipeline(),
        "reinforce_pp_gamma": lambda: rpp_pipeline(gamma=0.9),
        "reinforce_pp_baseline": lambda: rpp_pipeline(baseline="group", kl_placement="token_reward", gamma=0.9),
        "rloo_token": lambda: rloo_pipeline(beta=0.0, kl_coef=0.05, kl_placement="token_reward", gamma=0.9),
        "gae": lambda: TrickPipeline.from_args(gae, registry()),
    }


@pytest.mark.parametrize("name", list(hole_free_pipelines()))
def test_holes_are_deleted_tokens(name) -> None:
    """HOLES: every estimator gives each policy token of a completion with holes exactly what it gives that token
    once the holes are deleted (advantages after whitening, and the critic's targets)."""
    seen_holes = False
    for seed in SEEDS:
        b = random_batch(seed, k=2 + seed % 7, holes=True)
        seen_holes |= has_holes(b["mask"])
        compact = without_holes(b)
        out = hole_free_pipelines()[name]().process(rollout_of(b), TrickContext())
        ref_out = hole_free_pipelines()[name]().process(rollout_of(compact), TrickContext())
        assert out.advantages.dim() == 2
        # Whitening divides by std, which is small for a tied batch: compare at 1e-7, as for the peers' whitening.
        close(f"holes_deleted_{name}", on_active(out.advantages, b["mask"]),
              on_active(ref_out.advantages, compact["mask"]), atol=1e-7, rtol=1e-7)  # fmt: skip
        if out.returns is not None:
            close(f"holes_deleted_{name}_returns", on_active(out.returns, b["mask"]),
                  on_active(ref_out.returns, compact["mask"]))  # fmt: skip
    assert seen_holes


def test_reinforce_pp_with_holes_and_discount_differs_from_openrlhf() -> None:
    """HOLES at γ < 1: trl_basics' REINFORCE++ on a completion with holes is OpenRLHF's on the completion with the
    holes deleted; OpenRLHF on the completion with holes spends γ at every masked position and differs."""
    for seed in SEEDS:
        b = random_batch(seed, holes=True)
        if not has_holes(b["mask"]):
            continue
        compact = without_holes(b)
        out = rpp_pipeline(kl_clamp=10.0, gamma=0.9).process(rollout_of(b), TrickContext())
        args = ("reinforce", b["rewards"], b["k"], compact["logp"], compact["ref"], compact["mask"])
        peer = ref.openrlhf_advantages(*args, kl_coef=0.01, dtype=F64, gamma=0.9)
        raw = ref.openrlhf_advantages(*args, kl_coef=0.01, dtype=F64, gamma=0.9, whiten=False)
        close("reinforce_pp_gamma_holes_deleted_openrlhf",
              on_active(as_openrlhf(out.advantages, raw, compact["mask"]), b["mask"]),
              on_active(peer, compact["mask"]))  # fmt: skip
        holed_args = ("reinforce", b["rewards"], b["k"], b["logp"], b["ref"], b["mask"])
        holed = ref.openrlhf_advantages(*holed_args, kl_coef=0.01, dtype=F64, gamma=0.9)
        assert not torch.allclose(on_active(holed, b["mask"]), on_active(peer, compact["mask"]))


def test_gae_with_holes_in_the_ppo_max_estimator_is_verls() -> None:
    """HOLES: the pipeline's gae estimator (token KL in the reward, γ = 1, λ = 0.9) against verl's KL reward and GAE
    on masks with interior holes: the advantages and the critic's targets agree on every policy token."""
    args = TrickArguments(advantage_estimator="gae", gae_lambda=0.9, kl_coef=0.05)
    for seed in SEEDS:
        b = random_batch(seed, holes=True)
        mask = b["mask"]
        out = TrickPipeline.from_args(args, registry()).process(rollout_of(b), TrickContext())
        scores, _ = ref.verl_kl_reward(ref.verl_scores(b["rewards"], mask), b["logp"], b["ref"], mask, 0.05, "k1")
        _, peer_ret, raw = ref.verl_gae(scores, b["values"], mask, 1.0, 0.9)
        close("gae_pipeline_holes_verl", on_active(out.advantages, mask), on_active(raw, mask))
        close("gae_pipeline_holes_verl", on_active(out.returns, mask), on_active(peer_ret, mask))
