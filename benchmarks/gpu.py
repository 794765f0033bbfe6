"""Step time, generated tokens per second, peak GPU memory and host syncs of the trl_basics trainers against their
TRL parents, at a real model size, on one GPU.

The machinery is ``benchmarks/run.py``'s, shared in ``common.py``: the same trainers and settings (``TRAINERS``,
``build_trainer``), the same identical geometry (every completion forced to exactly ``--completion-length`` tokens),
every trainer built in one child process and trained *in turns, one optimizer step each* (``Baton``, order rotated
per repeat), warm-up steps dropped, medians over the timed steps of all repeats, and the same targets (``TARGETS``)
and verdicts. What changes:

- **Model.** A Qwen2-architecture config (``--model 0.5b``: hidden 896, 24 layers, 14 heads with 2 key/value heads,
  MLP 4864, tied embeddings; ``1.5b``: hidden 1536, 28 layers, 12 heads, 2 key/value heads, MLP 8960) with a
  151,936-id vocabulary, random weights, written locally in bf16; nothing is downloaded. ``tiny`` is a 2-layer model
  with a 1,024-id vocabulary for CPU smoke tests. The kit's word-level tokenizer has far fewer ids than the
  embedding: generation is told never to sample an id the tokenizer cannot decode (``suppress_tokens`` for
  transformers' ``generate``, ``allowed_token_ids`` for vLLM), while every forward pass still computes and
  normalizes the logits of the full vocabulary, as with a real model.
- **Precision.** bf16 weights and ``bf16=True``, SDPA attention, gradient checkpointing off and on (one timing
  process each per repeat).
- **Generation.** TRL's transformers path; then, when vLLM is importable, vLLM in colocate mode (one process per
  trainer: one vLLM engine per process).
- **Timing.** Each ``training_step`` (TRL's ``step_time`` interval) between two ``torch.cuda.synchronize()`` calls.
- **Memory.** Around each turn ``torch.cuda.reset_peak_memory_stats()`` and ``max_memory_allocated()``: a trainer's
  peak is what it holds (the weights allocated while it was built, plus what its turns keep: optimizer states) plus
  the largest transient of any of its turns (activations, logits, generation cache, gradients), i.e. its peak if it
  were alone on the GPU.
- **Host syncs.** Counted in the warm-up steps (which are not timed): on a GPU every synchronizing CUDA call that
  ``torch.cuda.set_sync_debug_mode("warn")`` reports, on the CPU ``profile_step.py``'s counter (tensor reads to the
  host, ``tolist`` included). Each is charged to trl_basics' own code or to the rest (TRL, transformers,
  accelerate), and each trainer's total is compared with its TRL parent's.

    python benchmarks/gpu.py                                   # default: 0.5 B, B=32, T=64, 1 repeat
    python benchmarks/gpu.py --model 1.5b --repeats 3 --steps 12 --completion-length 256   # longer
    python benchmarks/gpu.py --device cpu --tiny --output /tmp/gpu.md                      # CPU smoke test
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from common import (  # benchmarks/ is on the path from here on
    TRAINERS,
    Baton,
    build_trainer,
    common_kwargs,
    cpu_model,
    instrument,
    parameter_counts,
    run_child,
    update_docs,
)
from gpu_model import MODELS, generation_kwargs, load_tokenizer, vllm_available, write_model
from gpu_report import render, structure
from profile_step import count_tolist, sync_counter, sync_owner

GPU_DOCS_MARKERS = ("<!-- gpu-table:start -->", "<!-- gpu-table:end -->")


# --- worker: every trainer of one configuration in turns ------------------------------------------------------------


class SyncCounter:
    """Host-device synchronizations of the calling thread while open, charged to ``trl_basics`` or ``other``.

    On CUDA: ``torch.cuda.set_sync_debug_mode("warn")`` makes every synchronizing call (``item``, ``tolist``,
    ``nonzero``, a blocking copy either way, ``synchronize``) raise a warning, caught here. On the CPU there is no
    device to wait for: [`profile_step.sync_counter`] counts the tensor reads to the host instead, which are the same
    calls on a GPU except device copies.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.counts = {"trl_basics": 0, "other": 0}

    def __enter__(self):
        self.counts = {"trl_basics": 0, "other": 0}
        if self.device == "cuda":
            import torch

            self._catch = warnings.catch_warnings()
            self._catch.__enter__()
            warnings.simplefilter("always")
            self._show = warnings.showwarning
            counts = self.counts

            def show(message, category, filename, lineno, file=None, line=None):
                if "synchronizing" in str(message):
                    owner = sync_owner(sys._getframe(1))
                    if owner is not None:
                        counts[owner] += 1
                    return None
                return self._show(message, category, filename, lineno, file, line)

            warnings.showwarning = show
            torch.cuda.set_sync_debug_mode("warn")
        else:
            self._mode = sync_counter()
            self._mode.counts = self.counts
            self._mode.__enter__()
            self._tolist = count_tolist(self._mode)
            self._tolist.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.set_sync_debug_mode(0)
            warnings.showwarning = self._show
            self._catch.__exit__(*exc)
        else:
            self._tolist.__exit__(*exc)
            self._mode.__exit__(*exc)


