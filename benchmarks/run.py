"""Speed and memory of the trl_basics trainers against their TRL parents and against each other, in one run.

Identical geometry for every trainer: the same saved kit model, the same prompts and seed, the same number of
completions per step (``num_generations`` per prompt for every trainer, PPO-max included), and every completion forced
to exactly the same number of tokens (``min_new_tokens`` = ``max_completion_length``), so each step does the same model
work whatever the policy samples. fp32, no gradient checkpointing, one thread, one on-policy update per generation
round.

Two kinds of child process, interleaved over ``--repeats`` repeats:

- **timing** (one per geometry and repeat): every trainer is built in the same process and they train *in turns, one
  optimizer step each* (a thread per trainer, a baton passed at every step, the order rotated per repeat), together
  with a unit micro-benchmark of the model's own work (``generate``, a no-grad forward with log-probs, a
  forward+backward, the critic's passes, AdamW steps) that takes its turn in the same rotation. Background load on a
  shared machine therefore falls on every trainer alike, step by step. Per trainer: TRL's logged ``step_time``
  (wall clock of ``training_step``: generation, rewards, log-prob and value passes, loss, backward; the policy's
  optimizer step is outside it, PPO-max's critic step inside) and the thread's CPU time over the same interval.
- **memory** (one per trainer and repeat, 1x geometry): a fresh process that builds one trainer and trains a few
  steps; its RSS high-water mark minus its RSS right after the trainer was built (activations, optimizer states,
  generation caches: what training adds) and minus its RSS just before it was built (adds the weights). The parent
  reads the peak with ``os.wait4``. Its step times are reported too, as the one-trainer-per-process cross-check.

Per run the first ``--warmup`` steps are dropped and the median of the rest kept; tables show medians over repeats.
From the unit costs, the ideal step time of each algorithm is ``t_gen + n_fwd·t_fwd + n_fb·t_fb`` (+ the critic's
passes and AdamW step for PPO-max), with the pass counts in ``TRAINERS``; see ``docs/benchmarks.md``.

    OMP_NUM_THREADS=1 python benchmarks/run.py --update-docs docs/benchmarks.md   # full run (~20 min, quiet 2 cores)
    OMP_NUM_THREADS=1 python benchmarks/run.py --quick --output /tmp/bench.md    # smoke test, under a minute
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from common import (  # benchmarks/ is on the path from here on
    DOCS_MARKERS,
    MODELS,
    TRAINERS,
    geometries,
    run_child,
    timing_steps,
    update_docs,
)
from run_report import machine_summary, render, versions
from run_workers import worker_memory, worker_timing


def run_all(args: argparse.Namespace) -> dict:
    from trl_basics.kit.model import save_tiny_model

    hidden, layers, heads, intermediate = MODELS[args.model]
    geos = geometries(args)
    timing: list[dict] = []
    memory: list[dict] = []
    started = time.perf_counter()
    total = args.repeats * (len(geos) + (len(args.trainers) if args.memory else 0))
    done = 0

    def progress(text: str, t0: float) -> None:
        print(
            f"[{done}/{total} {time.perf_counter() - started:5.0f}s] {text} ({time.perf_counter() - t0:.0f}s)",
            file=sys.stderr, flush=True,
        )  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(
            save_tiny_model(
                Path(tmp) / "model", hidden_size=hidden, num_layers=layers, num_heads=heads,
                intermediate_size=intermediate,
            )
        )  # fmt: skip
        for repeat in range(args.repeats):
            shift = repeat % len(args.trainers)
            order = [*args.trainers[shift:], *args.trainers[:shift]]
            common = [
                "--model-dir", model_dir, "--task", args.task, "--num-generations", str(args.num_generations),
                "--warmup", str(args.warmup), "--unit-iters", str(args.unit_iters),
            ]  # fmt: skip
            # Memory runs between the timing runs, so that both kinds see the same phases of the machine.
            memory_order = order if args.memory else []
            slots = max(len(geos), len(memory_order))
            for slot in range(slots):
                if slot < len(geos):
                    batch, length, label = geos[slot]
                    t0 = time.perf_counter()
                    child = [
                        "--worker", "timing", "--trainers", ",".join(order), "--batch-size", str(batch),
                        "--completion-length", str(length), "--steps", str(timing_steps(args, slot)), *common,
                    ]  # fmt: skip
                    result, _ = run_child(child, args.timeout, __file__)
                    done += 1
                    units = result.pop("units")
                    for name, summary in result.items():
                        timing.append({"repeat": repeat, "geometry": label, "batch_size": batch,
                                       "completion_length": length, "trainer": name, **summary})  # fmt: skip
                    timing.append({"repeat": repeat, "geometry": label, "batch_size": batch,
                                   "completion_length": length, "trainer": "units", **units})  # fmt: skip
                    progress(
                        f"rep {repeat} timing {label:5s} "
                        + " ".join(f"{n} {result[n]['step_cpu_s'] * 1e3:.0f}" for n in order) + " ms CPU",
                        t0,
                    )  # fmt: skip
                if slot < len(memory_order):
                    name = memory_order[slot]
                    t0 = time.perf_counter()
                    child = [
                        "--worker", "memory", "--trainer", name, "--batch-size", str(args.batch_size),
                        "--completion-length", str(args.completion_length), "--steps", str(args.memory_steps),
                        *common,
                    ]  # fmt: skip
                    result, peak = run_child(child, args.timeout, __file__)
                    done += 1
                    result.update(repeat=repeat, trainer=name, peak_rss_mb=peak)
                    result["peak_over_built_mb"] = peak - result["rss_built_mb"]
                    result["peak_over_before_mb"] = peak - result["rss_before_mb"]
                    memory.append(result)
                    progress(
                        f"rep {repeat} memory {name:12s} peak {peak:.0f} MB, +{result['peak_over_built_mb']:.0f} MB "
                        f"over built, +{result['peak_over_before_mb']:.0f} MB over pre-build",
                        t0,
                    )  # fmt: skip
    return {
        "timing": timing, "memory": memory, "wall_s": time.perf_counter() - started,
        "finished": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine_summary(),
        "versions": versions(),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Smoke test: tiny model and geometry, 1 repeat (<1 min).")
    parser.add_argument("--model", choices=list(MODELS), default="small", help="Kit model size (see MODELS).")
    parser.add_argument("--task", default="token_kind", help="Kit task: prompts and reward function.")
    parser.add_argument("--batch-size", type=int, default=16, help="Completions per step at 1x.")
    parser.add_argument("--completion-length", type=int, default=16, help="Tokens per completion at 1x.")
    parser.add_argument("--num-generations", type=int, default=4, help="Completions per prompt, every trainer.")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4], help="Growth factors of B and T.")
    parser.add_argument("--trainers", nargs="+", default=list(TRAINERS), choices=list(TRAINERS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="Optimizer steps per trainer in a timing run.")
    parser.add_argument("--steps-1x", type=int, default=40, help="Steps per trainer at the 1x geometry (targets).")
    parser.add_argument("--warmup", type=int, default=2, help="First steps of each run left out of the median.")
    parser.add_argument("--unit-iters", type=int, default=5, help="Timed iterations of the unit costs.")
    parser.add_argument("--memory-steps", type=int, default=4, help="Steps of each memory run.")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="Skip the memory runs.")
    parser.add_argument("--output", default=str(HERE / "results" / "latest.md"), help="Markdown written here.")
    parser.add_argument("--json", default=None, help="Raw measurements as JSON (default: next to --output).")
    parser.add_argument("--update-docs", default=None, help="Replace the marked block of this Markdown file.")
    parser.add_argument("--timeout", type=float, default=900.0, help="Seconds before a child process is killed.")
    parser.add_argument("--render", default=None, help="Only re-render the tables from a JSON file this script wrote.")
    # worker-only
    parser.add_argument("--worker", choices=["timing", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--trainer", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv) if "--worker" not in argv else _parse_worker(parser, argv)

    if args.worker:
        result = worker_timing(args) if args.worker == "timing" else worker_memory(args)
        with open(args.result, "w") as f:
            json.dump(result, f)
        return 0
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        markdown = render(argparse.Namespace(**saved["args"]), saved, saved["command"])
        if args.update_docs:
            update_docs(Path(args.update_docs), markdown, DOCS_MARKERS)
        print(markdown)
        return 0

    if args.quick:
        args.model, args.batch_size, args.completion_length, args.scales = "kit-tiny", 8, 4, [1]
        args.repeats, args.steps, args.steps_1x, args.warmup, args.unit_iters, args.memory_steps = 1, 3, 3, 1, 2, 2
        if "--trainers" not in argv:
            args.trainers = ["trl_rloo", "rloo", "ppo_max"]
    if args.batch_size % args.num_generations:
        parser.error("--batch-size must be a multiple of --num-generations")
    results = run_all(args)
    command = shlex.join(["OMP_NUM_THREADS=1", "python", "benchmarks/run.py", *argv])
    markdown = render(args, results, command)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(markdown)
    json_path = Path(args.json) if args.json else output.with_suffix(".json")
    json_path.write_text(json.dumps({"args": vars(args), "command": command, **results}, indent=2))
    if args.update_docs:
        update_docs(Path(args.update_docs), markdown, DOCS_MARKERS)
    print(markdown)
    print(f"Written: {output} and {json_path}", file=sys.stderr)
    return 0


def _parse_worker(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Workers get ``--trainers`` as one comma-separated string."""
    index = argv.index("--trainers") if "--trainers" in argv else None
    trainers = None
    if index is not None:
        trainers = argv[index + 1]
        argv = argv[:index] + argv[index + 2 :]
    args = parser.parse_args(argv)
    if trainers is not None:
        args.trainers = trainers
    return args


if __name__ == "__main__":
    sys.exit(main())
