"""The built wheel holds the whole library (the kit and the stored flag list included), the LICENSE and the
`trl-basics` entry point."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_contains_the_kit_the_flag_list_the_license_and_the_entry_point(tmp_path):
    source = tmp_path / "src"  # a copy, so that the build leaves nothing in the repository
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "trl_basics", source / "trl_basics", ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source)]
    subprocess.run([*command, "-w", str(tmp_path / "dist")], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("trl_basics-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    expected = {
        str(path.relative_to(source)) for path in (source / "trl_basics").rglob("*") if path.is_file()
    }  # every file of the package, the kit and cli/flags.json.gz among them
    assert {"trl_basics/kit/model.py", "trl_basics/kit/tasks.py", "trl_basics/cli/flags.json.gz"} <= expected
    assert expected <= names, expected - names
    assert not any(name.startswith(("plugins/", "tests/")) for name in names)
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert "[console_scripts]\ntrl-basics = trl_basics.cli:main" in entry_points
    assert "License-Expression: Apache-2.0" in metadata
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
