"""Authentication of the admin: every route guarded, roles, CSRF, sessions, keys, limits."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from _helpers import finished, serve
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.routing import APIRoute

from fastapi_taskflow import ConfigurationError, TaskAdmin, TaskManager
from fastapi_taskflow.web import PasswordAuth, Principal

PATH = "/tasks"
ADMIN = ("admin", "correct horse battery staple")
VIEWER = ("viewer", "read only but long enough")
ADMIN_KEY = "admin-key-" + "a" * 32
READ_KEY = "read-key-" + "b" * 32
SECRET = "test-secret-" + "c" * 32
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


async def boom() -> None:
    raise RuntimeError("boom")


def make_app(**admin_options: Any) -> tuple[FastAPI, TaskManager]:
    manager = TaskManager()
    manager.task(name="boom")(boom)
    app = FastAPI()
    TaskAdmin(app, manager, path=PATH, secret_key=SECRET, **admin_options)
    return app, manager


def password_app() -> tuple[FastAPI, TaskManager]:
    return make_app(
        auth=[ADMIN, (*VIEWER, "read")], api_keys={ADMIN_KEY: "admin", READ_KEY: "read"}
    )


def all_routes(app: FastAPI) -> list[Any]:
    try:  # FastAPI >= 0.16x keeps included routers nested; this walks them
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI flattens them into app.routes
        return list(app.routes)
    return list(iter_route_contexts(app.routes))


def admin_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route of the app under the admin path."""
    found = []
    for route in all_routes(app):
        path = getattr(route, "path", None) or ""
        if path != PATH and not path.startswith(PATH + "/"):
            continue
        assert isinstance(getattr(route, "original_route", route), APIRoute), path
        found += [(method, path) for method in sorted(route.methods)]
    return found


def concrete(path: str, task_id: str) -> str:
    """A route path with its parameters filled in with values that exist."""
    path = path.replace("{task_id}", task_id)
    name = "login.js" if path.startswith(f"{PATH}/login/") else "app.js"
    path = path.replace("{name}", name)
    assert "{" not in path, f"unknown path parameter in {path}"
    if path == f"{PATH}/events":
        path += "?max_age=0.2"  # ends the stream, so the in-memory client returns
    return path


def is_public(path: str) -> bool:
    # The sign-in page, its form and the files it needs are all a stranger may load.
    return path == f"{PATH}/login" or path.startswith(f"{PATH}/login/")


@dataclass
class Admin:
    app: FastAPI
    manager: TaskManager
    client: httpx.AsyncClient
    task_id: str


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    app, manager = password_app()
    async with serve(app) as client:
        task_id = await manager.enqueue(boom)
        await finished(manager, task_id)
        yield Admin(app, manager, client, task_id)


async def sign_in(client: httpx.AsyncClient, user: tuple[str, str]) -> str:
    """Log in with a fresh cookie jar; returns the CSRF token."""
    client.cookies.clear()
    response = await client.post(f"{PATH}/login", json={"username": user[0], "password": user[1]})
    assert response.status_code == 200, response.text
    token: str = response.json()["csrf_token"]
    return token


