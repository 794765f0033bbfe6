"""Every shell command and Python snippet in README.md and docs/*.md runs as written.

Each page's ```bash and ```python blocks run in order in one fresh working directory per page (Python blocks of a
page share one namespace, so a snippet may use names from an earlier one), with ``TRL_BASICS_SMOKE=1`` so that
training commands stop after 2 steps (see docs/cli.md). A block that cannot run here carries a marker on the line
before its fence, ``<!-- not-run: REASON -->``, and must also be listed in ``NOT_RUN`` below with its reason: a marker
without a listing, or a listing without a marker, fails the test, so nothing is skipped silently.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"<!--\s*not-run:\s*(.+?)\s*-->")

# (page, first line of the block) -> why it is not run here.
NOT_RUN = {
    ("README.md", "bash scripts/setup.sh && .venv/bin/trl-basics demo"): "creates a venv and installs from an index",
    ("README.md", "bash scripts/setup.sh && .venv/bin/python -m pytest -q -n 2 --dist loadfile"): "installs from an index; runs the suite",
    ("README.md", '.venv/bin/python -m pytest -q -m "not slow"'): "runs the suite, less its slow tests, from inside it",
    ("README.md", "pip install .                  # the library and the `trl-basics` command"): "pip install",
    ("docs/quickstart.md", "bash scripts/setup.sh          # creates .venv, installs trl_basics[dev] and the example plugin"): "installs from an index",
    ("docs/scaling.md", "accelerate launch --config_file examples/accelerate/multi_gpu.yaml examples/rloo.py --output_dir out"): "needs several GPUs",
    ("docs/benchmarks.md", "OMP_NUM_THREADS=1 python benchmarks/run.py --update-docs docs/benchmarks.md      # ~17 min on 2 cores"): "benchmarks take minutes",
    ("docs/ppo_max.md", "OMP_NUM_THREADS=1 python benchmarks/ppo_vs_reinforce_pp.py --repeats 5 --steps 12 --out benchmarks/ppo_vs_reinforce_pp.results.json"): "a benchmark of minutes",
    ("docs/hooks.md", "trl_basics_register_tricks(register: Callable[[type[Trick]], None]) -> None"): "a signature",
    ("docs/hooks.md", "trl_basics_register_advantage_estimators(register: Callable[[type[AdvantageEstimator]], None]) -> None"): "a signature",
    ("docs/hooks.md", "trl_basics_register_kl_estimators(register: Callable[[str, KLEstimatorFn], None]) -> None"): "a signature",
    ("docs/quickstart.md", 'config = RLOOConfig(output_dir="out", reward_norm="running", reward_clip=3.0, whiten_advantages=True)'): "bf16 default needs a GPU",
    ("docs/plugins.md", "from trl_basics import RLOOConfig"): "TRL's bf16 default needs a GPU",
    ("docs/reproduce.md", "trl-basics reproduce                      # all three papers, 5 seeds (14 min measured on 2 busy CPU cores)"): "the full measurement takes a quarter of an hour; the --quick form below runs",
    ("docs/benchmarks.md", "pip install -r benchmarks/requirements-gpu.txt      # on a machine with a CUDA build of torch (kept as it is)"): "installs packages; needs a CUDA GPU",
    ("docs/scaling.md", "bash scripts/setup_vllm.sh"): "creates a venv and installs from an index",
    ("docs/scaling.md", ".venv/bin/python -m pytest -q tests/with_vllm"): "runs part of the suite from inside it",
    ("docs/scaling.md", "trl vllm-serve --model MODEL_DIR --host 127.0.0.1 --port 8000 --dtype float32 --worker-extension-cls trl_basics.vllm_cpu.WeightReceiver"): "a server that runs until stopped",
    ("docs/scaling.md", "OMP_NUM_THREADS=1 .venv-vllm/bin/python benchmarks/vllm_bench.py --parts truncation --steps 4 --output /tmp/vllm-truncation.json"): "minutes of vLLM trainings",
    ("docs/benchmarks.md", "OMP_NUM_THREADS=1 .venv-vllm/bin/python benchmarks/vllm_bench.py --repeats 2 --steps 4 --output /tmp/vllm-bench.json"): "a benchmark of minutes",
}
# After 2 steps a verdict ("the reward rises clearly") cannot hold: these commands may exit 1 (a verdict missed) in
# smoke mode, but must write their report.
VERDICT_COMMANDS = ("trl-basics demo", "trl-basics compare", "trl-basics ablate")


def blocks(page: Path) -> list[dict]:
    """The ```bash/```sh/```python blocks of ``page``: language, code, first line, line number, not-run reason."""
    found, lines, index = [], page.read_text().splitlines(), 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match or not match.group(1):
            index += 1
            continue
        language, start, body = match.group(1), index, []
        index += 1
        while index < len(lines) and not lines[index].startswith("```"):
            body.append(lines[index])
            index += 1
        index += 1
        if language not in ("bash", "sh", "shell", "python"):
            continue
        before = next((line for line in reversed(lines[:start]) if line.strip()), "")
        marker = MARKER.search(before)
        first = next((line for line in body if line.strip()), "")
        found.append(
            {"language": language, "code": "\n".join(body) + "\n", "first": first, "line": start + 1,
             "not_run": marker.group(1) if marker else None}
        )  # fmt: skip
    return found


