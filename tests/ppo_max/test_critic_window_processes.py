"""The critic's and the (``dapo``) policy's first update, KL in the loss and entropy bonus included, are the same on 1
and 2 processes, with 1 or 2 accumulated micro-batches: `accelerate launch` on CPU (gloo), greedy decoding so that every run trains on the same completions.

The tiny model decodes greedily either token 45 or token 46 over and over, depending on the prompt; with 46 an
end-of-sequence token too, the completions are 1 or 6 tokens long, so micro-batches and ranks hold different
numbers of tokens."""

import json
from pathlib import Path

import pytest
from distributed.test_two_processes import accelerate_launch  # tests/ is on sys.path
from helpers import model_with_short_completions

WORKER = Path(__file__).with_name("window_worker.py")


def launch(num_processes, model_dir, out_dir):
    report = out_dir / f"{num_processes}.json"
    result = accelerate_launch(num_processes, str(WORKER), model_dir, str(out_dir / str(num_processes)), str(report))
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(report.read_text())


@pytest.mark.slow
def test_the_first_update_does_not_depend_on_processes_or_micro_batches(tmp_path, tiny_model_dir):
    model_dir = model_with_short_completions(tiny_model_dir, tmp_path)
    one, two = launch(1, model_dir, tmp_path), launch(2, model_dir, tmp_path)
    assert two["1"]["world"] == 2
    reference = one["1"]
    for run in (one["2"], two["1"], two["2"]):
        assert run["critic"] == pytest.approx(reference["critic"], rel=1e-5), (one, two)
        assert run["policy"] == pytest.approx(reference["policy"], rel=1e-5), (one, two)
    # The rule without the window's count (each micro-batch its own token mean) differs on 2 processes: the ranks'
    # micro-batches hold different numbers of tokens.
    assert two["2_per_micro_batch"]["critic"] != pytest.approx(reference["critic"], rel=1e-4), two
    # So does the policy's, through the loss-stage terms (KL in the loss, entropy bonus): TRL's dapo loss keeps its own
    # window normaliser.
    assert two["2_per_micro_batch"]["policy"] != pytest.approx(reference["policy"], rel=1e-4), two
