"""The claims `trl-basics reproduce` measures: the run configurations, and one row per claim (or part of a claim).

A run configuration is an algorithm of `algorithms.py` plus flags, trained once per seed and shared by every claim
that uses it (the RLOO k = 4 baseline serves claims 1, 2, 3, 4 and 6). A row says what the paper claims (in our
words, with where it says so), what it reported, how the claim is measured (one number per seed, per arm), and which
form of the verdict rule applies (`claim_stats.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from . import claim_metrics as m
from .assessment import RunResult

PAPERS = {
    "rloo": "Back to Basics: REINFORCE-style optimisation for RLHF (Ahmadian et al. 2024, arXiv 2402.14740)",
    "reinforce_pp": "REINFORCE++ (Hu 2025, arXiv 2501.03262)",
    "ppo_max": "Secrets of RLHF in Large Language Models Part I: PPO, PPO-max (Zheng et al. 2023, arXiv 2307.04964)",
}
NOISE_LEVELS = (0.5, 1.0)  # standard deviations of the Gaussian noise added to the reward model's score
NON_INFERIORITY_MARGIN = 0.05  # task success (share of prompts), fixed in advance
CLIP_RARE_BOUND = 0.05  # "rarely": the clip is active on fewer than 5% of tokens


@dataclass(frozen=True)
class RunConfig:
    """One configuration, run once per seed. ``pipeline`` is "main" (the kit pipeline: SFT model, learned reward
    model, the verifiable task reward logged as the gold measure) or "small" (a few training prompts of
    ``target_letter``, optimising its verifiable reward)."""

    key: str
    label: str
    algorithm: str
    flags: tuple[str, ...] = ()
    num_generations: int | None = None  # None: the experiment's
    prompts_per_step_kept: bool = False  # with num_generations: keep the prompts per step, not the completions
    pipeline: str = "main"
    alarm_window: bool = True  # pass the reproduce's collapse-alarm window (TRL's GRPO has no such flag)
    overrides: dict = field(default_factory=dict)  # config values a flag cannot spell (None), through a YAML file


def _noise(level: float) -> tuple[str, ...]:
    return ("--reward_noise_std", str(level))


# PPO updates on each generated batch in several minibatch steps (here 4: the batch of 4 steps is generated at once,
# so the sample budget is unchanged); only then can its ratio clip act at all (claim 5 measures how often it does).
PPO_STEPS = ("--steps_per_generation", "4")


def _ppo(lam: float) -> tuple[str, ...]:
    # PPO as Back to Basics runs it: critic from the reward model, GAE, token KL in the reward; PPO-max's reward
    # normalisation and clipping are kept (PPO-max as in its released code, λ = 0.95) so one run serves claims 1, 5, 10.
    return ("--gae_lambda", str(lam), *PPO_STEPS)


RUNS = {
    run.key: run
    for run in (
        RunConfig("rloo_k4", "RLOO k=4", "rloo"),
        RunConfig("rloo_k2", "RLOO k=2", "rloo", num_generations=2, prompts_per_step_kept=True),
        RunConfig("raft_k4", "RAFT k=4", "rloo", ("--advantage_estimator", "raft")),
        RunConfig("reinforce_ma", "REINFORCE + moving-average baseline", "reinforce_ma"),
        RunConfig("vanilla_pg", "vanilla REINFORCE (no baseline)", "rloo", ("--advantage_estimator", "vanilla")),
        RunConfig("ppo_lam095", "PPO (PPO-max trainer, λ=0.95)", "ppo_max", _ppo(0.95)),
        RunConfig("ppo_lam1", "PPO (PPO-max trainer, λ=1.0)", "ppo_max", _ppo(1.0)),
        *(RunConfig(f"rloo_noise{i}", f"RLOO k=4, reward noise σ={s:g}", "rloo", _noise(s)) for i, s in enumerate(NOISE_LEVELS, 1)),
        *(
            RunConfig(f"raft_noise{i}", f"RAFT k=4, reward noise σ={s:g}", "rloo", ("--advantage_estimator", "raft", *_noise(s)))
            for i, s in enumerate(NOISE_LEVELS, 1)
        ),
        RunConfig(
            "rloo_token_kl", "RLOO k=4, token-level KL", "rloo",
            ("--beta", "0.0", "--kl_coef", "0.05", "--kl_placement", "token_reward"),
        ),
        RunConfig("reinforce_pp", "REINFORCE++", "reinforce_pp"),
        RunConfig("grpo", "GRPO", "grpo", alarm_window=False),
        RunConfig(
            "vanilla_ppo", "vanilla PPO (no reward norm/clip, no KL, critic from SFT)", "ppo_max",
            ("--reward_norm", "none", "--critic_model_path", "{sft}", *PPO_STEPS),
            overrides={"reward_clip": None, "kl_coef": None},
        ),
        RunConfig("rpp_baseline_small", "REINFORCE++-baseline, few prompts", "reinforce_pp_baseline", pipeline="small"),
        RunConfig("grpo_small", "GRPO, few prompts", "grpo", pipeline="small", alarm_window=False),
    )
}  # fmt: skip

Value = Callable[[dict[str, RunResult], "Settings"], float]


@dataclass(frozen=True)
class Settings:
    """What the value functions need besides the runs: the gold metric and the per-step budget."""

    gold_metric: str
    completions_per_step: int


@dataclass(frozen=True)
class Claim:
    """One row: ``a`` and ``b`` give one number per seed; the row measures mean(a - b) (or a alone, ``b`` None)."""

    number: int
    paper: str
    text: str
    reported: str
    measure: str
    a: Value
    b: Value | None
    runs: tuple[str, ...]
    kind: str = "directional"
    margin: float = 0.0
    scale: float = 1.0
    unit: str = ""
    note: str = ""
    extra: Callable[[dict[int, dict[str, RunResult]], Settings], str] | None = field(default=None)


def arm(key: str, metric: Callable[..., float]) -> Value:
    return lambda runs, settings: metric(runs[key]) if key in runs and runs[key].failed is None else float("nan")


def noise_drop(key_clean: str, key_noisy: str) -> Value:
    def value(runs, settings):
        if any(k not in runs or runs[k].failed for k in (key_clean, key_noisy)):
            return float("nan")
        return m.final_reward(runs[key_clean]) - m.final_reward(runs[key_noisy])

    return value


def gain(key: str) -> Value:
    def value(runs, settings):
        if key not in runs or runs[key].failed:
            return float("nan")
        return m.reward_gain_per_kilo_sample(runs[key], settings.completions_per_step)

    return value


def reward_at_equal_kl(key: str, other: str) -> Value:
    """Reward of ``key`` where its KL reaches half the smaller of the two runs' final KL (paired by seed)."""

    def value(runs, settings):
        if any(k not in runs or runs[k].failed for k in (key, other)):
            return float("nan")
        level = 0.5 * min(m.final_kl(runs[key]), m.final_kl(runs[other]))
        return m.reward_at_kl(runs[key], level)

    return value


