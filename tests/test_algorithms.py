"""One algorithm table: the package exports, the command line and the benchmarks all read `trl_basics.algorithms`."""

import ast
import dataclasses
import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import trl_basics
from trl_basics.algorithms import ALGORITHMS, Algorithm, UnknownAlgorithmError, get_algorithm, package_exports

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


def load_benchmark(name):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def lives_in_trl_basics(path: str) -> bool:
    return path.partition(":")[0].partition(".")[0] == "trl_basics"


# --- the table -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_entry_names_importable_classes_and_config_fields(name):
    algorithm = ALGORITHMS[name]
    assert algorithm.name == name and algorithm.summary
    trainer, config = algorithm.trainer_class(), algorithm.config_class()
    assert isinstance(trainer, type) and dataclasses.is_dataclass(config)
    assert set(algorithm.defaults) <= {field.name for field in dataclasses.fields(config)}, algorithm.defaults


def test_unknown_names_raise_a_key_error_that_lists_the_choices():
    with pytest.raises(UnknownAlgorithmError) as info:
        get_algorithm("rlo")
    assert isinstance(info.value, KeyError) and info.value.name == "rlo"
    assert str(info.value) == f"unknown algorithm 'rlo'. Choose one of: {', '.join(ALGORITHMS)}"


# --- the package exports ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_trainer_and_config_of_trl_basics_is_exported_by_the_package(name):
    algorithm = ALGORITHMS[name]
    for path, load in ((algorithm.trainer, algorithm.trainer_class), (algorithm.config, algorithm.config_class)):
        if not lives_in_trl_basics(path):
            continue
        class_name = path.partition(":")[2]
        assert class_name in trl_basics.__all__, class_name
        assert getattr(trl_basics, class_name) is load(), class_name


def test_the_package_exports_of_trainers_and_configs_are_the_tables():
    exports = package_exports()
    expected = {
        path.partition(":")[2]: path.partition(":")[0]
        for algorithm in ALGORITHMS.values()
        for path in (algorithm.trainer, algorithm.config)
        if lives_in_trl_basics(path)
    }
    assert exports == expected
    assert {name: trl_basics._EXPORTS[name] for name in exports} == exports
    # Every other lazily exported name is not a trainer or config class: those come from the table only.
    others = set(trl_basics._EXPORTS) - set(exports)
    assert not {name for name in others if name.endswith(("Trainer", "Config"))}


def test_the_type_checking_imports_of_the_package_are_its_exports():
    """Type checkers and IDEs see the lazily exported names through the `if TYPE_CHECKING:` block, all of them."""
    tree = ast.parse((REPO / "trl_basics" / "__init__.py").read_text())
    block = next(
        node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
    )
    imported = {alias.asname or alias.name for node in block.body for alias in node.names}
    assert imported == set(trl_basics.__all__)


def test_importing_the_package_and_its_table_imports_no_torch():
    code = "import sys, trl_basics; trl_basics.__all__; print(sorted(m for m in ('torch', 'trl') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "[]"


# --- the command line ------------------------------------------------------------------------------------------------


def test_the_command_line_reads_the_table(capsys):
    from trl_basics import cli
    from trl_basics.cli import ablate, compare, errors, experiments, flags

    for module in (cli, ablate, compare, experiments, flags, errors):
        assert module.ALGORITHMS is ALGORITHMS, module.__name__
    assert cli.main(["--help"]) == 0
    assert f"train ALGO           train one algorithm: {', '.join(ALGORITHMS)}" in capsys.readouterr().out
    for name in ALGORITHMS:
        assert errors.lookup_algorithm(name) is ALGORITHMS[name]
    with pytest.raises(errors.UsageError, match="unknown algorithm 'rlo'. Did you mean rloo?"):
        errors.lookup_algorithm("rlo")
    # The stored flag lists (what `train ALGO --help` answers from) hold exactly the table's algorithms.
    assert set(flags.stored_manifest()["algorithms"]) == set(ALGORITHMS)
    help_text = dict(compare.CompareArguments.__dataclass_fields__)["algorithms"].metadata["help"]
    assert help_text == f"Algorithms to run, from: {', '.join(ALGORITHMS)}."


# --- the benchmarks --------------------------------------------------------------------------------------------------


def test_the_benchmarks_build_trl_basics_trainers_from_the_table():
    common = load_benchmark("common")
    ours = {name: spec for name, spec in common.TRAINERS.items() if lives_in_trl_basics(spec.algorithm.trainer)}
    assert set(ours) == {"rloo", "rloo_tricks", "reinforce_pp", "ppo_max"}
    for name, spec in common.TRAINERS.items():
        if name in ours:
            assert spec.algorithm is ALGORITHMS[spec.algorithm.name], name  # the table's own entry
        else:  # the references: TRL's own trainers, unchanged
            assert spec.algorithm.trainer.startswith("trl:") and spec.algorithm.config.startswith("trl:"), name
            assert spec.algorithm.name not in ALGORITHMS, name
    for name, (algorithm, *_rest) in load_benchmark("learning").RUNS.items():
        assert algorithm in ALGORITHMS, name
    assert set(load_benchmark("ppo_vs_reinforce_pp").TRAINERS) <= set(ALGORITHMS)


@dataclass
class FakeConfig:
    output_dir: str
    beta: float = 0.0
    variant: str = "plain"


class FakeTrainer:
    def __init__(self, model, reward_funcs, train_dataset, args, **kwargs):
        self.model, self.reward_funcs, self.train_dataset, self.args, self.kwargs = (
            model, reward_funcs, train_dataset, args, kwargs
        )  # fmt: skip


def test_benchmark_trainers_are_built_from_their_algorithm_entry(monkeypatch):
    """`build_trainer` has no list of classes of its own: it builds whatever the spec's algorithm entry names."""
    common = load_benchmark("common")
    fake = Algorithm("fake", "a fake", f"{__name__}:FakeTrainer", f"{__name__}:FakeConfig", {"variant": "group"})
    monkeypatch.setitem(common.TRAINERS, "fake", common.TrainerSpec("fake", "a fake", {}, fake, {"beta": 0.5}))
    trainer = common.build_trainer("fake", {"output_dir": "out"}, "model-dir", ["data"], len, processing_class="tok")
    assert isinstance(trainer, FakeTrainer) and trainer.args == FakeConfig("out", beta=0.5, variant="group")
    assert (trainer.model, trainer.train_dataset, trainer.reward_funcs) == ("model-dir", ["data"], len)
    assert trainer.kwargs == {"processing_class": "tok"}
    with pytest.raises(ValueError, match="unknown trainer 'nope'"):
        common.build_trainer("nope", {}, "model-dir", [], len)
