"""Bulk writes that skip per-row SQLAlchemy processing.

SQLAlchemy's ``executemany`` converts every parameter of every row in Python, which costs
more than the database's own work for large batches. A :class:`BulkStatement` compiles a
Core statement once for the connected dialect, checks its parameter order, and is then run
with parameter tuples that are already what the driver expects (see ``records.py``).

On MySQL/MariaDB through aiomysql (a pure-Python driver) the rows are written as literals
instead: the driver's ``executemany`` escapes every value through a generic converter, one
Python call chain per value, which costs more than the rest of a history write together.
Here each string becomes a hexadecimal literal with a character-set introducer
(``_utf8mb4 0x…``, two C calls per value, and no escaping rules to get right whatever the
server's SQL mode), and the rows go in multi-row ``INSERT`` statements of bounded size.

Where the server has ``JSON_TABLE`` (MariaDB 10.6, MySQL 8.0.4) a batch goes as one JSON
array of rows inside one such literal instead (:class:`JsonTableInsert`).

On PostgreSQL (asyncpg) a batch goes as one JSON document (:class:`JsonInsert`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from pydantic_core import to_json
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from ..._errors import BackendError
from .tables import UTCDateTime

T = TypeVar("T")

JSON_BATCH = 5_000  # rows per JSON document
ROWS_PER_EXECUTE = 20_000
LITERAL_STATEMENT_BYTES = 1_000_000  # aiomysql's own bound for a multi-row INSERT
JSON_TABLE_ROWS = 1_000  # rows per JSON_TABLE document at most


class JsonInsert:
    """PostgreSQL: a batch as one JSON array of objects, made rows by the server.

    ``json_populate_recordset`` turns each object into a row of the table by field name:
    the parameter is one string that pydantic-core serialises in Rust (for history, each
    whole record, nested documents included), so no per-value work is left in Python or
    in the driver, and the server runs one statement per batch instead of one per row.
    """

    def __init__(
        self, table: sa.Table, dialect: Dialect, columns: Sequence[str], *, update: bool
    ) -> None:
        quote = dialect.identifier_preparer.quote
        names = ", ".join(quote(c) for c in columns)
        self.columns = tuple(columns)
        self.sql = (
            f"INSERT INTO {quote(table.name)} ({names}) SELECT {names} "
            f"FROM json_populate_recordset(NULL::{quote(table.name)}, $1::json)"
        )
        if update:
            keys = [c.name for c in table.primary_key.columns]
            changed = [quote(c) for c in columns if c not in keys]
            changes = ", ".join(f"{c} = EXCLUDED.{c}" for c in changed)
            self.sql += (
                f" ON CONFLICT ({', '.join(quote(k) for k in keys)}) DO UPDATE SET {changes}"
            )

    def documents(self, rows: Sequence[tuple[Any, ...]]) -> list[str]:
        """``rows`` (values in column order) as the JSON parameters, a batch each."""
        columns = self.columns
        return [
            to_json(
                [dict(zip(columns, row, strict=True)) for row in rows[start : start + JSON_BATCH]]
            ).decode()
            for start in range(0, len(rows), JSON_BATCH)
        ]

    async def execute(self, conn: AsyncConnection, documents: Sequence[str]) -> None:
        """Insert the rows of each document (from :meth:`documents` or the like)."""
        for document in documents:
            await conn.exec_driver_sql(self.sql, (document,))


def json_documents(
    items: list[T], dump: Callable[[list[T]], bytes], limit: int
) -> Iterator[tuple[list[T], bytes]]:
    """``items`` as JSON documents of at most ``limit`` bytes with the items they hold, in
    order: a chunk whose document is larger is halved; an item larger on its own comes
    alone (what to do with it is the caller's choice)."""
    document = dump(items)
    if len(document) > limit and len(items) > 1:
        half = len(items) // 2
        yield from json_documents(items[:half], dump, limit)
        yield from json_documents(items[half:], dump, limit)
    else:
        yield items, document


def has_json_table(dialect: Dialect) -> bool:
    """Whether a MySQL/MariaDB server has ``JSON_TABLE`` (MariaDB 10.6, MySQL 8.0.4)."""
    if dialect.name not in ("mysql", "mariadb"):
        return False
    version = tuple(v for v in (dialect.server_version_info or ()) if isinstance(v, int))
    return version >= ((10, 6) if getattr(dialect, "is_mariadb", False) else (8, 0, 4))


def _json_table_type(column_type: sa.types.TypeEngine[Any]) -> str:
    if isinstance(column_type, UTCDateTime | sa.DateTime):
        return "DATETIME(6)"  # (the rows carry UTC text)
    if isinstance(column_type, sa.Float):
        return "DOUBLE"
    if isinstance(column_type, sa.Integer):
        return "BIGINT"
    if isinstance(column_type, sa.Boolean):
        return "BOOLEAN"
    return "LONGTEXT"  # strings and JSON text: the table's own column checks the length


class JsonTableInsert:
    """MySQL/MariaDB with ``JSON_TABLE``: a batch of rows as one JSON array (one call of
    pydantic-core), sent as one hexadecimal literal and made rows by the server, instead of
    a literal per value. A row too large for one statement goes with parameters through
    ``fallback``."""

    def __init__(
        self, table: sa.Table, columns: Sequence[str], fallback: BulkStatement, *, update: bool
    ) -> None:
        quoted = {name: f"`{name}`" for name in columns}  # ("key" is a reserved word)
        names = ", ".join(quoted.values())
        shapes = ", ".join(
            f"{quoted[name]} {_json_table_type(table.c[name].type)} PATH '$[{index}]'"
            for index, name in enumerate(columns)
        )
        self._head = f"INSERT INTO `{table.name}` ({names}) SELECT {names} FROM JSON_TABLE("
        self._tail = f", '$[*]' COLUMNS ({shapes})) AS j"
        if update:
            keys = {c.name for c in table.primary_key.columns}
            changes = ", ".join(f"{quoted[c]} = j.{quoted[c]}" for c in columns if c not in keys)
            self._tail += f" ON DUPLICATE KEY UPDATE {changes}"
        self._fallback = fallback

    def writer(
        self, rows: Sequence[tuple[Any, ...]]
    ) -> Callable[[AsyncConnection], Awaitable[None]]:
        """The write of ``rows`` (values in column order, timestamps as UTC text), its
        statements built now."""
        statements: list[str] = []
        oversized: list[tuple[Any, ...]] = []
        limit = LITERAL_STATEMENT_BYTES // 2  # (hex doubles the document)
        for start in range(0, len(rows), JSON_TABLE_ROWS):
            batch = list(rows[start : start + JSON_TABLE_ROWS])
            for chunk, document in json_documents(batch, to_json, limit):
                if len(document) > limit:  # one row alone: it goes with parameters
                    oversized.extend(chunk)
                else:
                    statements.append(self._head + "_utf8mb4 0x" + document.hex() + self._tail)
        return functools.partial(self._run, statements=statements, oversized=oversized)

    async def _run(
        self, conn: AsyncConnection, statements: list[str], oversized: list[tuple[Any, ...]]
    ) -> None:
        for sql in statements:
            await conn.exec_driver_sql(sql)
        for row in oversized:
            await conn.exec_driver_sql(self._fallback.sql, [row])


class BulkStatement:
    """``statement`` compiled for ``dialect``, taking positional ``columns`` in order."""

    def __init__(self, statement: sa.Insert, dialect: Dialect, columns: Sequence[str]) -> None:
        compiled = statement.compile(dialect=dialect)
        order = list(compiled.positiontup or ())
        if order != list(columns):
            raise BackendError(
                f"bulk statement parameters {order} do not match the columns {list(columns)}"
            )
        self.sql = compiled.string
        self._literal: tuple[str, str] | None = None
        if dialect.name in ("mysql", "mariadb") and dialect.driver == "aiomysql":
            self._literal = _split_values(self.sql, len(order))

    def writer(
        self, rows: Sequence[tuple[Any, ...]]
    ) -> Callable[[AsyncConnection], Awaitable[None]]:
        """The write of ``rows``, prepared now: on MySQL/MariaDB the statements are built
        here, so the row tuples are not kept alive (and walked by the garbage collector)
        while the write waits for its connection and the server."""
        if self._literal is not None:
            statements, oversized = literal_statements(*self._literal, rows)
            return functools.partial(self._literals, statements=statements, oversized=oversized)
        return functools.partial(self._executemany, rows=rows)

    async def _literals(
        self, conn: AsyncConnection, statements: list[str], oversized: list[tuple[Any, ...]]
    ) -> None:
        for sql in statements:
            await conn.exec_driver_sql(sql)
        for row in oversized:  # (hex doubles a text: such a row goes escaped, alone)
            await conn.exec_driver_sql(self.sql, [row])

    async def _executemany(self, conn: AsyncConnection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Run the statement once per row on ``conn``, in batches of bounded size."""
        for start in range(0, len(rows), ROWS_PER_EXECUTE):
            await conn.exec_driver_sql(self.sql, list(rows[start : start + ROWS_PER_EXECUTE]))


def _split_values(sql: str, count: int) -> tuple[str, str] | None:
    """The text before and after the one ``(%s, …)`` row of a compiled MySQL ``INSERT``."""
    row = "(" + ", ".join(["%s"] * count) + ")"
    if sql.count(row) != 1 or sql.count("%") != count:
        return None  # not the shape expected: keep the driver's executemany
    before, after = sql.split(row)
    return before, after


def literal(value: Any) -> str:
    """``value`` as a MySQL/MariaDB SQL literal (strings as ``_utf8mb4`` hex literals)."""
    kind = type(value)
    if kind is str:
        return "_utf8mb4 0x" + value.encode().hex() if value else "''"
    if value is None:
        return "NULL"
    if kind is int or kind is bool:
        return str(int(value))
    if kind is float:
        if not math.isfinite(value):
            raise BackendError(f"cannot store the non-finite number {value!r}")
        return repr(value)
    if kind is datetime:  # naive UTC (timestamps are normally given as text already)
        return "'" + str(value.isoformat(" ", "microseconds"))[:26] + "'"
    raise BackendError(f"no SQL literal for a {kind.__name__} value")


def literal_statements(
    before: str, after: str, rows: Sequence[tuple[Any, ...]]
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Multi-row ``before (…), (…) after`` statements of about a megabyte at most, and the
    rows too large to go in one (to be sent with parameters instead)."""
    statements: list[str] = []
    oversized: list[tuple[Any, ...]] = []
    chunk: list[str] = []
    size = 0
    for row in rows:
        text = "(" + ",".join([literal(value) for value in row]) + ")"
        if len(text) > LITERAL_STATEMENT_BYTES:
            oversized.append(row)
            continue
        if chunk and size + len(text) > LITERAL_STATEMENT_BYTES:
            statements.append(before + ",".join(chunk) + after)
            chunk, size = [], 0
        chunk.append(text)
        size += len(text) + 1
    if chunk:
        statements.append(before + ",".join(chunk) + after)
    return statements, oversized


def joined_updates(
    table: str, key: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """MySQL/MariaDB: set ``columns`` of many rows in one statement per megabyte or so,
    ``UPDATE table JOIN (SELECT … UNION ALL SELECT …) ON key``, values as literals. Each of
    ``rows`` is ``(key, *columns)``; keys not in the table are ignored. Also returns the rows
    too large to go this way (to be updated with parameters instead).

    The driver's ``executemany`` of an ``UPDATE`` is one round trip per row.
    """
    names = (key, *columns)
    head = f"UPDATE {table} AS t JOIN ("
    tail = f") AS u ON t.{key} = u.{key} SET " + ", ".join(f"t.{c} = u.{c}" for c in columns)
    statements: list[str] = []
    oversized: list[tuple[Any, ...]] = []
    parts: list[str] = []
    size = 0
    for row in rows:
        values = [literal(value) for value in row]
        if sum(map(len, values)) > LITERAL_STATEMENT_BYTES:
            oversized.append(row)
            continue
        if parts and size > LITERAL_STATEMENT_BYTES:
            statements.append(head + " UNION ALL ".join(parts) + tail)
            parts, size = [], 0
        if not parts:  # the first SELECT names the columns
            values = [f"{value} AS {name}" for value, name in zip(values, names, strict=True)]
        text = "SELECT " + ", ".join(values)
        parts.append(text)
        size += len(text) + 11
    if parts:
        statements.append(head + " UNION ALL ".join(parts) + tail)
    return statements, oversized
