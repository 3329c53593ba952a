"""Command line: manage the database schema of fastapi-taskflow.

    python -m fastapi_taskflow migrate --url postgresql://user:pass@host/db [--revision head]
    python -m fastapi_taskflow check --url sqlite:///tasks.db

``--url`` defaults to the ``TASKFLOW_DATABASE_URL`` environment variable. ``check`` prints
the database's revision and the library's, and exits 1 when the database is behind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from ._errors import TaskflowError

URL_ENV = "TASKFLOW_DATABASE_URL"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fastapi_taskflow",
        description="Manage the database tables of fastapi-taskflow.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    url_help = f"database URL, e.g. postgresql://user:pass@host/db (default: ${URL_ENV})"

    migrate = commands.add_parser("migrate", help="upgrade the tables to the newest schema")
    migrate.add_argument("--url", default=os.environ.get(URL_ENV), help=url_help)
    migrate.add_argument("--revision", default="head", help="target revision (default: head)")

    check = commands.add_parser("check", help="compare the database's schema with the library")
    check.add_argument("--url", default=os.environ.get(URL_ENV), help=url_help)
    return parser


async def _migrate(url: str, revision: str) -> int:
    from .backends.sql.migrate import migrate

    await migrate(url, revision=revision)
    print(f"fastapi-taskflow: database upgraded to {revision}")
    return 0


async def _check(url: str) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from .backends.sql.dialect import create_engine
    from .backends.sql.migrate import current_revision, head_revision
    from .backends.sql.transaction import translate
    from .backends.sql.urls import make_async_url, require_driver

    async_url = make_async_url(url)
    require_driver(async_url)
    engine = create_engine(async_url)
    try:
        current = await current_revision(engine)
    except (SQLAlchemyError, OSError) as exc:
        raise translate(exc, "reading the schema revision", engine) from exc
    finally:
        await engine.dispose()
    head = head_revision()
    print(f"current: {current or 'none'}")
    print(f"head:    {head}")
    if current == head:
        print("fastapi-taskflow: the database is up to date")
        return 0
    print("fastapi-taskflow: the database is behind; run `python -m fastapi_taskflow migrate`")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fastapi_taskflow`` and the ``fastapi-taskflow`` script."""
    args = _parser().parse_args(argv)
    if not args.url:
        print(f"error: pass --url URL or set {URL_ENV}", file=sys.stderr)
        return 2
    try:
        if args.command == "migrate":
            return asyncio.run(_migrate(args.url, args.revision))
        return asyncio.run(_check(args.url))
    except TaskflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
