"""The admin surface: the JSON API (and, later, the dashboard)."""

from ._admin import TaskAdmin

__all__ = ["TaskAdmin"]
