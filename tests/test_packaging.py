"""The installed package (what the Docker image gets with ``pip install .``) holds every module."""

from __future__ import annotations

import ast
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


def _imported_packages(package: str) -> dict[str, set[str]]:
    """Every top-level package each module of ``package`` imports, also inside functions."""
    found: dict[str, set[str]] = {}
    for path in (REPO / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(REPO))] = names
    return found


def test_the_edge_is_the_front_control_and_preview_never_import_it():
    # The layering: edge/ wires control/ and preview/ (which stands alone); both stand on core/, which stands on none of them.
    for package, forbidden in (("control", {"edge"}), ("preview", {"edge", "control"}), ("core", {"edge", "control", "preview"})):
        wrong = {module: names & forbidden for module, names in _imported_packages(package).items() if names & forbidden}
        assert wrong == {}, f"{package}/ imports {wrong}"