async def call(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> httpx.Response:
    if method in STATE_CHANGING:
        kwargs.setdefault("json", {})
    return await client.request(method, path, **kwargs)


# --------------------------------------------------------------------------- every route


async def test_every_admin_route_refuses_an_unauthenticated_request(admin: Admin) -> None:
    routes = admin_routes(admin.app)
    assert len(routes) >= 15  # the enumeration really found the admin
    public = {(m, p) for m, p in routes if is_public(p)}
    assert public == {
        ("GET", f"{PATH}/login"),
        ("POST", f"{PATH}/login"),
        ("GET", f"{PATH}/login/{{name}}"),
    }
    admin.client.cookies.clear()
    for method, path in routes:
        if is_public(path):
            continue
        response = await call(admin.client, method, concrete(path, admin.task_id))
        where = f"{method} {path}"
        if path == f"{PATH}/dashboard":
            assert response.status_code == 303, where
            assert response.headers["location"] == "login"
        else:
            assert response.status_code == 401, where
            assert "Bearer" in response.headers["www-authenticate"], where
        assert admin.task_id not in response.text, where
        # A wrong API key or a forged session cookie is no better than nothing.
        forged = {"Authorization": "Bearer " + "x" * 40, "Cookie": "taskflow_session=forged"}
        refused = await call(admin.client, method, concrete(path, admin.task_id), headers=forged)
        assert refused.status_code in (303, 401), where


async def test_every_state_changing_route_refuses_readers_and_requests_without_csrf(
    admin: Admin,
) -> None:
    changing = [(m, p) for m, p in admin_routes(admin.app) if m in STATE_CHANGING]
    changing = [(m, p) for m, p in changing if not is_public(p)]
    assert {p for _, p in changing} >= {
        f"{PATH}/retry",
        f"{PATH}/replay",
        f"{PATH}/{{task_id}}/retry",
        f"{PATH}/{{task_id}}/cancel",
        f"{PATH}/{{task_id}}",  # DELETE: the only state-changing method on this path
        f"{PATH}/logout",
    }
    assert ("DELETE", f"{PATH}/{{task_id}}") in changing
    client = admin.client
    for method, path in changing:
        url, where = concrete(path, admin.task_id), f"{method} {path}"
        signing_out = path == f"{PATH}/logout"  # any signed-in user may sign out

        token = await sign_in(client, VIEWER)
        response = await call(client, method, url, headers={"X-CSRF-Token": token})
        if not signing_out:
            assert response.status_code == 403, where
            assert "read-only" in response.json()["detail"], where
            response = await call(
                client, method, url, headers={"Authorization": f"Bearer {READ_KEY}"}
            )
            assert response.status_code == 403, where

        await sign_in(client, ADMIN)
        response = await call(client, method, url)
        assert response.status_code == 403, where
        assert "CSRF" in response.json()["detail"], where
        response = await call(client, method, url, headers={"X-CSRF-Token": "0" * 64})
        assert response.status_code == 403, where

        # The same request with the token (or an admin API key) gets past the guard.
        token = await sign_in(client, ADMIN)
        response = await call(client, method, url, headers={"X-CSRF-Token": token})
        assert response.status_code not in (401, 403), (where, response.text)
        client.cookies.clear()
        response = await call(client, method, url, headers={"X-API-Key": ADMIN_KEY})
        if not signing_out:
            assert response.status_code not in (401, 403), (where, response.text)


async def test_every_read_route_works_for_a_read_only_user(admin: Admin) -> None:
    await sign_in(admin.client, VIEWER)
    for method, path in admin_routes(admin.app):
        if method in STATE_CHANGING or is_public(path):
            continue
        response = await admin.client.request(method, concrete(path, admin.task_id))
        assert response.status_code == 200, (method, path, response.text)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"api_keys": {ADMIN_KEY: "admin"}}, id="api-keys-only"),
        pytest.param({"auth": PasswordAuth([ADMIN])}, id="backend-object"),
        pytest.param({"auth": lambda: None}, id="app-dependency"),
    ],
)
async def test_other_auth_kinds_also_guard_every_route(options: dict[str, Any]) -> None:
    app, manager = make_app(**options)
    async with serve(app) as client:
        task_id = await manager.enqueue(boom)
        for method, path in admin_routes(app):
            if is_public(path):
                continue
            response = await call(client, method, concrete(path, task_id))
            assert response.status_code in (303, 401), (method, path)


# --------------------------------------------------------------------------- sessions


async def test_login_sets_a_signed_http_only_cookie(admin: Admin) -> None:
    response = await admin.client.post(
        f"{PATH}/login", json={"username": ADMIN[0], "password": ADMIN[1]}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["user"] == "admin" and body["role"] == "admin" and body["can_act"] is True
    cookies = response.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("taskflow_session="))
    csrf = next(c for c in cookies if c.startswith("taskflow_csrf="))
    assert "HttpOnly" in session and "SameSite=lax" in session and f"Path={PATH}" in session
    assert "Secure" not in session  # plain http, secure_cookies not forced
    assert "HttpOnly" in csrf and "SameSite=strict" in csrf
    assert ADMIN[1] not in session
    assert (await admin.client.get(PATH)).status_code == 200
    session_info = (await admin.client.get(f"{PATH}/session")).json()
    assert session_info["csrf_token"] == body["csrf_token"]


async def test_tampered_sessions_are_refused(admin: Admin) -> None:
    await sign_in(admin.client, VIEWER)
    value = admin.client.cookies["taskflow_session"]
    payload, _, rest = value.partition(".")
    # Claim to be an admin by editing the payload: the signature no longer matches.
    admin.client.cookies.set("taskflow_session", payload[:-2] + "xx." + rest, path=PATH)
    assert (await admin.client.get(PATH)).status_code == 401
    other = TaskAdmin(FastAPI(), TaskManager(), auth=[ADMIN], secret_key="another-secret-" * 3)
    assert other.security.read_session(value) is None  # signed with another key