def _common(args: argparse.Namespace, output_dir: str, tokenizer, backend: str, checkpointing: bool) -> dict:
    """``run.py``'s shared trainer settings, moved to the device: bf16, SDPA, checkpointing as asked, vLLM colocate."""
    vocab = MODELS[args.model][5]
    common = common_kwargs(output_dir, args.batch_size, args.completion_length, args.num_generations, args.steps)
    on_gpu = args.device == "cuda"
    common.update(
        use_cpu=not on_gpu, bf16=on_gpu, gradient_checkpointing=checkpointing,
        model_init_kwargs={"dtype": "bfloat16" if on_gpu else "float32", "attn_implementation": "sdpa"},
        generation_kwargs=generation_kwargs(tokenizer, vocab, args.completion_length, backend),
    )  # fmt: skip
    if backend == "vllm":
        common.update(
            use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=args.vllm_memory,
            vllm_max_model_length=args.vllm_max_model_length,
        )  # fmt: skip
    return common


def _entry(name: str, checkpointing: bool) -> str:
    """A worker's name for trainer ``name`` at a checkpointing setting (several settings may share a process)."""
    return f"{name}+gc" if checkpointing else name


def _parse_entry(entry: str) -> tuple[str, bool]:
    name, _, suffix = entry.partition("+")
    return name, suffix == "gc"


def worker(args: argparse.Namespace) -> dict:
    """Every trainer of ``args.trainers`` (entries of [`_entry`]) in one process, one optimizer step each in turn.

    The first worker of a run writes the model (so that the parent never imports torch)."""
    import torch
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    from trl_basics.kit.tasks import get_task

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch sees no CUDA device; use --device cpu")
    if not cuda:
        torch.set_num_threads(1)
    task = get_task(args.task)
    if not (Path(args.model_dir) / "config.json").exists():
        write_model(args.model_dir, args.model, device=args.device)
    tokenizer = load_tokenizer(args.model_dir)
    names = args.trainers.split(",")
    baton = Baton(names)
    ready = threading.Event()
    results: dict = {}
    errors: list[BaseException] = []

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    counting = threading.local()  # while a turn counts host syncs, the clock adds none (those steps are not timed)

    def clock() -> float:
        if not getattr(counting, "on", False):
            sync()
        return time.perf_counter()

    def allocated() -> int:
        return torch.cuda.memory_allocated() if cuda else 0

    class TakeTurns(TrainerCallback):
        """One optimizer step per turn; counts syncs in the warm-up turns and the memory of every turn."""

        def __init__(self, name: str) -> None:
            self.name, self.holding, self.turn = name, False, 0
            self.counter = SyncCounter(args.device)
            self.syncs: list[dict] = []
            self.kept = 0  # bytes allocated at the end of its turns beyond their start (optimizer states)
            self.transient = 0  # largest peak of a turn above its start

        def _end_turn(self) -> None:
            if self.counting:
                self.counter.__exit__(None, None, None)
                self.syncs.append(dict(self.counter.counts))
            self.counting = counting.on = False
            sync()
            if cuda:
                self.transient = max(self.transient, torch.cuda.max_memory_allocated() - self.start_bytes)
                self.kept += allocated() - self.start_bytes
            self.holding = False
            self.turn += 1

        def on_step_begin(self, *a, **k):
            if self.holding:
                self._end_turn()
                baton.release(self.name)
            ready.set()
            baton.acquire(self.name)
            self.holding = True
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            self.start_bytes = allocated()
            self.counting = counting.on = self.turn < args.warmup
            if self.counting:
                self.counter.__enter__()

        def on_train_end(self, *a, **k):
            if self.holding:
                self._end_turn()
            baton.leave(self.name)

    def run_trainer(entry: str, tmp: str) -> None:
        name, checkpointing = _parse_entry(entry)
        try:
            common = _common(args, tmp, tokenizer, args.backend, checkpointing)
            dataset = task.make_dataset(args.batch_size // args.num_generations * args.steps, seed=0)
            sync()
            before = allocated()
            trainer = build_trainer(
                name, common, args.model_dir, dataset, task.reward_func, processing_class=tokenizer
            )
            sync()
            built = allocated() - before
            trainer.remove_callback(PrinterCallback)
            times = instrument(trainer, clock)
            turns = TakeTurns(entry)
            trainer.add_callback(turns)
            trainer.train()
            results[entry] = summarize_steps(trainer, times, turns, built, args)
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)
            ready.set()
        finally:
            baton.leave(entry)

    with tempfile.TemporaryDirectory() as tmp:
        threads = []
        for name in names:  # built one at a time: the next starts once this one waits for its first turn
            ready.clear()
            thread = threading.Thread(target=run_trainer, args=(name, f"{tmp}/{name.replace('+', '_')}"), name=name)
            thread.start()
            threads.append(thread)
            ready.wait()
        baton.open()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return {"trainers": results, "device_name": _device_name(args.device), "versions": _versions()}


