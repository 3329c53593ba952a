"""The dashboard's server side: pages and headers, static files, table rows, bulk actions,
CSV export and the live event stream (no browser needed)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
from _helpers import finished, serve
from fastapi import FastAPI

from fastapi_taskflow import TaskAdmin, TaskManager, TaskStatus, task_log
from fastapi_taskflow.web._events import RESET, EventHub
from fastapi_taskflow.web._export import safe_cell
from fastapi_taskflow.web._pages import load_assets

STATIC = resources.files("fastapi_taskflow.web") / "static"
flaky_should_fail = {"value": True}


async def ok(n: int = 0) -> None:
    task_log(f"ok {n}")


async def fails(message: str = "nope") -> None:
    raise ValueError(message)


async def flaky() -> None:
    if flaky_should_fail["value"]:
        raise RuntimeError("flaky")


async def slow() -> None:
    await asyncio.sleep(30)


def make_app(**options: Any) -> tuple[FastAPI, TaskManager]:
    manager = TaskManager()
    for fn in (ok, fails, flaky, slow):
        manager.task(name=fn.__name__)(fn)
    app = FastAPI()
    TaskAdmin(app, manager, **options)
    return app, manager


async def run(manager: TaskManager, fn: Any, *args: Any, **kwargs: Any) -> str:
    task_id = await manager.enqueue(fn, *args, **kwargs)
    await finished(manager, task_id)
    return task_id


# --------------------------------------------------------------------------- static files


class _Scan(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        values = dict(attrs)
        if tag == "script" and "src" not in names:
            self.problems.append("inline <script>")
        if tag == "style":
            self.problems.append("<style> element")
        self.problems += [f"{tag} {n}=" for n in names if n.startswith("on") or n == "style"]
        for name in ("src", "href"):
            value = values.get(name)
            if value is not None:
                self.links.append(value)


@pytest.mark.parametrize("page", ["dashboard.html", "login.html"])
def test_pages_have_no_inline_code_and_no_outside_links(page: str) -> None:
    scan = _Scan()
    scan.feed((STATIC / page).read_text())
    assert scan.problems == []
    assets = load_assets()
    for link in scan.links:
        assert not re.match(r"^[a-z]+:|^//", link), link  # nothing from another origin
        folder, _, name = link.rpartition("/")
        if folder:  # assets/x or login/x; bare names are pages ("dashboard")
            assert folder in ("assets", "login") and name in assets, link


def test_scripts_never_write_html_and_load_nothing_from_outside() -> None:
    sinks = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|"
        r"setAttribute\(\s*[\"']on|https?://|import\(\s*[\"']http"
    )
    assets = load_assets()
    scripts = [n for n in assets if n.endswith(".js")]
    assert {"app.js", "api.js", "dom.js", "tasks.js", "detail.js", "login.js"} <= set(scripts)
    for name in scripts:
        text = assets[name].body.decode()
        assert not sinks.search(text), (name, sinks.search(text))
        for imported in re.findall(r'from "\./([a-z-]+\.js)"', text):
            assert imported in assets, (name, imported)
    for name in (n for n in assets if n.endswith(".css")):
        css = assets[name].body.decode()
        assert "@import" not in css and "@font-face" not in css and "url(" not in css


async def test_dashboard_is_served_under_a_strict_csp() -> None:
    app, _ = make_app()
    async with serve(app) as client:
        response = await client.get("/tasks/dashboard")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "require-trusted-types-for 'script'" in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"
        assert '<script type="module" src="assets/app.js">' in response.text


async def test_assets_are_served_with_etags_and_nothing_else_is() -> None:
    app, _ = make_app()
    async with serve(app) as client:
        response = await client.get("/tasks/assets/app.js")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/javascript")
        etag = response.headers["etag"]
        again = await client.get("/tasks/assets/app.js", headers={"If-None-Match": etag})
        assert again.status_code == 304
        css = await client.get("/tasks/assets/style.css")
        assert css.headers["content-type"].startswith("text/css")
        for name in ("missing.js", "dashboard.html"):
            assert (await client.get(f"/tasks/assets/{name}")).status_code in (404, 422)
        for name in ("..%2F_admin.py", "%2E%2E%2Fstatic%2Fapp.js", "APP.JS", "a" * 70 + ".js"):
            assert (await client.get(f"/tasks/assets/{name}")).status_code in (404, 422)


# --------------------------------------------------------------------------- rows and filters


async def test_rows_are_small_and_filterable() -> None:
    app, manager = make_app()
    async with serve(app) as client:
        good = await run(manager, ok, 1)
        bad = await run(manager, fails, "x" * 1000)
        page = (await client.get("/tasks/rows")).json()
        assert [r["task_id"] for r in page["items"]] == [bad, good]
        row = page["items"][0]
        assert set(row) == {
            "task_id",
            "func_name",
            "status",
            "queue",
            "created_at",
            "start_time",
            "end_time",
            "duration",
            "attempts",
            "retries_used",
            "error",
            "retry_of",
            "updated_at",
        }
        assert len(row["error"]) == 300 and row["error"].endswith("\u2026")
        failed = (await client.get("/tasks/rows", params={"status": "failed"})).json()
        assert [r["task_id"] for r in failed["items"]] == [bad]
        found = (await client.get("/tasks/rows", params={"q": good[-12:]})).json()
        assert [r["task_id"] for r in found["items"]] == [good]
        first = (await client.get("/tasks/rows", params={"limit": 1})).json()
        second = (
            await client.get("/tasks/rows", params={"limit": 1, "cursor": first["next_cursor"]})
        ).json()
        assert [r["task_id"] for r in second["items"]] == [good]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/tasks/rows", {"limit": 0}),
        ("/tasks/rows", {"limit": 100_000}),
        ("/tasks/rows", {"status": "sleeping"}),
        ("/tasks/rows", {"cursor": "!!!"}),
        ("/tasks/rows", {"since": "yesterday"}),
        ("/tasks/rows", {"tag": "nocolon"}),
        ("/tasks/rows", {"q": "x" * 201}),
        ("/tasks/export.csv", {"limit": 0}),
        ("/tasks/export.csv", {"status": "nope"}),
        ("/tasks/export.csv", {"cursor": "ignored", "tag": ":v"}),
        ("/tasks/events", {"max_age": 0}),
        ("/tasks/events", {"max_age": "soon"}),
    ],
)
async def test_bad_parameters_get_4xx(path: str, params: dict[str, Any]) -> None:
    app, _ = make_app()
    async with serve(app) as client:
        response = await client.get(path, params=params)
        assert 400 <= response.status_code < 500, response.text


# --------------------------------------------------------------------------- bulk actions


async def test_bulk_retry_reports_each_task() -> None:
    app, manager = make_app()
    async with serve(app) as client:
        failed = await run(manager, fails)
        done = await run(manager, ok)
        body = {"task_ids": [failed, done, "no-such-task", failed]}
        result = (await client.post("/tasks/retry", json=body)).json()
        assert result["retried"] == [{"task_id": failed, "retry_of": failed}]
        errors = {e["task_id"]: e["detail"] for e in result["errors"]}
        assert set(errors) == {done, "no-such-task"}
        assert "only failed" in errors[done] and "no task" in errors["no-such-task"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"task_ids": []},
        {"task_ids": ["a"] * 501},
        {"task_ids": ["bad id!"]},
        {"task_ids": ["x" * 65]},
        {"task_ids": ["a"], "force": True},
        {"task_ids": "a"},
        [],
    ],
)
async def test_bulk_retry_validates_its_body(body: Any) -> None:
    app, _ = make_app()
    async with serve(app) as client:
        assert (await client.post("/tasks/retry", json=body)).status_code == 422
        broken = await client.post(
            "/tasks/retry", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert broken.status_code == 422


async def test_replay_failed_since_a_time() -> None:
    app, manager = make_app()
    async with serve(app) as client:
        old = await run(manager, flaky)
        await asyncio.sleep(0.01)
        cut = datetime.now(UTC)
        new = await run(manager, flaky)
        other = await run(manager, fails)
        await run(manager, ok)
        flaky_should_fail["value"] = False
        try:
            body = {"since": cut.isoformat(), "func_name": "flaky"}
            result = (await client.post("/tasks/replay", json=body)).json()
            assert [r["retry_of"] for r in result["retried"]] == [new]
            await finished(manager, new)
            naive = cut.replace(tzinfo=None).isoformat()  # taken as UTC
            result = (await client.post("/tasks/replay", json={"since": naive})).json()
            assert [r["retry_of"] for r in result["retried"]] == [other]
            before = (cut - timedelta(hours=1)).isoformat()
            result = (await client.post("/tasks/replay", json={"since": before, "limit": 1})).json()
            assert len(result["retried"]) + len(result["errors"]) == 1
        finally:
            flaky_should_fail["value"] = True
        assert (await manager.history.get(new)) is not None
        assert (await manager.history.get(old)) is not None
        for bad in (
            {"since": "never"},
            {"since": cut.isoformat(), "limit": 0},
            {"since": cut.isoformat(), "limit": 5000},
            {},
        ):
            assert (await client.post("/tasks/replay", json=bad)).status_code == 422


# --------------------------------------------------------------------------- CSV export


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ('=HYPERLINK("http://evil")', '\'=HYPERLINK("http://evil")'),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcmd", "'\tcmd"),
        ("\rcmd", "'\rcmd"),
        ("\uff1d1+1", "'\uff1d1+1"),
        ("plain = text", "plain = text"),
        (1.5, "1.5"),
        (None, ""),
        ({"k": "=x"}, '{"k": "=x"}'),
    ],
)
def test_csv_cells_never_start_a_formula(value: Any, cell: str) -> None:
    assert safe_cell(value) == cell


async def test_export_csv_is_filtered_and_safe() -> None:
    app, manager = make_app(display_func_args=True)
    async with serve(app) as client:
        evil = await run(manager, fails, "=cmd|' /C calc'!A0", tags={"note": "@evil"})
        await run(manager, ok, 7)
        response = await client.get("/tasks/export.csv", params={"status": "failed"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert response.headers["content-disposition"].startswith("attachment; filename=")
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert [r["task_id"] for r in rows] == [evil]
        assert rows[0]["error"] == "ValueError: =cmd|' /C calc'!A0"  # starts with a letter
        assert rows[0]["tags"] == '{"note": "@evil"}'
        assert rows[0]["args"] == "[\"=cmd|' /C calc'!A0\"]"
        assert rows[0]["status"] == "failed" and rows[0]["attempts"] == "1"
        for row in rows:
            for value in row.values():
                assert not value.startswith(("=", "+", "-", "@", "\t", "\r"))
        every = await client.get("/tasks/export.csv", params={"limit": 1})
        assert len(list(csv.DictReader(io.StringIO(every.text)))) == 1


async def test_export_hides_arguments_unless_displayed() -> None:
    app, manager = make_app()
    async with serve(app) as client:
        await run(manager, ok, 12345)
        text = (await client.get("/tasks/export.csv")).text
        assert "args" not in text.splitlines()[0] and "12345" not in text


# --------------------------------------------------------------------------- live events


def frames(body: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for block in body.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            found.append((lines["event"], json.loads(lines.get("data", "{}"))))
    return found


async def test_event_stream_sends_one_small_event_per_change() -> None:
    app, manager = make_app()
    async with serve(app) as client:
        await run(manager, ok)  # history that must not be re-sent

        async def listen() -> httpx.Response:
            return await client.get("/tasks/events", params={"max_age": 0.6})

        listening = asyncio.create_task(listen())
        await asyncio.sleep(0.15)
        task_id = await run(manager, fails, "<b>boom</b>")
        response = await listening
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"].startswith("no-cache")
        events = frames(response.text)
        assert events[0] == ("hello", {})
        changes = [data for name, data in events if name == "task"]
        assert {c["task_id"] for c in changes} == {task_id}
        assert changes[-1]["status"] == "failed"
        assert changes[-1]["error"] == "ValueError: <b>boom</b>"
        assert 1 <= len(changes) <= 3  # pending, running, failed (bursts are merged)
        for block in response.text.split("\n\n"):
            assert len(block) < 1000


async def test_a_slow_client_gets_a_reset_instead_of_a_backlog() -> None:
    manager = TaskManager()
    manager.task(name="ok")(ok)
    async with manager:
        hub = EventHub(manager.store, max_backlog=5)
        stream = hub.stream(keepalive_s=5, max_age_s=5)
        assert await anext(stream) == b"retry: 2000\nevent: hello\ndata: {}\n\n"
        assert hub.clients == 1
        ids = [await manager.enqueue(ok, n) for n in range(20)]
        for task_id in ids:
            await manager.wait(task_id)
        chunk = await anext(stream)
        assert chunk == RESET
        await hub.close()
        assert [c async for c in stream] == []
        assert hub.clients == 0


async def test_streams_end_at_shutdown_and_keep_alive_when_idle() -> None:
    manager = TaskManager()
    async with manager:
        hub = EventHub(manager.store)
        stream = hub.stream(keepalive_s=0.05, max_age_s=5)
        await anext(stream)
        assert await anext(stream) == b": keep-alive\n\n"
        closing = asyncio.create_task(hub.close())
        assert [c async for c in stream] == []
        await closing


async def test_open_admin_still_refuses_cross_site_posts() -> None:
    app, manager = make_app()
    async with serve(app) as client:
        task_id = await run(manager, fails)
        refused = await client.post(
            f"/tasks/{task_id}/retry", headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert refused.status_code == 403
        session = (await client.get("/tasks/session")).json()
        assert session["auth"] == "open" and session["user"] is None and session["can_act"]
        record = await manager.history.get(task_id)
        assert record is not None and record.status is TaskStatus.FAILED


# --------------------------------------------------------------------------- the guides


def _python_blocks(name: str) -> list[str]:
    text = (Path(__file__).resolve().parent.parent / "docs" / name).read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.mark.parametrize("name", ["dashboard.md", "authentication.md"])
def test_guide_examples_compile(name: str) -> None:
    blocks = _python_blocks(name)
    assert blocks
    for block in blocks:
        compile(block, name, "exec")


async def test_guide_examples_run() -> None:
    namespace: dict[str, Any] = {}
    exec(_python_blocks("dashboard.md")[0], namespace)
    app, manager = namespace["app"], namespace["task_manager"]
    async with serve(app) as client:
        assert (await client.get("/tasks/dashboard")).status_code == 303
        login = {"username": "admin", "password": "change me to something long"}
        assert (await client.post("/tasks/login", json=login)).status_code == 200
        task_id = (await client.post("/signup", params={"email": "a@b.c"})).json()["task_id"]
        await finished(manager, task_id)
        assert (await client.get(f"/tasks/{task_id}")).json()["kwargs"] == {"address": "a@b.c"}

    namespace = {}
    exec(_python_blocks("authentication.md")[1], namespace)
    async with serve(namespace["app"]) as client:
        assert (await client.get("/tasks")).status_code == 401
        ada = (await client.get("/tasks/session", headers={"x-forwarded-user": "ada"})).json()
        bob = (await client.get("/tasks/session", headers={"x-forwarded-user": "bob"})).json()
        assert (ada["role"], bob["role"]) == ("admin", "read")