async def test_session_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    app, _ = make_app(auth=[ADMIN], session_max_age_s=60)
    async with serve(app) as client:
        await sign_in(client, ADMIN)
        assert (await client.get(PATH)).status_code == 200
        import itsdangerous.timed

        real = itsdangerous.timed.time.time
        monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: real() + 61)
        assert (await client.get(PATH)).status_code == 401


async def test_secure_cookies_option() -> None:
    app, _ = make_app(auth=[ADMIN], secure_cookies=True, same_site="strict")
    async with serve(app) as client:
        response = await client.post(
            f"{PATH}/login", json={"username": ADMIN[0], "password": ADMIN[1]}
        )
        session = response.headers.get_list("set-cookie")[0]
        assert "Secure" in session and "SameSite=strict" in session


async def test_https_requests_get_secure_cookies_by_default() -> None:
    app, _ = make_app(auth=[ADMIN])
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://test") as client:
            response = await client.post(
                f"{PATH}/login", json={"username": ADMIN[0], "password": ADMIN[1]}
            )
            assert "Secure" in response.headers.get_list("set-cookie")[0]


async def test_logout_ends_the_session(admin: Admin) -> None:
    token = await sign_in(admin.client, ADMIN)
    response = await admin.client.post(f"{PATH}/logout", headers={"X-CSRF-Token": token})
    assert response.status_code == 204
    assert (await admin.client.get(PATH)).status_code == 401


