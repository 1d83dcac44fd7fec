"""Authorization of per-pod HTTP endpoints against scripted TokenReviews and
SubjectAccessReviews."""

from __future__ import annotations

import base64
import json
from typing import Any, cast

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from aviator.kube.client import ApiError, KubeClient
from aviator.runtime.httpauth import RequestAuthorizer, protect


def jwt(subject: str) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'sub': subject})}.sig"


class FakeApi:
    """TokenReview: the token's subject is the user; SAR: allowed paths per user."""

    def __init__(self, allowed: dict[str, set[str]]) -> None:
        self.allowed = allowed
        self.calls: list[str] = []
        self.down = False

    async def create(self, res: Any, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(body["kind"])
        if self.down:
            raise ApiError(500, text="down")
        if body["kind"] == "TokenReview":
            payload = body["spec"]["token"].split(".")[1]
            user = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            name = user["sub"]
            if name not in self.allowed:
                return {"status": {"authenticated": False}}
            return {"status": {"authenticated": True, "user": {"username": name}}}
        spec = body["spec"]
        ok = spec["nonResourceAttributes"]["path"] in self.allowed.get(spec["user"], set())
        return {"status": {"allowed": ok}}


async def test_authorize_and_cache() -> None:
    api = FakeApi({"scraper": {"/metrics"}, "nobody": set()})
    now = [0.0]
    auth = RequestAuthorizer(cast(KubeClient, api), clock=lambda: now[0], reviews_burst=3)
    assert (await auth.authorize("", "/metrics"))[0] == 401
    assert (await auth.authorize("junk", "/metrics"))[0] == 401
    assert api.calls == []  # refused before any review
    assert (await auth.authorize(jwt("scraper"), "/metrics"))[0] == 200
    assert (await auth.authorize(jwt("scraper"), "/latency"))[0] == 403
    assert (await auth.authorize(jwt("stranger"), "/metrics"))[0] == 401
    calls = len(api.calls)
    assert (await auth.authorize(jwt("scraper"), "/metrics"))[0] == 200  # cached
    assert len(api.calls) == calls
    assert (await auth.authorize(jwt("nobody"), "/metrics"))[0] == 429  # burst spent
    now[0] = 10.0
    api.down = True
    assert (await auth.authorize(jwt("nobody"), "/metrics"))[0] == 503


async def test_middleware_guards_only_the_data_paths() -> None:
    api = FakeApi({"scraper": {"/latency"}})
    app = web.Application(
        middlewares=[protect(RequestAuthorizer(cast(KubeClient, api)), ("/latency",))]
    )

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="data")

    app.router.add_get("/latency", ok)
    app.router.add_get("/healthz", ok)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/healthz")).status == 200
        resp = await client.get("/latency")
        assert resp.status == 401 and "Bearer" in resp.headers["WWW-Authenticate"]
        good = {"Authorization": f"Bearer {jwt('scraper')}"}
        assert (await client.get("/latency", headers=good)).status == 200
