"""The installed package (what the Docker image gets with ``pip install .``) holds every module."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "edge", "control", "preview")


def test_the_wheel_contains_every_module_of_the_source_tree(tmp_path):
    # Built from a copy: a build/ folder left in the work tree would hide a missing package.
    source_copy = tmp_path / "src"
    source_copy.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source_copy)
    for package in PACKAGES:
        shutil.copytree(REPO / package, source_copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source_copy)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    packaged = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".py")}
    source = {
        str(path.relative_to(REPO))
        for package in PACKAGES
        for path in (REPO / package).rglob("*.py")
    }
    assert source - packaged == set()