def generalisation_gap(key: str) -> Value:
    def value(runs, settings):
        run = runs.get(key)
        if run is None or run.failed or run.success_rate is None or "train_success" not in run.extras:
            return float("nan")
        return run.success_rate - run.extras["train_success"]

    return value


def gold(key: str, fn: Callable[[RunResult, str], float]) -> Value:
    def value(runs, settings):
        return fn(runs[key], settings.gold_metric) if key in runs and not runs[key].failed else float("nan")

    return value


def signal_lead(key: str, signal_metric: str) -> Value:
    """Steps by which a collapse signal fired before the gold reward started to fall (positive: earlier)."""

    def value(runs, settings):
        run = runs.get(key)
        if run is None or run.failed:
            return float("nan")
        return m.gold_fall_step(run, settings.gold_metric) - m.first_signal_step(run, signal_metric)

    return value


def fall_and_signal_counts(key: str, signal_metric: str):
    """How many seeds the gold reward fell on, and how many the signal fired on: why a lead may have no value."""

    def text(by_seed, settings):
        runs = [seed_runs[key] for seed_runs in by_seed.values() if key in seed_runs and not seed_runs[key].failed]
        fell = sum(math.isfinite(m.gold_fall_step(run, settings.gold_metric)) for run in runs)
        fired = sum(math.isfinite(m.first_signal_step(run, signal_metric)) for run in runs)
        return f"gold fell on {fell}/{len(by_seed)} seeds, the signal fired on {fired}/{len(by_seed)}"

    return text


def alarm_count(keys: tuple[str, ...]):
    def text(by_seed, settings):
        parts = []
        for key in keys:
            fired = sum(1 for runs in by_seed.values() if key in runs and m.alarm_fired(runs[key]))
            parts.append(f"alarm fired: {RUNS[key].label} {fired}/{len(by_seed)} seeds")
        return "; ".join(parts)

    return text


OPPONENTS = (("ppo_lam095", "PPO", "67.6"), ("raft_k4", "RAFT", "73.2"), ("reinforce_ma", "REINFORCE + b_MA", "70.7"),
             ("vanilla_pg", "vanilla PG", "70.4"))  # fmt: skip