def test_every_not_run_block_is_marked_and_listed():
    marked = {(str(p.relative_to(ROOT)), b["first"]) for p in PAGES for b in blocks(p) if b["not_run"]}
    assert marked - set(NOT_RUN) == set(), "marked `not-run` in the docs but not listed in NOT_RUN"
    assert set(NOT_RUN) - marked == set(), "listed in NOT_RUN but the docs block has no `<!-- not-run: ... -->`"


PYTHON_RUNNER = """
import json, sys, traceback, types
module = types.ModuleType("__main__")  # a real module, so that a snippet can register itself as a plugin
sys.modules["__main__"] = module
namespace = module.__dict__
for block in json.load(open(sys.argv[1])):
    try:
        exec(compile(block["code"], f"{block['page']}:{block['line']}", "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"FAILED: the python block at {block['page']}:{block['line']}", file=sys.stderr)
        raise SystemExit(1)
"""


def _environment() -> dict:
    env = {**os.environ, "TRL_BASICS_SMOKE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `trl-basics`, `python`
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["MPLBACKEND"] = "Agg"
    return env


def _run_python(group: list[dict], page: str, cwd: Path, env: dict) -> None:
    path = cwd / ".doc-snippets.json"
    path.write_text(json.dumps([{**b, "page": page} for b in group]))
    done = subprocess.run(
        [sys.executable, "-c", PYTHON_RUNNER, str(path)], cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]


def _run_bash(block: dict, page: str, cwd: Path, env: dict) -> None:
    for command in _commands(block["code"]):
        # Installing packages changes the environment every other test runs in: such a block must be marked.
        assert not re.search(r"\bpip3? install\b", command), f"{page}:{block['line']}: `{command}` installs packages; mark the block not-run"
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
            timeout=240, check=False,
        )  # fmt: skip
        if done.returncode == 1 and command.startswith(VERDICT_COMMANDS) and "Report:" in done.stdout:
            continue
        assert done.returncode == 0, f"{page}:{block['line']}: `{command}` exited {done.returncode}\n{done.stderr[-4000:]}"


def _commands(code: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments and blank lines dropped."""
    commands, current = [], ""
    for line in code.splitlines():
        current += line[:-1] + " " if line.rstrip().endswith("\\") else line
        if line.rstrip().endswith("\\"):
            continue
        if current.strip() and not current.lstrip().startswith("#"):
            commands.append(current.strip())
        current = ""
    return commands


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_commands_run(page, tmp_path):
    name = str(page.relative_to(ROOT))
    runnable = [b for b in blocks(page) if not b["not_run"]]
    env = _environment()
    # Pages refer to files of the repository (examples/, benchmarks/): give the working directory links to them.
    for entry in ("examples", "benchmarks", "plugins", "scripts"):
        if (ROOT / entry).exists():
            (tmp_path / entry).symlink_to(ROOT / entry)
    group: list[dict] = []
    for block in runnable:
        if block["language"] == "python":
            group.append(block)
            continue
        if group:
            _run_python(group, name, tmp_path, env)
            group = []
        _run_bash(block, name, tmp_path, env)
    if group:
        _run_python(group, name, tmp_path, env)
