"""A Node that fits the site: NODE_BINARY when it satisfies engines.node and Astro's minimum, else one from npm."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from preview.nodes import choose, fits
from tests.fixtures_astro import CACHE, require

VERSIONS = ["18.20.8", "20.19.0", "20.20.2", "21.7.3", "22.11.0", "22.12.0", "22.23.5", "23.1.0", "24.0.0-rc.1", "24.2.0"]


@pytest.mark.parametrize(
    "ranges, expected",
    [
        ([">=22.12.0"], "22.23.5"),  # the lowest LTS major that fits, at its newest release
        ([">=22"], "22.23.5"),
        (["^20.3.0 || >=22.0.0", ">=21"], "22.23.5"),  # even majors first: 22 before 21
        ([">=23"], "24.2.0"),  # never a pre-release
        (["^21"], "21.7.3"),  # an odd major when nothing else fits
        ([">=30"], None),
    ],
)
def test_the_chosen_version_fits_every_range(ranges, expected):
    assert choose(VERSIONS, ranges) == expected
    assert expected is None or fits(expected, ranges)


def test_an_unreadable_range_is_left_to_node():
    assert fits("20.20.2", ["not a range", ">=20"])


def node20() -> str:
    node = shutil.which("node")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if not version.startswith("v20."):
        pytest.skip(f"the machine's node is {version}, not Node 20")
    return node


@pytest.mark.astro
async def test_a_site_that_requires_node22_gets_node22_while_the_default_is_node20(preview_edge, make_thread):
    thread = make_thread("t1")  # Astro 5, which itself runs on Node 20
    package = thread.path / "package.json"
    package.write_text(json.dumps({**json.loads(package.read_text()), "engines": {"node": ">=22"}}))
    edge = await preview_edge(node_binary=node20())

    status, body = await edge.api("POST", "start", thread, wait="300")

    assert status == 200, body
    assert body["nodeVersion"].startswith("22."), body
    assert "/.edge/node/v22." in body["nodeBinary"]
    log = "\n".join(edge.supervisor.log_lines(thread.session_id, 400))
    assert "does not satisfy >=22 and " in log and ": fetching Node 22." in log and "from npm (node-linux-" in log
    code, page, _ = await edge.get(f"/session/{thread.session_id}/")
    assert code == 200 and "Welcome to Amelia" in page


@pytest.mark.astro
async def test_astro7_gets_the_node_its_engines_ask_for(preview_edge, make_thread):
    thread = make_thread("seven", version="7")
    edge = await preview_edge(node_binary=node20())

    status, body = await edge.api("POST", "start", thread, wait="300")

    assert status == 200, body
    assert body["astroVersion"].startswith("7.") and body["nodeVersion"].startswith("22."), body
    # The same fetched Node serves the next thread without asking npm again.
    status, again = await edge.api("POST", "restart", thread, wait="300")
    assert status == 200 and again["nodeBinary"] == body["nodeBinary"]


@pytest.mark.astro
async def test_a_fresh_debian_with_its_node18_reaches_a_live_preview(preview_edge, make_thread):
    """Debian bookworm's Node 18.20.4 installs the site, but Astro 5.18 needs 18.20.8, ^20.3 or >=22."""
    node18 = CACHE / "bin" / "node18"
    require(node18.exists(), "Node 18.20.4 (Debian's version) is not installed in .cache")
    thread = make_thread("t1")
    shutil.rmtree(thread.path / "node_modules")  # a first start: the install runs on Debian's Node
    edge = await preview_edge(node_binary=str(node18))

    status, body = await edge.api("POST", "start", thread, wait="400")

    assert status == 200, body
    assert body["dependencies"] == "installed"
    assert body["nodeVersion"] == "18.20.8", body  # the closest Node that fits: the newest 18
    log = "\n".join(edge.supervisor.log_lines(thread.session_id, 400))
    assert "Node v18.20.4" in log and "does not satisfy 18.20.8 || ^20.3.0 || >=22.0.0" in log
    code, page, _ = await edge.get(f"/session/{thread.session_id}/")
    assert code == 200 and "Welcome to Amelia" in page
