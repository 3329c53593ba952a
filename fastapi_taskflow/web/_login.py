"""``/session``, ``/login`` and ``/logout``: who is signed in, signing in and out."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Request, Response

from ._auth import Principal
from ._ratelimit import LoginLimiter
from ._schemas import ErrorOut, LoginIn, SessionOut
from ._security import Identity, Security, check_same_origin

logger = logging.getLogger("fastapi_taskflow")


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def build_login_router(
    security: Security, limiter: LoginLimiter, *, display_func_args: bool
) -> APIRouter:
    router = APIRouter()
    has_login = security.config.login is not None
    path = security.path
    reader = security.reader()

    def session_out(principal: Principal, via: str, csrf_token: str) -> SessionOut:
        return SessionOut(
            user=None if via == "open" else principal.name,
            role=principal.role,
            can_act=principal.can_act,
            auth=via,
            csrf_token=csrf_token,
            display_func_args=display_func_args,
            login_path=f"{path}/login" if has_login else None,
            logout_path=f"{path}/logout" if has_login and via == "session" else None,
        )

    @router.get("/session", response_model=SessionOut, summary="Who is signed in")
    async def session(
        request: Request,
        response: Response,
        identity: Identity = Depends(reader),
    ) -> SessionOut:
        token = security.csrf_token(request, response)
        response.headers["Cache-Control"] = "no-store"
        return session_out(identity.principal, identity.via, token)

    if not has_login:
        return router
    backend = security.config.login
    assert backend is not None

    @router.post(
        "/login",
        response_model=SessionOut,
        responses={401: {"model": ErrorOut}, 429: {"model": ErrorOut}},
        summary="Sign in with a username and password (sets the session cookie)",
    )
    async def login(
        request: Request, response: Response, body: Annotated[LoginIn, Body()]
    ) -> SessionOut:
        check_same_origin(request)
        client = _client(request)
        wait = limiter.retry_after(client, body.username)
        if wait > 0:
            raise HTTPException(
                429,
                f"too many failed sign-ins; try again in {int(wait) + 1} seconds",
                headers={"Retry-After": str(int(wait) + 1)},
            )
        principal = await backend.authenticate(body.username, body.password)
        if principal is None:
            limiter.failed(client, body.username)
            logger.warning("fastapi-taskflow: failed admin sign-in from %s", client)
            raise HTTPException(401, "wrong username or password")
        limiter.succeeded(body.username)
        token = security.start_session(request, response, principal)
        response.headers["Cache-Control"] = "no-store"
        return session_out(principal, "session", token)

    @router.post(
        "/logout",
        status_code=204,
        dependencies=[Depends(security.actor(admin=False))],
        summary="Sign out (clears the session cookie)",
    )
    async def logout(request: Request) -> Response:
        response = Response(status_code=204)
        security.end_session(request, response)
        return response

    return router
