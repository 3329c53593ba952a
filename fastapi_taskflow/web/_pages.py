"""The dashboard and login pages, their static files, and the headers that lock them down.

The pages are plain files in ``static/`` (shipped in the wheel). They hold no inline script
or style, so they run under a strict Content-Security-Policy; Trusted Types are enforced
too, so the scripts cannot write HTML strings into the page even by mistake.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from ._security import Identity, Security

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# What the login page needs; they reveal nothing about tasks.
PUBLIC_ASSETS = frozenset({"style.css", "theme.js", "login.js", "favicon.svg"})
AssetName = Annotated[str, Path(max_length=64, pattern=r"^[a-z0-9-]+\.(js|css|svg)$")]


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every file in ``static/``, read once."""
    folder = resources.files(__package__) / "static"
    assets = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in MEDIA_TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            assets[entry.name] = Asset(body, MEDIA_TYPES[suffix], etag)
    return assets


def _serve(asset: Asset | None, request: Request) -> Response:
    if asset is None or asset.media_type.startswith("text/html"):
        return PlainTextResponse("not found", status_code=404)
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def _page(asset: Asset) -> HTMLResponse:
    return HTMLResponse(asset.body, headers=PAGE_HEADERS)


def build_pages_router(security: Security, assets: dict[str, Asset]) -> APIRouter:
    """``/dashboard`` and its assets (signed-in users only), ``/login`` and the few files
    the login page needs (public)."""
    router = APIRouter(include_in_schema=False)
    current = security.current
    reader = security.reader()
    has_login = security.config.login is not None

    @router.get("/dashboard", response_class=HTMLResponse)
    async def dashboard(identity: Identity | None = Depends(current)) -> Response:
        if identity is None:
            if has_login:
                return RedirectResponse("login", status_code=303, headers=PAGE_HEADERS)
            return PlainTextResponse(
                security.unauthorized().detail, status_code=401, headers=PAGE_HEADERS
            )
        return _page(assets["dashboard.html"])

    @router.get("/assets/{name}", dependencies=[Depends(reader)])
    async def asset(name: AssetName, request: Request) -> Response:
        return _serve(assets.get(name), request)

    if not has_login:
        return router

    @router.get("/login", response_class=HTMLResponse)
    async def login_page(identity: Identity | None = Depends(current)) -> Response:
        if identity is not None and identity.via == "session":
            return RedirectResponse("dashboard", status_code=303, headers=PAGE_HEADERS)
        return _page(assets["login.html"])

    @router.get("/login/{name}")
    async def login_asset(name: AssetName, request: Request) -> Response:
        return _serve(assets.get(name) if name in PUBLIC_ASSETS else None, request)

    return router
