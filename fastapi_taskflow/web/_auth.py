"""Who may use the admin: principals, roles, password backends and what ``auth=`` accepts."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable

from .._errors import ConfigurationError

Role: TypeAlias = Literal["admin", "read"]
Credentials: TypeAlias = tuple[str, str] | tuple[str, str, str]
ROLES: frozenset[str] = frozenset({"admin", "read"})


@dataclass(frozen=True, kw_only=True)
class Principal:
    """An authenticated user of the admin. ``role="read"`` can look but not act."""

    name: str
    role: Role = "admin"

    @property
    def can_act(self) -> bool:
        """True when this principal may retry, cancel and replay tasks."""
        return self.role == "admin"


@runtime_checkable
class AuthBackend(Protocol):
    """Checks a username and password from the login form.

    Return a :class:`Principal` (its ``role`` decides what the user may do) or ``None``
    when the credentials are wrong. Compare secrets with :func:`hmac.compare_digest` or a
    password-hashing library, never with ``==``.
    """

    async def authenticate(self, username: str, password: str) -> Principal | None: ...


def check_role(role: str, where: str) -> Role:
    if role not in ROLES:
        raise ConfigurationError(f"{where}: role must be 'admin' or 'read', got {role!r}")
    return role  # type: ignore[return-value]


class PasswordAuth:
    """Users and passwords held in memory, e.g. ``PasswordAuth([("ann", "pw"), ("bob", "pw",
    "read")])``.

    Each entry is ``(username, password)`` (an admin) or ``(username, password, role)``.
    Every check compares against all users with :func:`hmac.compare_digest`, so the time it
    takes does not tell which usernames exist.
    """

    def __init__(self, users: Iterable[Credentials]) -> None:
        self._users: list[tuple[bytes, bytes, Role]] = []
        seen: set[str] = set()
        for entry in users:
            if not isinstance(entry, tuple) or len(entry) not in (2, 3):
                raise ConfigurationError(
                    f"auth users must be (username, password) or (username, password, role) "
                    f"tuples, got {entry!r}"
                )
            name, password = entry[0], entry[1]
            role = check_role(entry[2] if len(entry) == 3 else "admin", f"auth user {name!r}")
            if not isinstance(name, str) or not name or not isinstance(password, str):
                raise ConfigurationError(
                    "auth usernames must be non-empty strings and passwords strings"
                )
            if not password:
                raise ConfigurationError(f"auth user {name!r} has an empty password")
            if name in seen:
                raise ConfigurationError(f"auth user {name!r} is listed twice")
            seen.add(name)
            self._users.append((name.encode(), password.encode(), role))
        if not self._users:
            raise ConfigurationError("auth needs at least one (username, password) pair")

    async def authenticate(self, username: str, password: str) -> Principal | None:
        given_name, given_password = username.encode(), password.encode()
        found: Principal | None = None
        for name, secret, role in self._users:
            name_ok = hmac.compare_digest(name, given_name)
            password_ok = hmac.compare_digest(secret, given_password)
            if name_ok and password_ok:
                found = Principal(name=username, role=role)
        return found


def _is_credential_list(auth: object) -> bool:
    if isinstance(auth, tuple) and len(auth) in (2, 3) and all(isinstance(x, str) for x in auth):
        return False
    return isinstance(auth, list | tuple) and all(isinstance(x, tuple) for x in auth)


# What TaskAdmin(auth=...) accepts.
AuthSpec: TypeAlias = Credentials | Sequence[Credentials] | AuthBackend | Callable[..., Any] | None


@dataclass(frozen=True, kw_only=True)
class AuthConfig:
    """``auth=`` and ``api_keys=`` of :class:`TaskAdmin`, sorted out."""

    login: AuthBackend | None = None
    dependency: Callable[..., Any] | None = None
    api_keys: Mapping[str, Role] | None = None

    @property
    def enabled(self) -> bool:
        return self.login is not None or self.dependency is not None or bool(self.api_keys)


def auth_config(auth: object, api_keys: Mapping[str, str] | None) -> AuthConfig:
    """Turn what a user passed as ``auth=`` into a login backend or an app dependency."""
    keys: dict[str, Role] = {}
    for key, role in (api_keys or {}).items():
        if not isinstance(key, str) or len(key) < 16:
            raise ConfigurationError(
                "api_keys must be strings of at least 16 characters; generate one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        keys[key] = check_role(role, "api_keys")
    if auth is None:
        return AuthConfig(api_keys=keys)
    if isinstance(auth, tuple) and len(auth) in (2, 3) and all(isinstance(x, str) for x in auth):
        return AuthConfig(login=PasswordAuth([auth]), api_keys=keys)
    if _is_credential_list(auth):
        return AuthConfig(login=PasswordAuth(list(auth)), api_keys=keys)  # type: ignore[call-overload]
    if isinstance(auth, AuthBackend):
        return AuthConfig(login=auth, api_keys=keys)
    if callable(auth):
        return AuthConfig(dependency=auth, api_keys=keys)
    raise ConfigurationError(
        "auth must be a (username, password) tuple, a list of them, an object with an async "
        f"authenticate(username, password) method, or a FastAPI dependency; got {auth!r}"
    )


def principal_from(value: object) -> Principal | None:
    """What an app's auth dependency returned, as a principal (``None``: not signed in)."""
    if value is None or value is False:
        return None
    if isinstance(value, Principal):
        return value
    if isinstance(value, str) and value in ROLES:
        return Principal(name=value, role=value)  # type: ignore[arg-type]
    name = getattr(value, "username", None) or getattr(value, "name", None) or "user"
    role = getattr(value, "role", "admin")
    # An unknown role gets the least power.
    return Principal(name=str(name), role="admin" if role == "admin" else "read")
