"""The docs stay true: every hook is documented with its exact signature, every flag and built-in trick appears."""

import dataclasses
import inspect
from pathlib import Path

import pytest

from trl_basics import TrickArguments, hookspecs

DOCS = Path(__file__).resolve().parents[2] / "docs"


def hookspec_functions():
    return [
        fn
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("trl_basics_") and hasattr(fn, "trl_basics_spec")
    ]


def signature_text(fn) -> str:
    """The signature as written in the source (annotations are strings under `from __future__ import annotations`)."""
    sig = inspect.signature(fn)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{fn.__name__}({params}) -> {sig.return_annotation}"


def test_there_are_hooks():
    assert len(hookspec_functions()) == 3


@pytest.mark.parametrize("fn", hookspec_functions(), ids=lambda fn: fn.__name__)
def test_every_hook_is_documented_with_its_exact_signature(fn):
    text = (DOCS / "hooks.md").read_text()
    assert f"## `{fn.__name__}`" in text
    assert signature_text(fn) in text, signature_text(fn)
    assert inspect.getdoc(fn).replace("``", "`") in text  # rST literals become Markdown ones


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(TrickArguments)])
def test_every_flag_is_documented(field):
    assert f"| `{field}` |" in (DOCS / "tricks.md").read_text()


def test_every_builtin_trick_is_documented_with_its_source(registry):
    text = (DOCS / "tricks.md").read_text()
    for name, trick_cls in registry.tricks.items():
        assert f"`{name}`" in text, name
    for name in registry.advantage_estimators:
        assert f"`{name}`" in text, name


def test_relative_links_in_docs_resolve():
    import re

    for page in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+\.md)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
