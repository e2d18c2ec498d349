"""The one classifier (edge/classify.py) and the reserved-paths table (edge/reserved.py) it and the
rest of the edge derive their path sets from. Behaviour through real edges is in test_routing,
test_hostpolicy and test_proxy_http (both request paths)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from edge import reserved
from edge.auth import is_protected
from edge.classify import NoSession, Own, Refusal, classify
from edge.health import HEALTH_PATHS
from edge.hostpolicy import HostPolicy
from edge.idle import NOT_ACTIVITY
from edge.routing import Match, MatchKind, Redirect

HOSTS = HostPolicy(("localhost", "edit.example.com"), ("{session}--edit.example.com",))


def decide(raw_path: str, method: str = "GET", upgrade: bool = False, **headers: str) -> object:
    values = CIMultiDict({"Host": "localhost"})
    for name, value in headers.items():
        values[name.replace("_", "-")] = value
    return classify(raw_path, method, values, HOSTS, upgrade=upgrade)


def test_the_path_sets_derive_from_one_table():
    assert HEALTH_PATHS == {"/health", "/api/health"}
    assert NOT_ACTIVITY == {"/health", "/api/health", "/metrics"}
    protected = [p for p in ("/api", "/api/init", "/api/health/", "/metrics", "/_edge", "/_edge/x") if is_protected(p)]
    assert protected == ["/api", "/api/init", "/api/health/", "/metrics", "/_edge", "/_edge/x"]
    assert not any(is_protected(p) for p in ("/api/health", "/health", "/_edge/login", "/session/s1/", "/apix", "/metrics/x"))
    assert reserved.lookup("/apix") is None and reserved.lookup("/api/x").path == "/api"


@pytest.mark.parametrize(
    "raw_path, method, headers, expected",
    [
        ("http://evil/x", "GET", {}, Refusal),
        ("/health", "GET", {"Host": "10.0.0.7"}, Own),  # any Host: load balancers
        ("/health", "POST", {"Host": "10.0.0.7"}, Refusal),  # 421
        ("/x", "GET", {"Host": "evil.example"}, Refusal),
        ("/api/init", "GET", {"Host": "s1--edit.example.com"}, Match),  # a session host's paths are the preview's
        ("/session/s1/a?b", "GET", {}, Match),
        ("/session/s1", "GET", {}, Redirect),
        ("/api/nothing", "GET", {"Cookie": "edge_session=s1"}, Own),  # never the cookie's
        ("/session/", "GET", {}, NoSession),
        ("/@vite/client", "GET", {"Cookie": "edge_session=s1"}, Match),
        ("/page", "GET", {"Cookie": "edge_session=s1", "Sec-Fetch-Mode": "navigate"}, Redirect),
        ("/page", "GET", {}, NoSession),
    ],
)
def test_classify(raw_path, method, headers, expected):
    values = CIMultiDict({"Host": "localhost", **headers})
    assert isinstance(classify(raw_path, method, values, HOSTS, upgrade=False), expected)


def test_a_match_says_what_goes_upstream():
    assert decide("/session/s1/a?b=%2F") == Match("s1", MatchKind.PREFIX, "/a?b=%2F", "/session/s1")
    assert decide("/?token=x", upgrade=True, Cookie="edge_session=s1", Sec_Fetch_Mode="navigate") == Match(
        "s1", MatchKind.COOKIE, "/?token=x", ""
    )
    assert decide("/page?q", Cookie="edge_session=s1", Accept="text/html") == Redirect("/session/s1/page?q")