def summarize_steps(trainer, times: list[float], turns, built: int, args: argparse.Namespace) -> dict:
    history = trainer.state.log_history
    lengths = [e["completions/mean_length"] for e in history if "completions/mean_length" in e]
    trl_times = [e["step_time"] for e in history if "step_time" in e]
    if len(times) != args.steps:
        raise RuntimeError(f"expected {args.steps} timed steps, got {len(times)}")
    if len(turns.syncs) != args.warmup:
        raise RuntimeError(f"expected sync counts of {args.warmup} warm-up steps, got {len(turns.syncs)}")
    held, trained = parameter_counts(trainer)
    step = statistics.median(times[args.warmup :])
    length = statistics.mean(lengths) if lengths else float("nan")
    cuda = args.device == "cuda"
    return {
        "step_time_s": step,
        "step_times_s": times,
        "trl_step_times_s": trl_times,
        "mean_completion_length": length,
        "tokens_per_s": args.batch_size * length / step,
        "syncs_per_step": [s["trl_basics"] + s["other"] for s in turns.syncs],
        "syncs_trl_basics_per_step": [s["trl_basics"] for s in turns.syncs],
        "peak_memory_bytes": built + turns.kept + turns.transient if cuda else None,
        "resident_memory_bytes": built + turns.kept if cuda else None,
        "transient_peak_bytes": turns.transient if cuda else None,
        "params_held": held,
        "params_trained": trained,
    }


# --- the parent: configurations, repeats, aggregation ------------------------------------------------------------


def configurations(args: argparse.Namespace, vllm: bool) -> list[tuple[str, bool]]:
    """(generation backend, gradient checkpointing) of every measured configuration, in run order."""
    out = [("transformers", gc) for gc in args.checkpointing]
    if vllm:
        out.append(("vllm", False))
    return out


def _label(backend: str, gc: bool) -> str:
    return f"{backend}, checkpointing {'on' if gc else 'off'}"


def run_all(args: argparse.Namespace) -> dict:
    vllm = args.vllm == "on" or (args.vllm == "auto" and args.device == "cuda" and vllm_available())
    if args.vllm == "on" and not vllm_available():
        raise SystemExit("--vllm on, but vllm is not importable: pip install -r benchmarks/requirements-gpu.txt vllm")
    started = time.perf_counter()
    rows: list[dict] = []
    meta: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(Path(tmp) / "model")  # written by the first worker
        for repeat in range(args.repeats):
            shift = repeat % len(args.trainers)
            order = [*args.trainers[shift:], *args.trainers[:shift]]
            # Each child: (backend, entries). Transformers generation: every trainer of a checkpointing setting in
            # turns in one process (or, with --one-process, of every setting); vLLM colocate: one engine per
            # process, so one trainer per process (not in turns).
            children: list[tuple[str, list[str]]] = []
            for backend, gc in configurations(args, vllm):
                entries = [_entry(name, gc) for name in order]
                if backend == "vllm":
                    children += [(backend, [entry]) for entry in entries]
                elif args.one_process and children:
                    children[0][1].extend(entries)
                else:
                    children.append((backend, entries))
            for backend, entries in children:
                t0 = time.perf_counter()
                child = [
                    "--worker", "--device", args.device, "--model", args.model, "--model-dir", model_dir,
                    "--task", args.task, "--trainers", ",".join(entries), "--batch-size", str(args.batch_size),
                    "--completion-length", str(args.completion_length), "--num-generations",
                    str(args.num_generations), "--steps", str(args.steps), "--warmup", str(args.warmup),
                    "--backend", backend, "--vllm-memory", str(args.vllm_memory),
                    "--vllm-max-model-length", str(args.vllm_max_model_length),
                ]  # fmt: skip
                result, _ = run_child(child, args.timeout, script=__file__)
                meta = {"device_name": result["device_name"], "versions": result["versions"]}
                for entry, summary in result["trainers"].items():
                    name, gc = _parse_entry(entry)
                    rows.append({"repeat": repeat, "backend": backend, "gradient_checkpointing": gc,
                                 "config": _label(backend, gc), "trainer": name, **summary})  # fmt: skip
                _log(
                    started,
                    f"rep {repeat} {backend}: "
                    + " ".join(f"{e} {result['trainers'][e]['step_time_s'] * 1e3:.0f} ms" for e in entries)
                    + f" ({time.perf_counter() - t0:.0f}s)",
                )
    return {
        "timing": rows, "wall_s": time.perf_counter() - started, "vllm": vllm, "vllm_importable": vllm_available(),
        "finished": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), **meta,
    }  # fmt: skip


