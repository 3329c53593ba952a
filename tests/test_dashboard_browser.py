"""The dashboard in a real browser: Playwright drives Debian's Chromium against uvicorn.

One uvicorn server per app runs in this module's event loop, next to the browser; tests
enqueue tasks straight through the app's TaskManager and watch the page react. Every page
records its requests, console errors and CSP violations, and each test ends by checking that
nothing left the app's origin and nothing was refused or thrown.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
import uvicorn
from _servers import CHROMIUM_ARGS
from fastapi import FastAPI
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    async_playwright,
    expect,
)
from playwright.async_api import Error as PlaywrightError

from fastapi_taskflow import QueueConfig, TaskAdmin, TaskManager, task_log

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

ADMIN = ("admin", "correct horse battery staple")
VIEWER = ("viewer", "read only but long enough")
XSS = [
    '<img src=x onerror="window.__xss=(window.__xss||0)+1">',
    "<script>window.__xss=1</script>",
    '"><svg onload="window.__xss=1"></svg>',
    "javascript:alert(document.domain)",
]
EVIL_NAME = '<img src=x onerror="window.__xss=1">.task'
EVIL_QUEUE = "<b onmouseover=alert(1)>q</b>"

gates: dict[str, asyncio.Event] = {}
outcomes: dict[str, bool] = {}


async def gated(key: str) -> None:
    """Logs, waits for its gate, then fails or succeeds as ``outcomes[key]`` says."""
    task_log(f"waiting for gate {key}")
    task_log("about to check the outcome", level="warning", gate=key)
    await gates.setdefault(key, asyncio.Event()).wait()
    if not outcomes.get(key, True):
        task_log("the outcome says fail", level="error")
        raise RuntimeError(f"gate {key} said no")
    task_log("done")


async def sleeper(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def evil(*args: Any, **kwargs: Any) -> None:
    for payload in XSS:
        task_log(payload, level="warning", payload=payload)
    raise ValueError(XSS[0] + XSS[1])


def make_manager() -> TaskManager:
    manager = TaskManager(queues=[QueueConfig(name=EVIL_QUEUE)])
    manager.task(name="jobs.gated")(gated)
    manager.task(name="jobs.sleeper")(sleeper)
    manager.task(name=EVIL_NAME, queue=EVIL_QUEUE)(evil)
    return manager


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Site:
    """An app served by uvicorn in this event loop."""

    app: FastAPI
    manager: TaskManager
    url: str = ""
    server: uvicorn.Server | None = None
    task: asyncio.Task[None] | None = None
    contexts: list[BrowserContext] = field(default_factory=list)

    async def start(self) -> None:
        port = free_port()
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            ws="none",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve())
        async with asyncio.timeout(10):
            while not self.server.started:
                await asyncio.sleep(0.01)
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self.server is not None and self.task is not None
        for context in self.contexts:  # a failed test may leave an event stream open
            with contextlib.suppress(PlaywrightError):
                await context.close()
        self.server.should_exit = True
        await self.task


@contextlib.asynccontextmanager
async def running(app: FastAPI, manager: TaskManager) -> AsyncIterator[Site]:
    site = Site(app, manager)
    await site.start()
    try:
        yield site
    finally:
        await site.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def playwright() -> AsyncIterator[Playwright]:
    async with async_playwright() as pw:
        yield pw


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(playwright: Playwright, chromium_path: str) -> AsyncIterator[Browser]:
    browser = await playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
    yield browser
    await browser.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def open_site() -> AsyncIterator[Site]:
    manager = make_manager()
    app = FastAPI()
    TaskAdmin(app, manager, display_func_args=True)
    async with running(app, manager) as site:
        yield site


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def auth_site() -> AsyncIterator[Site]:
    manager = make_manager()
    app = FastAPI()
    TaskAdmin(app, manager, auth=[ADMIN, (*VIEWER, "read")], secret_key="s" * 32)
    async with running(app, manager) as site:
        yield site


@dataclass
class Watch:
    """What a page did: every request, console errors, page errors and dialogs."""

    origin: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    confirm: int = 0  # confirmations a test expects: accepted and kept in `confirmed`
    confirmed: list[str] = field(default_factory=list)

    def check(self) -> None:
        foreign = [url for url in self.requests if not url.startswith(self.origin + "/")]
        assert foreign == [], f"requests left the app's origin: {foreign}"
        assert self.errors == []
        assert self.dialogs == []


async def new_page(browser: Browser, site: Site) -> tuple[Page, Watch]:
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(5000)
    site.contexts.append(context)
    page = await context.new_page()
    watch = Watch(origin=site.url)
    page.on("request", lambda request: watch.requests.append(request.url))
    page.on("pageerror", lambda error: watch.errors.append(f"page error: {error}"))

    def on_console(message: Any) -> None:
        # 401s while signed out are expected; anything else (CSP, TypeError) is not.
        if message.type == "error" and "status of 401" not in message.text:
            watch.errors.append(f"console: {message.text}")

    page.on("console", on_console)

    async def on_dialog(dialog: Any) -> None:
        if watch.confirm and dialog.type == "confirm":
            watch.confirm -= 1
            watch.confirmed.append(dialog.message)
            await dialog.accept()
            return
        watch.dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    return page, watch


@pytest_asyncio.fixture(loop_scope="module")
async def open_page(browser: Browser, open_site: Site) -> AsyncIterator[Page]:
    page, watch = await new_page(browser, open_site)
    await page.goto(f"{open_site.url}/tasks/dashboard")
    await expect(page.locator("body")).to_have_attribute("data-ready", "true")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    yield page
    await page.context.close()
    watch.check()


def row(page: Page, task_id: str) -> Any:
    return page.locator(f'#tasks tbody tr[data-id="{task_id}"]')


async def open_gate(key: str, succeed: bool = True) -> None:
    outcomes[key] = succeed
    gates.setdefault(key, asyncio.Event()).set()


# --------------------------------------------------------------------------- live view


async def test_task_appears_live_and_changes_status(open_page: Page, open_site: Site) -> None:
    await open_page.evaluate("window.__marker = 'same page'")
    task_id = await open_site.manager.enqueue(gated, "live-1")
    await expect(row(open_page, task_id)).to_have_attribute("data-status", "running")
    await expect(row(open_page, task_id).locator(".badge")).to_have_text("running")
    await open_gate("live-1")
    await expect(row(open_page, task_id)).to_have_attribute("data-status", "success")
    assert await open_page.evaluate("window.__marker") == "same page"  # no reload
    success_card = open_page.locator('.card[data-metric="success"] .card-value')
    await expect(success_card).to_have_text(re.compile(r"^[1-9][\d,.]*$"))


async def test_detail_panel_shows_logs_error_and_stack_trace(
    open_page: Page, open_site: Site
) -> None:
    task_id = await open_site.manager.enqueue(gated, "detail-1", tags={"tenant": "acme"})
    await open_gate("detail-1", succeed=False)
    await expect(row(open_page, task_id)).to_have_attribute("data-status", "failed")
    await row(open_page, task_id).click()
    panel = open_page.locator("#detail")
    await expect(panel).to_be_visible()
    await expect(panel.locator("#detail-error")).to_have_text("RuntimeError: gate detail-1 said no")
    trace = panel.locator("#detail-stacktrace")
    await expect(trace).to_contain_text("Traceback (most recent call last)")
    await expect(trace).to_contain_text("in gated")
    logs = panel.locator(".logs tr")
    await expect(logs.filter(has_text="waiting for gate detail-1")).to_have_attribute(
        "data-level", "info"
    )
    await expect(logs.filter(has_text="about to check the outcome")).to_have_attribute(
        "data-level", "warning"
    )
    await expect(logs.filter(has_text="the outcome says fail")).to_have_attribute(
        "data-level", "error"
    )
    await expect(panel.locator(".chip")).to_have_text("tenant=acme")
    await expect(panel.locator(".timeline li")).to_have_count(1)
    await expect(panel).to_contain_text('"detail-1"')  # arguments, display_func_args=True


async def test_retry_and_cancel_from_the_page(open_page: Page, open_site: Site) -> None:
    manager = open_site.manager
    failing = await manager.enqueue(gated, "retry-1")
    outcomes["retry-1"] = False
    await open_gate("retry-1", succeed=False)
    await expect(row(open_page, failing)).to_have_attribute("data-status", "failed")
    await row(open_page, failing).click()
    outcomes["retry-1"] = True
    await open_page.locator("#detail-retry").click()
    await expect(row(open_page, failing)).to_have_attribute("data-status", "success")
    await expect(open_page.locator("#detail .detail-title-row .badge")).to_have_text("success")

    slow = await manager.enqueue(sleeper, 30)
    await expect(row(open_page, slow)).to_have_attribute("data-status", "running")
    await row(open_page, slow).click()
    await open_page.locator("#detail-cancel").click()
    await expect(row(open_page, slow)).to_have_attribute("data-status", "cancelled")
    record = await manager.history.get(slow)
    assert record is not None and record.status.value == "cancelled"


async def test_delete_from_the_page(browser: Browser, open_site: Site) -> None:
    manager = open_site.manager
    open_page, watch = await new_page(browser, open_site)
    await open_page.goto(f"{open_site.url}/tasks/dashboard")
    await expect(open_page.locator("#live")).to_have_attribute("data-state", "live")
    kept = await manager.enqueue(sleeper, 0)
    doomed = await manager.enqueue(sleeper, 0)
    await expect(row(open_page, doomed)).to_have_attribute("data-status", "success")
    await expect(row(open_page, kept)).to_have_attribute("data-status", "success")
    await row(open_page, doomed).click()
    watch.confirm = 1
    await open_page.locator("#detail-delete").click()
    await expect(row(open_page, doomed)).to_have_count(0)
    await expect(open_page.locator("#detail")).to_be_hidden()
    await expect(row(open_page, kept)).to_have_count(1)
    assert len(watch.confirmed) == 1 and "cannot be undone" in watch.confirmed[0]
    assert await manager.history.get(doomed) is None
    # still gone after a reload: it was deleted from the store, not just from the page
    await open_page.reload()
    await expect(open_page.locator("body")).to_have_attribute("data-ready", "true")
    await expect(row(open_page, kept)).to_have_count(1)
    await expect(row(open_page, doomed)).to_have_count(0)

    running = await manager.enqueue(sleeper, 30)  # live tasks offer cancel, not delete
    await expect(row(open_page, running)).to_have_attribute("data-status", "running")
    await row(open_page, running).click()
    await expect(open_page.locator("#detail-cancel")).to_be_visible()
    await expect(open_page.locator("#detail-delete")).to_have_count(0)
    await manager.cancel(running)
    await open_page.context.close()
    watch.check()


async def test_bulk_retry_and_replay_failed(open_page: Page, open_site: Site) -> None:
    manager = open_site.manager
    ids = [await manager.enqueue(gated, f"bulk-{n}") for n in range(3)]
    for n in range(3):
        await open_gate(f"bulk-{n}", succeed=False)
    for task_id in ids:
        await expect(row(open_page, task_id)).to_have_attribute("data-status", "failed")
    for n in range(3):
        outcomes[f"bulk-{n}"] = True
    for task_id in ids[:2]:
        await row(open_page, task_id).locator("input[type=checkbox]").check()
    await expect(open_page.locator("#retry-selected")).to_have_text("Retry selected (2)")
    await open_page.locator("#retry-selected").click()
    for task_id in ids[:2]:
        await expect(row(open_page, task_id)).to_have_attribute("data-status", "success")
    await expect(row(open_page, ids[2])).to_have_attribute("data-status", "failed")

    await open_page.locator('.tab[data-view="failed"]').click()
    await expect(open_page.locator("#replay")).to_be_visible()
    await expect(row(open_page, ids[2])).to_be_visible()
    await open_page.locator("#replay button").click()
    await expect(open_page.locator(".toast").last).to_contain_text("sent to run again")
    await expect(row(open_page, ids[2])).to_have_attribute("data-status", "success")


async def test_filters_and_search(open_page: Page, open_site: Site) -> None:
    manager = open_site.manager
    ok = await manager.enqueue(gated, "filter-ok")
    bad = await manager.enqueue(gated, "filter-bad")
    await open_gate("filter-ok")
    await open_gate("filter-bad", succeed=False)
    slow = await manager.enqueue(sleeper, 0.01)
    await expect(row(open_page, bad)).to_have_attribute("data-status", "failed")
    await expect(row(open_page, slow)).to_have_attribute("data-status", "success")

    await open_page.locator('#filters select[name="status"]').select_option("failed")
    await expect(row(open_page, ok)).to_have_count(0)
    await expect(row(open_page, bad)).to_be_visible()
    assert set(
        await open_page.locator("#tasks tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.status)"
        )
    ) == {"failed"}

    await open_page.locator('#filters select[name="status"]').select_option("")
    await open_page.locator('#filters select[name="func_name"]').select_option("jobs.sleeper")
    await expect(row(open_page, slow)).to_be_visible()
    await expect(row(open_page, ok)).to_have_count(0)

    await open_page.locator('#filters button[type="reset"]').click()
    await open_page.locator('#filters input[name="q"]').fill("gate filter-bad said")
    await expect(row(open_page, bad)).to_be_visible()
    await expect(open_page.locator("#tasks tbody tr")).to_have_count(1)
    assert "q=gate+filter-bad+said" in open_page.url  # the filter survives a reload
    await open_page.reload()
    await expect(open_page.locator("#tasks tbody tr")).to_have_count(1)
    await expect(open_page.locator('#filters input[name="q"]')).to_have_value(
        "gate filter-bad said"
    )


async def test_functions_view_and_theme(open_page: Page, open_site: Site) -> None:
    await open_page.locator('.tab[data-view="functions"]').click()
    table = open_page.locator("#functions")
    await expect(table.locator('tr[data-name="jobs.gated"]')).to_be_visible()
    await expect(table.locator('tr[data-name="jobs.sleeper"] td').nth(1)).to_have_text("async")
    html = open_page.locator("html")
    before = await html.get_attribute("data-theme")
    await open_page.locator("#theme-toggle").click()
    after = "dark" if before == "light" else "light"
    await expect(html).to_have_attribute("data-theme", after)
    await open_page.reload()
    await expect(html).to_have_attribute("data-theme", after)


async def test_html_and_script_payloads_are_shown_as_text(open_page: Page, open_site: Site) -> None:
    task_id = await open_site.manager.enqueue(
        evil, *XSS, note=XSS[2], tags={XSS[0]: XSS[1], "x": XSS[3]}
    )
    target = row(open_page, task_id)
    await expect(target).to_have_attribute("data-status", "failed")
    await expect(target.locator(".error-cell")).to_have_text(f"ValueError: {XSS[0]}{XSS[1]}")
    await expect(target.locator(".func")).to_have_text(EVIL_NAME)
    await expect(target.locator("td").nth(3)).to_have_text(EVIL_QUEUE)
    await target.click()
    panel = open_page.locator("#detail")
    await expect(panel.locator("#detail-error")).to_have_text(f"ValueError: {XSS[0]}{XSS[1]}")
    for payload in XSS:
        await expect(panel.locator(".logs .message").filter(has_text=payload).first).to_be_visible()
    await expect(panel.locator(".chip").first).to_have_text(f"{XSS[0]}={XSS[1]}")
    await expect(panel).to_contain_text("window.__xss=1")  # the arguments, as text
    await open_page.locator('.tab[data-view="functions"]').click()
    await expect(open_page.locator("#functions")).to_contain_text(EVIL_NAME)
    await asyncio.sleep(0.3)  # give any injected handler a chance to fire
    assert await open_page.evaluate("window.__xss") is None
    injected = "#tasks img, #tasks script, #tasks svg, #detail img, #detail script, #detail svg"
    assert await open_page.locator(injected).count() == 0
    assert await open_page.locator("#functions img, select img, option b").count() == 0
    assert [
        url
        for url in await open_page.evaluate(
            "performance.getEntriesByType('resource').map(e => e.name)"
        )
        if url.endswith("/x")
    ] == []


# --------------------------------------------------------------------------- sign-in


async def test_login_flow_and_signed_out_visitor_sees_nothing(
    browser: Browser, auth_site: Site
) -> None:
    task_id = await auth_site.manager.enqueue(sleeper, 0.01)
    page, watch = await new_page(browser, auth_site)
    await page.goto(f"{auth_site.url}/tasks/dashboard")
    await expect(page).to_have_url(f"{auth_site.url}/tasks/login")
    assert task_id not in await page.content()
    api = await page.request.get(f"{auth_site.url}/tasks")
    assert api.status == 401 and task_id not in await api.text()
    events = await page.request.get(f"{auth_site.url}/tasks/events")
    assert events.status == 401

    await page.locator("#username").fill(ADMIN[0])
    await page.locator("#password").fill("wrong password")
    await page.locator("#login-form button").click()
    await expect(page.locator("#login-error")).to_have_text("Wrong username or password.")

    await page.locator("#password").fill(ADMIN[1])
    await page.locator("#login-form button").click()
    await expect(page).to_have_url(f"{auth_site.url}/tasks/dashboard")
    await expect(page.locator("body")).to_have_attribute("data-ready", "true")
    await expect(row(page, task_id)).to_be_visible()
    await expect(page.locator("#user")).to_contain_text("admin")
    cookies = {c["name"]: c for c in await page.context.cookies()}
    assert cookies["taskflow_session"]["httpOnly"] is True
    assert cookies["taskflow_session"]["sameSite"] == "Lax"
    assert cookies["taskflow_csrf"]["sameSite"] == "Strict"

    await page.locator("#logout").click()
    await expect(page).to_have_url(f"{auth_site.url}/tasks/login")
    assert (await page.request.get(f"{auth_site.url}/tasks")).status == 401
    await page.context.close()
    watch.check()


async def test_read_only_user_sees_tasks_but_no_actions(browser: Browser, auth_site: Site) -> None:
    manager = auth_site.manager
    task_id = await manager.enqueue(gated, "viewer-1")
    await open_gate("viewer-1", succeed=False)
    page, watch = await new_page(browser, auth_site)
    await page.goto(f"{auth_site.url}/tasks/login")
    await page.locator("#username").fill(VIEWER[0])
    await page.locator("#password").fill(VIEWER[1])
    await page.locator("#login-form button").click()
    await expect(page.locator("body")).to_have_attribute("data-ready", "true")
    await expect(page.locator("body")).to_have_class("read-only")
    await expect(row(page, task_id)).to_have_attribute("data-status", "failed")
    await row(page, task_id).click()
    await expect(page.locator("#detail-error")).to_be_visible()
    await expect(page.locator("#detail-retry")).to_have_count(0)
    await expect(page.locator("#detail-delete")).to_have_count(0)
    await expect(page.locator("#retry-selected")).to_be_hidden()
    # Even a hand-made request with the page's own CSRF token is refused.
    status = await page.evaluate(
        """async (id) => {
            const s = await (await fetch('session')).json();
            const r = await fetch(id + '/retry', {method: 'POST',
                headers: {'X-CSRF-Token': s.csrf_token}});
            return r.status;
        }""",
        task_id,
    )
    assert status == 403
    await page.context.close()
    watch.errors = [e for e in watch.errors if "status of 403" not in e]
    watch.check()


async def test_no_request_leaves_the_apps_origin(browser: Browser, open_site: Site) -> None:
    task_id = await open_site.manager.enqueue(gated, "origin-1")
    await open_gate("origin-1", succeed=False)
    page, watch = await new_page(browser, open_site)
    await page.goto(f"{open_site.url}/tasks/dashboard")
    await expect(row(page, task_id)).to_have_attribute("data-status", "failed")
    await row(page, task_id).click()
    await expect(page.locator("#detail-stacktrace")).to_be_visible()
    for view in ("failed", "functions", "tasks"):
        await page.locator(f'.tab[data-view="{view}"]').click()
    await page.locator("#theme-toggle").click()
    async with page.expect_download() as download:
        await page.locator("#export").click()
    csv_file = await download.value
    assert csv_file.suggested_filename.endswith(".csv")
    watch.requests.append(csv_file.url)  # downloads do not show up as page requests
    await page.context.close()
    kinds = {url.rsplit("/", 1)[-1].split("?")[0] for url in watch.requests}
    assert {"dashboard", "app.js", "style.css", "events", "rows", "export.csv"} <= kinds
    watch.check()  # every one of them went to the app itself
