"""The layering rules of the package, checked on its source: TRL's private API is touched in ``seams.py`` only, and
outside the tricks, the config and the plugin core no module names a trick."""

from __future__ import annotations

import ast
import inspect
import pathlib
import re

import pytest
import transformers
import trl

import trl_basics
from trl_basics import get_plugin_manager
from trl_basics.plugins import Registry

PACKAGE = pathlib.Path(trl_basics.__file__).parent
SEAMS = PACKAGE / "seams.py"
# Modules allowed to know trick names: the tricks themselves, the config flags, and the plugin core.
TRICK_AWARE = ("tricks/", "config.py", "plugins.py", "pipeline.py", "types.py", "hookspecs.py")


def _modules() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _parent_private_names() -> set[str]:
    """Private names of TRL's trainers and transformers' Trainer: class attributes, and instance attributes they
    assign in their own source (``self._x = ...``)."""
    names = set()
    for cls in (trl.GRPOTrainer, trl.RLOOTrainer, transformers.Trainer):
        names |= {name for name in dir(cls) if name.startswith("_") and not name.startswith("__")}
        tree = ast.parse(inspect.getsource(inspect.getmodule(cls)))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                names.add(node.attr)
    return names


# TRL's model-card class attributes, which every TRL trainer sets: a documented convention, not a seam.
MODEL_CARD = {"_tag_names", "_name", "_paper", "_template_file"}
PARENT_PRIVATE = _parent_private_names() - MODEL_CARD


def test_the_parent_private_names_were_found():
    # The scan below is only as good as this list: it must hold the names the seam module relies on.
    assert {
        "_compute_loss",
        "_metrics",
        "_step",
        "_tokenizer",
        "_get_output_dir",
        "_save_checkpoint",
    } <= PARENT_PRIVATE


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_private_trl_api_is_touched_only_in_the_seam_module(path):
    if path == SEAMS:
        return
    tree = ast.parse(path.read_text())
    touches = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            touches += [
                f"{node.name} defines {item.name} (line {item.lineno})"
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name in PARENT_PRIVATE
            ]
        if (
            isinstance(node, ast.Attribute)
            and node.attr in PARENT_PRIVATE
            and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "trainer")
        ):
            touches.append(f"uses {node.value.id}.{node.attr} (line {node.lineno})")
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(("trl.trainer", "trl.models")):
            touches.append(f"imports from {node.module} (line {node.lineno})")
    assert not touches, f"{path.relative_to(PACKAGE)} touches TRL's private API outside seams.py: {touches}"


def test_the_trainers_override_private_methods_only_through_the_seam_class():
    from trl_basics.seams import TRLSeams

    classes = [trl_basics.RLOOTrainer, trl_basics.ReinforceWithBaselineTrainer, trl_basics.ReinforcePlusPlusTrainer]
    classes += [trl_basics.PPOMaxTrainer]
    from trl_basics.monitored_grpo import MonitoredGRPOTrainer

    classes.append(MonitoredGRPOTrainer)
    for cls in classes:
        for klass in cls.__mro__:
            if klass.__module__.startswith("trl_basics") and klass is not TRLSeams:
                overridden = sorted(set(vars(klass)) & PARENT_PRIVATE)
                assert not overridden, f"{klass.__qualname__} overrides TRL's private {overridden}"


_PARENT_STATE = re.compile(r"\b(self|args|config)\.(beta|save_total_limit|num_generations)\s*=[^=]")


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_parent_state_is_changed_only_in_the_seam_module(path):
    if path == SEAMS or path.name.endswith("_config.py"):  # a config may set its own fields
        return
    lines = [
        f"line {number}: {line.strip()}"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _PARENT_STATE.search(line) and "self.beta = config.beta" not in line
    ]
    assert not lines, f"{path.relative_to(PACKAGE)} changes the TRL parent's state outside seams.py: {lines}"


def _builtin_trick_names() -> list[str]:
    return sorted(Registry.from_plugin_manager(get_plugin_manager(autoload=False)).tricks)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_outside_the_tricks_config_and_plugin_core_names_a_trick(path):
    relative = str(path.relative_to(PACKAGE))
    if relative.startswith(TRICK_AWARE):
        return
    text = path.read_text()
    # A trick's name as a string or inside a metric name ("kl_shaping", "tricks/kl_shaping/..."); a config preset's
    # key that equals a flag's name ("reward_clip": 0.3) is a setting, not a trick lookup.
    named = [name for name in _builtin_trick_names() if re.search(rf"[\"'/]{name}[\"'/](?!\s*:)", text)]
    assert not named, f"{relative} names the trick(s) {named}"


def test_no_two_test_files_share_a_name():
    tests = pathlib.Path(__file__).parent
    names: dict[str, list[str]] = {}
    for path in tests.rglob("*.py"):
        if path.name not in ("__init__.py", "conftest.py"):
            names.setdefault(path.name, []).append(str(path.relative_to(tests)))
    assert not {name: paths for name, paths in names.items() if len(paths) > 1}