def _log(started: float, text: str) -> None:
    print(f"[{time.perf_counter() - started:5.0f}s] {text}", file=sys.stderr, flush=True)


def _device_name(device: str) -> str:
    if device == "cuda":
        import torch

        props = torch.cuda.get_device_properties(0)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return f"CPU ({cpu_model()}, {os.cpu_count()} cores)"


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"Python {platform.python_version()}"]
    for name in ("torch", "transformers", "trl", "accelerate", "vllm"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            if name == "vllm":
                parts.append("vllm not installed")


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected 'on' or 'off', got {text!r}")
    return text == "on"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="Smoke test: tiny model and geometry (CPU, < 1 min).")
    parser.add_argument("--model", choices=list(MODELS), default="0.5b", help="Model size (see MODELS).")
    parser.add_argument("--task", default="token_kind", help="Kit task: prompts and reward function.")
    parser.add_argument("--batch-size", type=int, default=32, help="Completions per step.")
    parser.add_argument("--completion-length", type=int, default=64, help="Tokens per completion.")
    parser.add_argument("--num-generations", type=int, default=4, help="Completions per prompt, every trainer.")
    parser.add_argument("--trainers", nargs="+", default=list(TRAINERS), choices=list(TRAINERS))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6, help="Optimizer steps per trainer and run.")
    parser.add_argument("--warmup", type=int, default=2, help="First steps: not timed, host syncs counted.")
    parser.add_argument(
        "--checkpointing", type=_on_off, nargs="+", default=[False, True], metavar="{off,on}",
        help="Gradient checkpointing settings to measure (default: off on).",
    )  # fmt: skip
    parser.add_argument("--vllm", choices=["auto", "on", "off"], default="auto",
                        help="vLLM colocate generation: auto = when importable and on a GPU.")  # fmt: skip
    parser.add_argument(
        "--one-process", action="store_true",
        help="All checkpointing settings' trainers in turns in one process (on with --tiny; needs the GPU memory "
        "of every trainer at once).",
    )  # fmt: skip
    parser.add_argument("--vllm-memory", type=float, default=0.3, help="vllm_gpu_memory_utilization.")
    parser.add_argument("--vllm-max-model-length", type=int, default=1024)
    parser.add_argument("--output", default=str(HERE / "results" / "gpu.md"), help="Markdown written here.")
    parser.add_argument("--json", default=None, help="Raw measurements as JSON (default: next to --output).")
    parser.add_argument("--update-docs", default=None, help="Replace the GPU block of this Markdown file.")
    parser.add_argument("--timeout", type=float, default=900.0, help="Seconds before a child process is killed.")
    # worker-only
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="transformers", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" in argv:
        index = argv.index("--trainers")
        trainers = argv[index + 1]
        args = parser.parse_args(argv[:index] + argv[index + 2 :])
        args.trainers = trainers
        result = worker(args)
        with open(args.result, "w") as f:
            json.dump(result, f)
        return 0
    args = parser.parse_args(argv)
    if args.tiny:  # smaller defaults; flags given on the command line still win
        tiny = {"--model": ("model", "tiny"), "--batch-size": ("batch_size", 4), "--completion-length":
                ("completion_length", 4), "--steps": ("steps", 3), "--warmup": ("warmup", 1),
                "--num-generations": ("num_generations", 2)}  # fmt: skip
        for flag, (name, value) in tiny.items():
            if flag not in argv:
                setattr(args, name, value)
        args.one_process = True
    if args.device == "cuda" and args.model == "tiny":
        parser.error("the tiny model is for CPU smoke tests: use --device cpu")
    if args.batch_size % args.num_generations:
        parser.error("--batch-size must be a multiple of --num-generations")
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup: the warm-up steps are not timed")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1: host syncs are counted in the warm-up steps")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("torch sees no CUDA device; run with --device cpu --tiny for a smoke test")
    results = run_all(args)
    command = shlex.join(["python", "benchmarks/gpu.py", *argv])
    markdown = render(args, results, command)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(markdown)
    json_path = Path(args.json) if args.json else output.with_suffix(".json")
    saved = {"args": vars(args), "command": command, "summary": structure(results, args), **results}
    json_path.write_text(json.dumps(saved, indent=2))
    if args.update_docs:
        update_docs(Path(args.update_docs), markdown, GPU_DOCS_MARKERS)
    print(markdown)
    print(f"Written: {output} and {json_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