T1 = "Table 1, TL;DR, Pythia-6.9B, GPT-4 win rate %"
METRICS_1 = (
    ("final reward", m.final_reward, "reward-model score, mean of the last 20% of steps"),
    ("task success", m.task_success, "held-out gold task success of the final policy"),
    ("reward AUC", m.reward_auc, "mean reward-model score over all steps"),
)


def _claims() -> list[Claim]:
    rows = []
    for key, name, reported in OPPONENTS:
        for metric_name, metric, what in METRICS_1:
            rows.append(Claim(
                1, "rloo", f"RLOO optimises reward better than {name} (the baselines of Table 1; §2.3 for RLOO)",
                f"RLOO k=4 77.9 vs {name} {reported} ({T1})", f"{metric_name}: RLOO k=4 − {name} ({what})",
                arm("rloo_k4", metric), arm(key, metric), ("rloo_k4", key),
                scale=100 if metric_name == "task success" else 1.0, unit=" pp" if metric_name == "task success" else "",
            ))  # fmt: skip
    for metric_name, metric, what in METRICS_1[:2]:
        rows.append(Claim(
            2, "rloo", "more online samples per prompt help: RLOO with k=4 beats k=2 (Table 1)",
            f"k=4 77.9 vs k=2 74.2 ({T1}; reversed on HH Pythia: 43.7 vs 47.6)",
            f"{metric_name}: k=4 − k=2, same prompts per step ({what})",
            arm("rloo_k4", metric), arm("rloo_k2", metric), ("rloo_k4", "rloo_k2"),
            scale=100 if metric_name == "task success" else 1.0, unit=" pp" if metric_name == "task success" else "",
        ))  # fmt: skip
    rows.append(Claim(
        3, "rloo", "RLOO uses its online samples more efficiently than RAFT (results: RLOO vs RAFT)",
        "qualitative (RLOO above RAFT at the same k in Table 1: 77.9 vs 73.2)",
        "reward gain per 1000 completions generated: RLOO k=4 − RAFT k=4",
        gain("rloo_k4"), gain("raft_k4"), ("rloo_k4", "raft_k4"),
    ))  # fmt: skip
    for i, level in enumerate(NOISE_LEVELS, 1):
        rows.append(Claim(
            4, "rloo", "RLOO is more robust than RAFT to noise in the reward (results: robustness to noise)",
            "qualitative (RAFT degrades more under noisy rewards)",
            f"drop of the final clean reward-model score under Gaussian noise σ={level:g} on the score: RAFT drop − "
            "RLOO drop",
            noise_drop("raft_k4", f"raft_noise{i}"), noise_drop("rloo_k4", f"rloo_noise{i}"),
            ("rloo_k4", "raft_k4", f"rloo_noise{i}", f"raft_noise{i}"),
        ))  # fmt: skip
    rows.append(Claim(
        5, "rloo", "PPO's variance reduction is not needed: λ=1.0 (no GAE bias) does not hurt and can help (§3)",
        "qualitative (λ=1.0 as good or better)", "task success: PPO λ=1.0 − PPO λ=0.95",
        arm("ppo_lam1", m.task_success), arm("ppo_lam095", m.task_success), ("ppo_lam1", "ppo_lam095"),
        kind="non_inferiority", margin=NON_INFERIORITY_MARGIN, scale=100, unit=" pp",
    ))  # fmt: skip
    rows.append(Claim(
        5, "rloo", "PPO's clipping is rarely active in RLHF (§3)", "qualitative (\"rarely\")",
        f"share of tokens where PPO's ratio clip is active (TRL's clip_ratio/region_mean), PPO λ=0.95, 4 minibatch "
        f"steps per generated batch (rule: below {CLIP_RARE_BOUND:.0%})",
        arm("ppo_lam095", lambda run: m.mean_of(run, m.CLIP)), None, ("ppo_lam095",),
        kind="upper_bound", margin=CLIP_RARE_BOUND, scale=100, unit=" %",
    ))  # fmt: skip
    rows.append(Claim(
        6, "rloo", "modelling the whole completion as one action works at least as well as per-token modelling (§3)",
        "qualitative", "task success: sequence-level KL in the reward − token-level KL",
        arm("rloo_k4", m.task_success), arm("rloo_token_kl", m.task_success), ("rloo_k4", "rloo_token_kl"),
        kind="non_inferiority", margin=NON_INFERIORITY_MARGIN, scale=100, unit=" pp",
    ))  # fmt: skip
    rows.append(Claim(
        7, "reinforce_pp", "REINFORCE++ gains more reward per unit of KL than GRPO (reward vs KL curves)",
        "qualitative (better reward-KL trade-off)",
        "reward at equal KL (half the smaller final per-token k1 KL of the pair): REINFORCE++ − GRPO",
        reward_at_equal_kl("reinforce_pp", "grpo"), reward_at_equal_kl("grpo", "reinforce_pp"),
        ("reinforce_pp", "grpo"),
    ))  # fmt: skip
    rows.append(Claim(
        8, "reinforce_pp", "GRPO is prone to length hacking; REINFORCE++ is not (completion-length curves)",
        "qualitative (GRPO's length grows)", "growth of the mean completion length (tokens): GRPO − REINFORCE++",
        arm("grpo", m.length_growth), arm("reinforce_pp", m.length_growth), ("grpo", "reinforce_pp"),
        note="lengths are capped by --max_completion_length",
    ))  # fmt: skip
    rows.append(Claim(
        8, "reinforce_pp", "... and REINFORCE++ ends with the better gold (task) success",
        "qualitative", "task success: REINFORCE++ − GRPO",
        arm("reinforce_pp", m.task_success), arm("grpo", m.task_success), ("reinforce_pp", "grpo"),
        scale=100, unit=" pp",
    ))  # fmt: skip
    rows.append(Claim(
        9, "reinforce_pp", "global normalisation (REINFORCE++-baseline) generalises better than GRPO's per-prompt "
        "normalisation on a small prompt set (v9, Global Advantage Normalization)",
        "v9 Table 4 (tool use, Qwen2.5-7B): R++-baseline 24.10 vs GRPO 22.58",
        "held-out − training task success (few training prompts, `--small_prompts`): R++-baseline gap − GRPO gap",
        generalisation_gap("rpp_baseline_small"), generalisation_gap("grpo_small"),
        ("rpp_baseline_small", "grpo_small"), scale=100, unit=" pp",
    ))  # fmt: skip
    rows.append(Claim(
        10, "ppo_max", "vanilla PPO over-optimises the learned reward; PPO-max does not (§5.2, Fig. 4 vs Fig. 9)",
        "vanilla PPO collapses: win rate peaks ~65% then falls to ~25% (Fig. 4); PPO-max stays healthy",
        "task success: PPO-max − vanilla PPO",
        arm("ppo_lam095", m.task_success), arm("vanilla_ppo", m.task_success), ("ppo_lam095", "vanilla_ppo"),
        scale=100, unit=" pp", extra=alarm_count(("vanilla_ppo", "ppo_lam095")),
    ))  # fmt: skip
    rows.append(Claim(
        10, "ppo_max", "... vanilla PPO's gold success falls from its peak while its proxy reward rises (§5.2)",
        "gold falls ~40 points from its peak (Fig. 4)",
        "gold reward lost from its best 20% window to the last: vanilla PPO − PPO-max",
        gold("vanilla_ppo", m.gold_drop_from_peak), gold("ppo_lam095", m.gold_drop_from_peak),
        ("vanilla_ppo", "ppo_lam095"),
    ))  # fmt: skip
    for name, signal in m.SIGNALS.items():
        rows.append(Claim(
            11, "ppo_max", f"{name} signals instability earlier than the reward does (§5.2)", "qualitative",
            f"vanilla PPO: step where gold starts to fall − first step of the alarm's {name} signal (`{signal}`)",
            signal_lead("vanilla_ppo", signal), None, ("vanilla_ppo",),
            note="a seed counts only where the gold reward fell and the signal fired",
            extra=fall_and_signal_counts("vanilla_ppo", signal),
        ))  # fmt: skip
    rows.append(Claim(
        11, "ppo_max", "(for comparison) the reward signal of the alarm", "—",
        f"vanilla PPO: step where gold starts to fall − first step of `{m.REWARD_SIGNAL}`",
        signal_lead("vanilla_ppo", m.REWARD_SIGNAL), None, ("vanilla_ppo",),
        note="a seed counts only where the gold reward fell and the signal fired",
        extra=fall_and_signal_counts("vanilla_ppo", m.REWARD_SIGNAL),
    ))  # fmt: skip
    return rows


CLAIMS = tuple(_claims())


def runs_for(papers: list[str]) -> list[RunConfig]:
    """The run configurations the claims of ``papers`` need, each once, in first-use order."""
    keys = dict.fromkeys(key for claim in CLAIMS if claim.paper in papers for key in claim.runs)
    return [RUNS[key] for key in keys]


__all__ = ["CLAIMS", "NOISE_LEVELS", "PAPERS", "RUNS", "Claim", "RunConfig", "Settings", "runs_for"]
