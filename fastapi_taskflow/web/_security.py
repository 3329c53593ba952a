"""Request guards: signed session cookies, API keys, the CSRF token and roles.

Sessions are cookies signed with itsdangerous (HMAC-SHA1 over a timestamped payload); they
carry the user name and role, nothing secret. State-changing requests made with a session
must carry ``X-CSRF-Token``: an HMAC of a random nonce kept in its own HttpOnly cookie, which
the page reads from ``GET {path}/session`` (a cross-site page can neither read that response
nor set a custom header on a cross-site request). API-key requests need no token: browsers
never attach an API key on their own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Depends, HTTPException, Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from ._auth import ROLES, AuthConfig, Principal, principal_from

SESSION_COOKIE = "taskflow_session"
CSRF_COOKIE = "taskflow_csrf"
CSRF_HEADER = "X-CSRF-Token"
Via = Literal["key", "session", "app", "open"]


@dataclass(frozen=True, kw_only=True)
class Identity:
    """Who made a request and how they proved it."""

    principal: Principal
    via: Via


@dataclass(frozen=True, kw_only=True)
class CookiePolicy:
    secure: bool | None  # None: Secure when the request came over https
    same_site: Literal["lax", "strict"]
    max_age_s: int


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


class Security:
    """Resolves the :class:`Identity` of a request and guards routes with it."""

    def __init__(
        self, config: AuthConfig, *, secret_key: bytes, cookies: CookiePolicy, path: str
    ) -> None:
        self.config = config
        self.cookies = cookies
        self.path = path
        self._sessions = URLSafeTimedSerializer(secret_key, salt="fastapi-taskflow.session")
        self._csrf_key = hmac.new(secret_key, b"fastapi-taskflow.csrf", hashlib.sha256).digest()
        self._keys = [(_digest(k), role) for k, role in (config.api_keys or {}).items()]
        self.current = self._current_dependency()

    # ------------------------------------------------------------------ identity

    def _current_dependency(self) -> Callable[..., Awaitable[Identity | None]]:
        app_dependency = self.config.dependency
        if app_dependency is None:

            async def current(request: Request) -> Identity | None:
                return self._identify(request)

            return current

        async def current_with_app(
            request: Request, app_user: Any = Depends(app_dependency)
        ) -> Identity | None:
            found = self._identify(request)
            if found is not None:
                return found
            principal = principal_from(app_user)
            return Identity(principal=principal, via="app") if principal else None

        return current_with_app

    def _identify(self, request: Request) -> Identity | None:
        key = self._api_key(request)
        if key is not None:
            return key
        if self.config.login is not None:
            principal = self.read_session(request.cookies.get(SESSION_COOKIE))
            if principal is not None:
                return Identity(principal=principal, via="session")
        if not self.config.enabled:
            return Identity(principal=Principal(name="anonymous", role="admin"), via="open")
        return None

    def _api_key(self, request: Request) -> Identity | None:
        if not self._keys:
            return None
        given = request.headers.get("x-api-key")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if given is None and scheme.lower() == "bearer":
            given = token.strip()
        if not given or len(given) > 512:
            return None
        wanted = _digest(given)
        role = None
        for digest, key_role in self._keys:
            if hmac.compare_digest(digest, wanted):
                role = key_role
        return Identity(principal=Principal(name="api-key", role=role), via="key") if role else None

    # ------------------------------------------------------------------ sessions

    def read_session(self, cookie: str | None) -> Principal | None:
        if not cookie or len(cookie) > 4096:
            return None
        try:
            data = self._sessions.loads(cookie, max_age=self.cookies.max_age_s)
        except BadSignature:
            return None
        if not isinstance(data, dict):
            return None
        name, role = data.get("u"), data.get("r")
        if not isinstance(name, str) or role not in ROLES:
            return None
        return Principal(name=name, role=role)

    def _cookie_args(self, request: Request) -> dict[str, Any]:
        secure = self.cookies.secure
        return {
            "path": request.scope.get("root_path", "") + self.path,
            "secure": request.url.scheme == "https" if secure is None else secure,
            "httponly": True,
        }

    def start_session(self, request: Request, response: Response, principal: Principal) -> str:
        """Set the session cookie and a fresh CSRF nonce; returns the new CSRF token."""
        value = self._sessions.dumps({"u": principal.name, "r": principal.role})
        response.set_cookie(
            SESSION_COOKIE,
            value,
            max_age=self.cookies.max_age_s,
            samesite=self.cookies.same_site,
            **self._cookie_args(request),
        )
        return self._set_csrf_nonce(request, response)

    def end_session(self, request: Request, response: Response) -> None:
        for name in (SESSION_COOKIE, CSRF_COOKIE):
            response.delete_cookie(name, samesite="strict", **self._cookie_args(request))

    # ------------------------------------------------------------------ CSRF

    def _token_for(self, nonce: str) -> str:
        return hmac.new(self._csrf_key, nonce.encode(), hashlib.sha256).hexdigest()

    def _set_csrf_nonce(self, request: Request, response: Response) -> str:
        nonce = secrets.token_urlsafe(32)
        response.set_cookie(
            CSRF_COOKIE,
            nonce,
            max_age=self.cookies.max_age_s,
            samesite="strict",
            **self._cookie_args(request),
        )
        return self._token_for(nonce)

    def csrf_token(self, request: Request, response: Response) -> str:
        """The CSRF token for this browser, setting its nonce cookie when missing."""
        nonce = request.cookies.get(CSRF_COOKIE)
        if nonce is None or not 20 <= len(nonce) <= 100:
            return self._set_csrf_nonce(request, response)
        return self._token_for(nonce)

    def csrf_ok(self, request: Request) -> bool:
        nonce = request.cookies.get(CSRF_COOKIE)
        given = request.headers.get(CSRF_HEADER)
        if not nonce or not given or len(nonce) > 100 or len(given) > 200:
            return False
        return hmac.compare_digest(given.encode(), self._token_for(nonce).encode())

    # ------------------------------------------------------------------ guards

    def unauthorized(self) -> HTTPException:
        ways = []
        if self.config.login is not None:
            ways.append(f"sign in at {self.path}/login")
        if self.config.dependency is not None:
            ways.append("sign in to the application")
        if self._keys:
            ways.append("send 'Authorization: Bearer <api key>'")
        return HTTPException(
            401,
            f"authentication required: {' or '.join(ways)}",
            headers={"WWW-Authenticate": 'Bearer realm="fastapi-taskflow"'},
        )

    def reader(self) -> Callable[..., Awaitable[Identity]]:
        """A dependency: any signed-in user (401 otherwise)."""
        current = self.current

        async def require_reader(identity: Identity | None = Depends(current)) -> Identity:
            if identity is None:
                raise self.unauthorized()
            return identity

        return require_reader

    def actor(self, *, admin: bool = True) -> Callable[..., Awaitable[Identity]]:
        """A dependency for state-changing routes: an admin (unless ``admin=False``), a
        same-origin request and, for cookie-based sessions, a valid CSRF token."""
        reader = self.reader()

        async def require_actor(request: Request, identity: Identity = Depends(reader)) -> Identity:
            if admin and not identity.principal.can_act:
                raise HTTPException(
                    403, f"user {identity.principal.name!r} is read-only and cannot change tasks"
                )
            check_same_origin(request)
            if identity.via in ("session", "app") and not self.csrf_ok(request):
                raise HTTPException(
                    403,
                    f"missing or invalid CSRF token: send the {CSRF_HEADER} header with the "
                    "token from GET {path}/session".replace("{path}", self.path),
                )
            return identity

        return require_actor


def check_same_origin(request: Request) -> None:
    """Refuse a state-changing request that a browser marks as coming from another site."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise HTTPException(403, f"cross-site request refused (Sec-Fetch-Site: {site})")