async def test_cross_site_requests_are_refused_even_with_a_token(admin: Admin) -> None:
    token = await sign_in(admin.client, ADMIN)
    headers = {"X-CSRF-Token": token, "Sec-Fetch-Site": "cross-site"}
    response = await admin.client.post(f"{PATH}/{admin.task_id}/retry", headers=headers)
    assert response.status_code == 403 and "cross-site" in response.json()["detail"]
    admin.client.cookies.clear()
    response = await admin.client.post(
        f"{PATH}/login",
        json={"username": ADMIN[0], "password": ADMIN[1]},
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert response.status_code == 403


async def test_login_rejects_form_posts_and_bad_bodies(admin: Admin) -> None:
    form = await admin.client.post(f"{PATH}/login", data={"username": "a", "password": "b"})
    assert form.status_code == 422
    for body in (
        {},
        {"username": "", "password": "x"},
        {"username": "a" * 201, "password": "x"},
        {"username": "a", "password": "b", "extra": 1},
    ):
        assert (await admin.client.post(f"{PATH}/login", json=body)).status_code == 422


# --------------------------------------------------------------------------- rate limiting


async def test_failed_logins_are_rate_limited() -> None:
    app, _ = make_app(auth=[ADMIN], login_attempts=3, login_window_s=60)
    async with serve(app) as client:
        wrong = {"username": ADMIN[0], "password": "nope"}
        statuses = [(await client.post(f"{PATH}/login", json=wrong)).status_code for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        # Even the right password waits now: guessing cannot continue.
        right = await client.post(
            f"{PATH}/login", json={"username": ADMIN[0], "password": ADMIN[1]}
        )
        assert right.status_code == 429
        assert 1 <= int(right.headers["retry-after"]) <= 61


async def test_rate_limit_window_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi_taskflow.web import _ratelimit

    now = [1000.0]
    monkeypatch.setattr(_ratelimit.time, "monotonic", lambda: now[0])
    limiter = _ratelimit.LoginLimiter(max_failures=2, window_s=10)
    limiter.failed("1.2.3.4", "ann")
    limiter.failed("1.2.3.4", "ann")
    assert limiter.retry_after("1.2.3.4", "bob") == pytest.approx(10)
    assert limiter.retry_after("5.6.7.8", "ann") == 0  # per-user limit is higher
    now[0] += 10.5
    assert limiter.retry_after("1.2.3.4", "ann") == 0
    for _ in range(8):
        limiter.failed(f"10.0.0.{_}", "ann")  # a spray from many addresses
    assert limiter.retry_after("9.9.9.9", "ann") > 0
    limiter.succeeded("ann")
    assert limiter.retry_after("9.9.9.9", "ann") == 0


# --------------------------------------------------------------------------- API keys


async def test_api_keys_as_bearer_or_header(admin: Admin) -> None:
    admin.client.cookies.clear()
    for headers in ({"Authorization": f"Bearer {READ_KEY}"}, {"X-API-Key": READ_KEY}):
        response = await admin.client.get(PATH, headers=headers)
        assert response.status_code == 200
        assert response.json()["items"][0]["task_id"] == admin.task_id
    retry = await admin.client.post(
        f"{PATH}/{admin.task_id}/retry", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert retry.status_code == 200  # no CSRF token needed: browsers never send keys
    bad = await admin.client.get(PATH, headers={"X-API-Key": ADMIN_KEY[:-1] + "z"})
    assert bad.status_code == 401


# --------------------------------------------------------------------------- app dependency


class User:
    def __init__(self, username: str, role: str) -> None:
        self.username = username
        self.role = role


async def current_user(request: Request) -> User:
    """An app's own auth: a header set by its gateway."""
    name = request.headers.get("x-user")
    if name is None:
        raise HTTPException(401, "sign in to the application first")
    return User(name, "read" if name == "guest" else "admin")


async def test_app_dependency_decides_who_is_signed_in() -> None:
    app, manager = make_app(auth=current_user)
    async with serve(app) as client:
        task_id = await manager.enqueue(boom)
        await finished(manager, task_id)
        assert (await client.get(PATH)).status_code == 401
        assert (await client.get(PATH, headers={"x-user": "guest"})).status_code == 200
        session = (await client.get(f"{PATH}/session", headers={"x-user": "ann"})).json()
        assert session["user"] == "ann" and session["auth"] == "app"
        assert session["login_path"] is None
        refused = await client.post(f"{PATH}/{task_id}/retry", headers={"x-user": "guest"})
        assert refused.status_code == 403
        no_token = await client.post(f"{PATH}/{task_id}/retry", headers={"x-user": "ann"})
        assert no_token.status_code == 403 and "CSRF" in no_token.json()["detail"]
        ok = await client.post(
            f"{PATH}/{task_id}/retry",
            headers={"x-user": "ann", "X-CSRF-Token": session["csrf_token"]},
        )
        assert ok.status_code == 200
        assert not [r for r in admin_routes(app) if is_public(r[1])]  # the app signs in


async def test_app_dependency_with_sub_dependencies_and_principal() -> None:
    def settings() -> str:
        return "read"

    def user(role: str = Depends(settings)) -> Principal:
        return Principal(name="svc", role="read" if role == "read" else "admin")

    app, _ = make_app(auth=user)
    async with serve(app) as client:
        session = (await client.get(f"{PATH}/session")).json()
        assert session["user"] == "svc" and session["can_act"] is False


# --------------------------------------------------------------------------- configuration


async def test_open_admin_logs_a_warning_that_says_how_to_protect_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = TaskManager()
    app = FastAPI()
    TaskAdmin(app, manager)
    with caplog.at_level(logging.WARNING, logger="fastapi_taskflow"):
        async with serve(app):
            pass
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "open to anyone" in warning and "auth=" in warning

    caplog.clear()
    app, _ = password_app()
    with caplog.at_level(logging.WARNING, logger="fastapi_taskflow"):
        async with serve(app):
            pass
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"auth": ("admin", "")}, "empty password"),
        ({"auth": [ADMIN, ADMIN]}, "listed twice"),
        ({"auth": [("a", "b", "root")]}, "role must be"),
        ({"auth": []}, "at least one"),
        ({"auth": 42}, "auth must be"),
        ({"api_keys": {"short": "admin"}}, "at least 16"),
        ({"api_keys": {ADMIN_KEY: "owner"}}, "role must be"),
        ({"secret_key": "short"}, "at least 16"),
        ({"same_site": "none"}, "same_site"),
        ({"login_attempts": 0}, "positive"),
    ],
)
def test_bad_auth_configuration_is_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        TaskAdmin(FastAPI(), TaskManager(), **options)


async def test_password_auth_checks_every_user() -> None:
    auth = PasswordAuth([ADMIN, (*VIEWER, "read")])
    assert await auth.authenticate(*ADMIN) == Principal(name="admin", role="admin")
    assert await auth.authenticate(*VIEWER) == Principal(name="viewer", role="read")
    assert await auth.authenticate(ADMIN[0], VIEWER[1]) is None
    assert await auth.authenticate("nobody", ADMIN[1]) is None
