"""The GPU benchmark on the CPU: the smoke run's output structure, and decoding when the vocabulary is larger than
the tokenizer. Timings are never asserted."""

import importlib.util
import json

import pytest
import torch

from .test_smoke import _load, _run

TRAINERS = {"trl_rloo", "rloo", "rloo_tricks", "trl_grpo", "reinforce_pp", "ppo_max"}
CONFIGS = {"transformers, checkpointing off", "transformers, checkpointing on"}


@pytest.mark.slow
def test_tiny_cpu_run_times_and_counts_every_trainer_at_both_checkpointing_settings(tmp_path):
    out = tmp_path / "gpu.md"
    proc = _run("gpu.py", "--device", "cpu", "--tiny", "--output", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    saved = json.loads(out.with_suffix(".json").read_text())
    steps, warmup = saved["args"]["steps"], saved["args"]["warmup"]
    assert saved["summary"].keys() == CONFIGS
    rows = saved["timing"]
    assert {(r["config"], r["trainer"]) for r in rows} == {(c, t) for c in CONFIGS for t in TRAINERS}
    assert len(rows) == len(CONFIGS) * len(TRAINERS)  # one row each: 1 repeat
    for row in rows:
        where = (row["config"], row["trainer"])
        assert len(row["step_times_s"]) == steps and all(t > 0 for t in row["step_times_s"]), where
        assert row["mean_completion_length"] == 4, where  # every completion forced to exactly T tokens
        assert len(row["syncs_per_step"]) == len(row["syncs_trl_basics_per_step"]) == warmup, where
        assert all(s > 0 for s in row["syncs_per_step"]), where  # TRL itself reads metrics to the host
        own = row["syncs_trl_basics_per_step"]
        assert all(0 <= o <= s for o, s in zip(own, row["syncs_per_step"], strict=True)), where
        if row["trainer"].startswith("trl_"):
            assert own == [0] * warmup, where  # TRL's own trainers run no trl_basics code
        else:
            assert all(o > 0 for o in own), where  # at least the one read of the step's deferred metrics
        assert row["peak_memory_bytes"] is None, where  # no GPU memory on the CPU
    for config in CONFIGS:
        for name in TRAINERS:
            entry = saved["summary"][config][name]
            assert entry["step_time_s"] > 0 and entry["tokens_per_s"] > 0 and entry["samples"] == steps - warmup
    text = out.read_text()
    assert text.startswith("Command: `python benchmarks/gpu.py --device cpu --tiny")
    for config in CONFIGS:
        assert f"### {config}" in text
    common = _load("common")
    for _, label, *_ in common.TARGETS:
        assert text.count(f"| {label} |") == len(CONFIGS), label
    assert "| tb.PPOMaxTrainer |" in text and "(trl.GRPOTrainer) |" in text
    if importlib.util.find_spec("vllm") is None:
        assert "vLLM colocate: not measured (vllm is not importable)." in text


@pytest.fixture(scope="module")
def gpu():
    return _load("gpu")


@pytest.fixture(scope="module")
def tiny_qwen(gpu, tmp_path_factory):
    directory = gpu.write_model(tmp_path_factory.mktemp("qwen") / "model", "tiny")
    return directory, gpu.load_tokenizer(str(directory))


def test_tiny_model_is_a_qwen2_whose_vocabulary_exceeds_the_tokenizer(gpu, tiny_qwen):
    from transformers import AutoModelForCausalLM

    directory, tokenizer = tiny_qwen
    model = AutoModelForCausalLM.from_pretrained(directory)
    assert model.config.model_type == "qwen2"
    assert model.get_output_embeddings().weight.shape[0] == 1024 > len(tokenizer)
    # The kit's word-level tokenizer, not Qwen2Tokenizer: one id per word
    assert tokenizer("say a b")["input_ids"] == [tokenizer.convert_tokens_to_ids(t) for t in ("say", "a", "b")]


def test_sampling_never_draws_an_id_the_tokenizer_cannot_decode(gpu, tiny_qwen):
    from transformers import AutoModelForCausalLM, GenerationConfig

    directory, tokenizer = tiny_qwen
    model = AutoModelForCausalLM.from_pretrained(directory)
    prompt = tokenizer(["say a"] * 8, return_tensors="pt")
    length = 16

    def sample(kwargs):
        config = GenerationConfig(do_sample=True, max_new_tokens=length, pad_token_id=tokenizer.pad_token_id, **kwargs)
        torch.manual_seed(0)
        return model.generate(**prompt, generation_config=config)[:, prompt["input_ids"].shape[1] :]

    kwargs = gpu.generation_kwargs(tokenizer, 1024, length, "transformers")
    assert kwargs["suppress_tokens"] == list(range(len(tokenizer), 1024))
    masked = sample(kwargs)
    assert masked.shape == (8, length)  # min_new_tokens: exactly T tokens
    assert int(masked.max()) < len(tokenizer)
    texts = tokenizer.batch_decode(masked, skip_special_tokens=True)
    assert all(isinstance(text, str) for text in texts) and any(texts)
    # Without the mask the random model does draw ids beyond the tokenizer (most of the vocabulary is beyond it).
    assert int(sample({"min_new_tokens": length}).max()) >= len(tokenizer)


def test_vllm_kwargs_allow_exactly_the_decodable_ids(gpu, tiny_qwen):
    _, tokenizer = tiny_qwen
    kwargs = gpu.generation_kwargs(tokenizer, 151_936, 64, "vllm")
    assert kwargs == {"min_tokens": 64, "allowed_token_ids": list(range(len(tokenizer)))}


def test_bad_flags_fail_before_any_work(tmp_path):
    proc = _run("gpu.py", "--device", "cpu", "--tiny", "--steps", "1", "--warmup", "1", timeout=120)
    assert proc.returncode == 2 and "--steps must exceed --warmup" in proc.stderr
    proc = _run("gpu.py", "--device", "cpu", "--checkpointing", "maybe", timeout=120)
    assert proc.returncode == 2 and "expected 'on' or 'off', got 'maybe'" in proc.stderr


def test_docs_hold_the_gpu_block_and_the_exact_requirements(gpu):
    from .test_smoke import REPO

    text = (REPO / "docs" / "benchmarks.md").read_text()
    start, end = gpu.GPU_DOCS_MARKERS
    block = text.split(start, 1)[1].split(end, 1)[0].strip()
    # Either no GPU run yet, or the tables a GPU run wrote (never anything in between)
    assert block == "not yet measured" or (
        block.startswith("Command: `python benchmarks/gpu.py") and "### transformers, checkpointing off" in block
    )
    pins = [
        line.split("==")
        for line in (REPO / "benchmarks" / "requirements-gpu.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    ]
    assert {name for name, _ in pins} >= {"trl", "transformers", "accelerate"}
    for name, version in pins:
        assert f"{name} {version}" in text, name


def test_update_docs_replaces_only_the_gpu_block(gpu, tmp_path):
    run = _load("run")
    page = tmp_path / "page.md"
    cpu_start, cpu_end = run.DOCS_MARKERS
    start, end = gpu.GPU_DOCS_MARKERS
    page.write_text(f"{cpu_start}\ncpu\n{cpu_end}\n{start}\nnot yet measured\n{end}\n")
    run.update_docs(page, "gpu table\n", gpu.GPU_DOCS_MARKERS)
    assert page.read_text() == f"{cpu_start}\ncpu\n{cpu_end}\n{start}\ngpu table\n{end}\n"
