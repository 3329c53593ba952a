"""Checking and preparing task arguments for storage."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._errors import UnstorableArgumentError

SCALARS = frozenset({str, int, bool, type(None)})  # taken as they are


def _is_json(value: Any) -> bool:
    if type(value) in SCALARS or isinstance(value, str | bool | int):
        return True
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, list | tuple):
        return all(_is_json(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


def check_storable(func_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse, naming the argument, anything that would not survive a JSON round trip."""
    for index, value in enumerate(args):
        if not _is_json(value):
            raise UnstorableArgumentError(
                f"task {func_name!r}: positional argument {index} is a "
                f"{type(value).__name__}, which cannot be stored for requeue. Pass JSON "
                f"values (str, int, float, bool, None, lists and dicts of them), e.g. an id "
                f"instead of an object, or mark the task persist=False."
            )
    for name, value in kwargs.items():
        if not _is_json(value):
            raise UnstorableArgumentError(
                f"task {func_name!r}: argument {name!r} is a {type(value).__name__}, which "
                f"cannot be stored for requeue. Pass JSON values (str, int, float, bool, "
                f"None, lists and dicts of them), e.g. an id instead of an object, or mark "
                f"the task persist=False."
            )


def to_json(value: Any) -> Any:
    """A JSON-safe stand-in for display and history; non-JSON values become their repr."""
    if _is_json(value):
        return list(value) if isinstance(value, tuple) else value
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    try:
        return {"__repr__": repr(value)}
    except Exception:
        return {"__repr__": f"<unrepresentable {type(value).__name__}>"}


def all_json(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    return _is_json(args) and _is_json(kwargs)


def snapshot(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[bool, list[Any], dict[str, Any]]:
    """The arguments as stored in a record, and whether they are stored exactly.

    Plain scalars (the common case) are taken as they are without further checks.
    """
    scalars = SCALARS
    exact = True
    stored_args: list[Any] = []
    for value in args:
        if type(value) not in scalars:
            exact = exact and _is_json(value)
            value = to_json(value)
        stored_args.append(value)
    stored_kwargs: dict[str, Any] = {}
    for name, value in kwargs.items():
        if type(value) not in scalars:
            exact = exact and _is_json(value)
            value = to_json(value)
        stored_kwargs[name] = value
    return exact, stored_args, stored_kwargs


__all__ = ["SCALARS", "all_json", "check_storable", "snapshot", "to_json"]
