"""Package-level checks for trl_basics.functional: exports, docstrings, and the pure-torch import rule."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from trl_basics import functional

PACKAGE_DIR = Path(functional.__file__).parent
ALLOWED_IMPORTS = {"torch", "__future__", "collections", "math", "threading", "types", "typing"}


def test_every_export_exists_and_is_documented() -> None:
    assert len(functional.__all__) == len(set(functional.__all__))
    for name in functional.__all__:
        obj = getattr(functional, name)
        if name == "KL_ESTIMATORS":
            continue
        assert inspect.getdoc(obj), f"{name} has no docstring"
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and callable(member) and attr not in {"state_dict", "load_state_dict"}:
                    assert inspect.getdoc(member), f"{name}.{attr} has no docstring"


def test_modules_import_only_torch_and_the_standard_library() -> None:
    for path in PACKAGE_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= ALLOWED_IMPORTS, f"{path.name} imports {roots - ALLOWED_IMPORTS}"
