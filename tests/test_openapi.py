"""docs/openapi.yaml describes exactly the edge's own routes: a route added without docs fails here."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from openapi_spec_validator import validate

from edge import proxy
from edge.app import create_app
from edge.settings import Settings

SPEC = Path(__file__).resolve().parents[1] / "docs" / "openapi.yaml"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")  # aiohttp's {name} and {name:regex}; OpenAPI's {name}


def normalise(path: str) -> str:
    """A path template with every placeholder written ``{}``: names differ (``client_id``/``clientId``)."""
    return _PLACEHOLDER.sub("{}", path)


def app_operations(settings: Settings) -> set[tuple[str, str]]:
    """(METHOD, template) of every route the app registers, but the proxy catch-all and implicit HEADs."""
    routes = [r for r in create_app(settings).router.routes() if r.handler is not proxy.handle]
    found = {(r.method.upper(), normalise(r.resource.canonical)) for r in routes if r.resource is not None}
    # add_get() also registers HEAD; document HEAD only where it is a route of its own.
    return {(m, p) for m, p in found if not (m == "HEAD" and ("GET", p) in found)}


def spec_operations(spec: dict) -> set[tuple[str, str]]:
    return {(method.upper(), normalise(path)) for path, item in spec["paths"].items() for method in item if method in METHODS}


def load() -> dict:
    return yaml.safe_load(SPEC.read_text())


def test_the_spec_is_valid_openapi():
    validate(load())


def test_the_spec_documents_exactly_the_registered_routes(settings):
    documented, registered = spec_operations(load()), app_operations(settings)
    assert registered - documented == set(), "routes without documentation in docs/openapi.yaml"
    assert documented - registered == set(), "documented routes the app does not have"


def test_the_enumeration_sees_every_kind_of_route(settings):
    registered = app_operations(settings)
    assert {("GET", "/health"), ("GET", "/metrics"), ("GET", "/_edge/"), ("POST", "/api/init")} <= registered
    assert ("POST", "/api/git/commit/{}/{}/{}") in registered and ("DELETE", "/api/routes/{}") in registered
    assert not any(method == "*" for method, _ in registered)  # the proxy catch-all is not the API
    assert normalise("/x/{id:[0-9]+}/{name}") == "/x/{}/{}"


def test_every_operation_has_examples(settings):
    spec = load()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            where = f"{method.upper()} {path}"
            assert operation.get("summary"), where
            responses = operation["responses"]
            assert any(_has_example(spec, response) for response in responses.values()), f"{where}: no response example"
            body = operation.get("requestBody")
            if body is not None:
                assert _has_example(spec, body), f"{where}: no request example"


def _deref(spec: dict, node: dict) -> dict:
    """Follow ``$ref``s within the document."""
    while isinstance(node, dict) and "$ref" in node:
        target: object = spec
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]  # type: ignore[index]
        node = target  # type: ignore[assignment]
    return node


def _has_example(spec: dict, node: dict) -> bool:
    node = _deref(spec, node)
    if "example" in node or "examples" in node:
        return True
    if node.get("headers") and any("example" in _deref(spec, h) for h in node["headers"].values()):
        return True
    return any("example" in media or "examples" in media for media in (node.get("content") or {}).values())
