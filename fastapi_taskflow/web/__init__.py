"""The admin surface: the JSON API, the live dashboard and their authentication."""

from ._admin import TaskAdmin
from ._auth import AuthBackend, PasswordAuth, Principal

__all__ = ["AuthBackend", "PasswordAuth", "Principal", "TaskAdmin"]
