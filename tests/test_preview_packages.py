"""A site runs the way its owner runs it: its lock file's package manager and its own dev script."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from preview.node import npm_argv, resolve_node
from preview.packages import PackageManager, detect, dev_script, is_plain_astro_dev

PNPM_SITE = Path(__file__).resolve().parent / "sites" / "pnpm-site"
YARN_SITE = Path(__file__).resolve().parent / "sites" / "yarn-site"


def npm_registry() -> str:
    """The registry npm is set to use here (``npm config get registry``), without a trailing slash."""
    node = resolve_node("node")
    result = subprocess.run([*npm_argv(node), "config", "get", "registry"], capture_output=True, text=True, check=True)
    return result.stdout.strip().rstrip("/")


def write(folder: Path, name: str, text: str = "") -> None:
    (folder / name).write_text(text)


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"package-lock.json": "{}"}, PackageManager("npm", None, "package-lock.json")),
        ({"pnpm-lock.yaml": ""}, PackageManager("pnpm", "10", "pnpm-lock.yaml")),
        ({"yarn.lock": ""}, PackageManager("yarn", "1.22.22", "yarn.lock")),
        ({}, PackageManager("npm", None, None)),
    ],
)
def test_the_lock_file_names_the_package_manager(tmp_path, files, expected):
    write(tmp_path, "package.json", "{}")
    for name, text in files.items():
        write(tmp_path, name, text)
    assert detect(tmp_path) == expected


def test_package_manager_field_gives_the_version(tmp_path):
    write(tmp_path, "package.json", json.dumps({"packageManager": "pnpm@9.15.0+sha512.abc"}))
    assert detect(tmp_path) == PackageManager("pnpm", "9.15.0", None)
    write(tmp_path, "pnpm-lock.yaml")
    assert detect(tmp_path).label == "pnpm@9.15.0"
    write(tmp_path, "package.json", json.dumps({"packageManager": "yarn@4.5.0"}))
    assert detect(tmp_path) == PackageManager("pnpm", "10", "pnpm-lock.yaml")  # the lock file wins
    assert PackageManager("yarn", "4.5.0", "yarn.lock").package == "@yarnpkg/cli-dist"


def test_dev_scripts_and_their_arguments(tmp_path):
    write(tmp_path, "package.json", json.dumps({"scripts": {"dev": "  astro   dev "}}))
    assert is_plain_astro_dev(dev_script(tmp_path))
    write(tmp_path, "package.json", json.dumps({"scripts": {"dev": "node gen.mjs && astro dev"}}))
    assert not is_plain_astro_dev(dev_script(tmp_path))
    write(tmp_path, "package.json", json.dumps({"scripts": {"build": "astro build"}}))
    assert dev_script(tmp_path) is None
    assert PackageManager("npm", None, None).run_args("dev", "--port", "1") == ["run", "dev", "--", "--port", "1"]
    assert PackageManager("pnpm", "10", None).run_args("dev", "--port", "1") == ["run", "dev", "--port", "1"]


async def _starts_with_its_own_manager_and_dev_script(edge, thread, manager: str, install: str, stamp: str) -> None:
    """Start the preview: the lock file's manager installs, the site's dev script runs before Astro, the page serves."""
    status, body = await edge.api("POST", "start", thread, wait="400")
    assert status == 200, body
    assert body["packageManager"] == manager
    assert body["devCommand"] == f"the site's dev script through {manager}: node scripts/generate.mjs && astro dev"
    assert body["dependencies"] == "installed"
    log = "\n".join(edge.supervisor.log_lines(thread.session_id, 400))
    assert f"installing dependencies with {manager} from {install}" in log

    # The dev script ran before Astro (with the edge's host and port): its generated file is served.
    status, text, headers = await edge.get(f"/session/{thread.session_id}/generated/stamp.txt")
    assert status == 200, text
    assert text.startswith(stamp)
    assert headers["X-Edge-Session"] == thread.session_id
    status, text, _ = await edge.get(f"/session/{thread.session_id}/")
    assert status == 200 and "Welcome to Amelia's site" in text


@pytest.mark.astro
async def test_a_pnpm_site_installs_with_pnpm_and_runs_its_own_dev_script(preview_edge, make_thread):
    thread = make_thread("t1")
    shutil.rmtree(thread.path / "node_modules")
    (thread.path / "package-lock.json").unlink()
    shutil.copytree(PNPM_SITE, thread.path, dirs_exist_ok=True)
    edge = await preview_edge()

    await _starts_with_its_own_manager_and_dev_script(
        edge, thread, "pnpm@10.34.9", "pnpm-lock.yaml: pnpm install --frozen-lockfile", "made by the site's dev script with node v"
    )
    assert (thread.path / "node_modules" / ".pnpm").is_dir()  # pnpm's layout, not npm's

    # /health counts this dev server (npm, sh and node under the package manager are one preview).
    status, health, _ = await edge.get("/health")
    assert json.loads(health)["previewsRunning"] == 1
    status, _ = await edge.api("POST", "stop", thread)
    status, health, _ = await edge.get("/health")
    assert json.loads(health)["previewsRunning"] == 0


@pytest.mark.astro
async def test_a_yarn_site_installs_with_yarn_and_runs_its_own_dev_script(preview_edge, make_thread):
    thread = make_thread("t1")
    shutil.rmtree(thread.path / "node_modules")
    (thread.path / "package-lock.json").unlink()
    shutil.copytree(YARN_SITE, thread.path, dirs_exist_ok=True)
    # yarn 1's lock names the registry in every entry: the committed one says REGISTRY, npm's own setting fills it in.
    lock = thread.path / "yarn.lock"
    lock.write_text(lock.read_text().replace('resolved "REGISTRY/', f'resolved "{npm_registry()}/'))
    edge = await preview_edge()

    # yarn runs the dev script (its user agent reaches the script and the stamp).
    await _starts_with_its_own_manager_and_dev_script(
        edge, thread, "yarn@1.22.22", "yarn.lock: yarn install --frozen-lockfile", "made by the site's dev script, run by yarn/1.22.22, with node v"
    )
    assert (thread.path / "node_modules" / ".yarn-integrity").is_file()  # yarn 1's install, not npm's
    assert not (thread.path / "package-lock.json").exists()
    status, _ = await edge.api("POST", "stop", thread)
    assert status == 200
