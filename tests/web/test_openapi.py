"""The versioned API and its OpenAPI 3.1 document (issue 13): the document validates, the app's
routes and the document agree (every route documented, every documented path routed, the same
methods), today's unversioned paths answer as aliases, and a 405 says what is allowed."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web
from openapi_spec_validator import validate

from tests.web.test_api import Starter, auth, url, web_node
from treedrive.web import plugin as web_plugin

pytestmark = pytest.mark.timeout(60)
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def app_routes(app: web.Application) -> set[tuple[str, str]]:
    """(path, method) of every route of ``app`` but the static files; HEAD goes with GET."""
    routes = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if isinstance(route.resource, web.StaticResource) or route.method == "HEAD":
            continue
        routes.add((path, route.method.lower()))
    return routes


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(p, m) for p, item in doc["paths"].items() for m in item if m in METHODS}


async def test_the_document_validates_and_matches_the_routes(start_node: Starter) -> None:
    node = await web_node(start_node, "alice")
    async with aiohttp.ClientSession() as http:
        async with http.get(url(node, "/api/v1/openapi.json")) as resp:
            assert resp.status == 200
            doc = await resp.json()
        async with http.get(url(node, "/api/openapi.json")) as resp:
            assert await resp.json() == doc  # the alias serves the same
    validate(doc)  # OpenAPI 3.1, by openapi-spec-validator
    assert doc["openapi"].startswith("3.1")

    routed = app_routes(web_plugin._servers[id(node)].runner.app)
    docs = documented(doc)
    assert routed, "no routes found"
    for path, method in routed:
        if path.startswith("/api/") and not path.startswith("/api/v1/"):
            # an unversioned alias: its versioned twin is documented, with the same method
            assert ("/api/v1" + path[4:], method) in docs, (method, path)
        else:
            assert (path, method) in docs, f"{method.upper()} {path} is routed, not documented"
    for path, method in docs:
        assert (path, method) in routed, f"{method.upper()} {path} is documented, not routed"
        if path.startswith("/api/v1/"):
            assert ("/api" + path[7:], method) in routed, f"no alias of {path}"
    # what changes state says it needs the token; reads do not
    for path, method in docs:
        op = doc["paths"][path][method]
        assert ("security" in op) == (method in ("post", "put", "delete")), (method, path)
    assert {"/api/v1/health", "/metrics", "/api/v1/limits", "/api/v1/events"} <= {
        p for p, _ in docs
    }


async def test_versioned_paths_and_aliases_answer_alike(start_node: Starter) -> None:
    node = await web_node(start_node, "alice")
    async with aiohttp.ClientSession() as http:
        async with http.put(
            url(node, "/api/v1/limits"), json={"download": 1000}, headers=auth(node)
        ) as resp:
            assert resp.status == 200
        for path in ("/api/v1/limits", "/api/limits"):
            async with http.get(url(node, path)) as resp:
                assert await resp.json() == {"download": 1000, "upload": None}, path
        async with http.put(url(node, "/api/limits"), json={"download": None}) as resp:
            assert resp.status == 401  # the alias is guarded alike


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PATCH", "/api/v1/files", {"GET", "HEAD", "POST"}),
        ("DELETE", "/api/v1/status", {"GET", "HEAD"}),
        ("POST", "/api/status", {"GET", "HEAD"}),
        ("POST", "/api/v1/limits", {"GET", "HEAD", "PUT"}),
        ("PUT", "/api/v1/files/{id}", {"GET", "HEAD", "DELETE"}),
        ("POST", "/metrics", {"GET", "HEAD"}),
        ("DELETE", "/api/health", {"GET", "HEAD"}),
    ],
)
async def test_a_405_says_what_is_allowed(
    start_node: Starter, method: str, path: str, allowed: set[str]
) -> None:
    node = await web_node(start_node, "alice")
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url(node, path.format(id="ab" * 32)), headers=auth(node)) as resp,
    ):
        assert resp.status == 405
        assert {m.strip() for m in resp.headers["Allow"].split(",")} == allowed
        body = await resp.json()
        assert body["status"] == 405


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"\x89PNG\r\n\x1a\n"),  # no boundary
        (
            "multipart/form-data; boundary=b36",
            b'--b36\r\nContent-Disposition: form-data; name="\x00\xc3"\r\n\r\nx\r\n--b36--\r\n',
        ),  # a part head that is no HTTP header
        ("multipart/form-data; boundary=b36", b"-68537591--1f3d0db0cd958cb9e4b4--"),
    ],
    ids=["no-boundary", "bad-part-header", "garbage"],
)
async def test_a_malformed_upload_is_a_400(
    start_node: Starter, content_type: str, body: bytes
) -> None:
    """What schemathesis found: malformed multipart bodies were answered 500."""
    node = await web_node(start_node, "alice")
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url(node, "/api/v1/files?name=x"),
            data=body,
            headers={**auth(node), "Content-Type": content_type},
        ) as resp,
    ):
        assert resp.status == 400, await resp.text()
        assert (await resp.json())["status"] == 400
    assert node.files() == []
