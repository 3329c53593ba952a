"""The Alembic migrations: command line and programmatic, on SQLite, PostgreSQL and MariaDB.

Covers a single head, upgrade/downgrade round trips, schema/model parity (``alembic check``
finds nothing), our own version table, foreign tables left alone, and a wheel installed
outside the repository migrating a database by itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from fastapi_taskflow.backends.sql import current_revision, head_revision, migrate
from fastapi_taskflow.backends.sql.dialect import create_engine
from fastapi_taskflow.backends.sql.migrate import alembic_config, script_location
from fastapi_taskflow.backends.sql.tables import TABLE_NAMES, VERSION_TABLE, metadata
from fastapi_taskflow.backends.sql.urls import make_async_url

REPO = Path(__file__).resolve().parents[1]

DATABASES = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mysql", marks=pytest.mark.mysql),
]


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tasks.db'}"
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    sql_engine = create_engine(make_async_url(database_url))
    try:
        yield sql_engine
    finally:
        await sql_engine.dispose()


def alembic(*args: str, url: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run the alembic command line from the repository root with the URL in the env."""
    env = dict(os.environ, TASKFLOW_DATABASE_URL=url)
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


async def table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))


def _check(conn: Connection) -> None:
    command.check(alembic_config(conn))


# --------------------------------------------------------------------------- scripts


def test_a_single_head() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    heads = script.get_heads()
    assert len(heads) == 1
    assert heads[0] == head_revision()


def test_scripts_found_in_the_checkout() -> None:
    assert script_location() == REPO / "migrations"
    assert (script_location() / "env.py").is_file()


def test_the_ini_points_at_the_scripts() -> None:
    text = (REPO / "alembic.ini").read_text()
    assert "script_location = %(here)s/migrations" in text
    assert "TASKFLOW_DATABASE_URL" in text


# --------------------------------------------------------------------------- command line


async def test_cli_upgrade_creates_the_schema_in_our_version_table(
    database_url: str, engine: AsyncEngine
) -> None:
    result = alembic("upgrade", "head", url=database_url)
    assert result.returncode == 0, result.stderr
    names = await table_names(engine)
    assert TABLE_NAMES | {VERSION_TABLE} <= names
    assert "alembic_version" not in names
    assert await current_revision(engine) == head_revision()

    check = alembic("check", url=database_url)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr


async def test_cli_downgrade_and_upgrade_round_trip(database_url: str, engine: AsyncEngine) -> None:
    assert alembic("upgrade", "head", url=database_url).returncode == 0
    down = alembic("downgrade", "base", url=database_url)
    assert down.returncode == 0, down.stderr
    assert not (await table_names(engine)) & TABLE_NAMES
    assert await current_revision(engine) is None
    up = alembic("upgrade", "head", url=database_url)
    assert up.returncode == 0, up.stderr
    assert await table_names(engine) >= TABLE_NAMES
    assert alembic("check", url=database_url).returncode == 0


def test_cli_takes_the_url_as_an_x_argument(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    env = {k: v for k, v in os.environ.items() if k != "TASKFLOW_DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"url={url}", "upgrade", "head"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "x.db").exists()


def test_cli_without_a_url_says_how_to_give_one() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TASKFLOW_DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0
    assert "TASKFLOW_DATABASE_URL" in result.stdout + result.stderr


# --------------------------------------------------------------------------- programmatic


async def test_programmatic_migrate_matches_the_models(engine: AsyncEngine) -> None:
    await migrate(engine)
    await migrate(engine)  # a second run finds nothing to do
    assert await current_revision(engine) == head_revision()
    async with engine.connect() as conn:
        await conn.run_sync(_check)  # raises AutogenerateDiffsDetected on any drift


async def test_foreign_tables_and_the_apps_alembic_version_are_left_alone(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE app_things (id INTEGER PRIMARY KEY)"))
        await conn.execute(
            sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        )
        await conn.execute(sa.text("INSERT INTO alembic_version VALUES ('app_rev_1')"))
    await migrate(engine)
    async with engine.connect() as conn:
        assert await conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == "app_rev_1"
        await conn.run_sync(_check)  # app_things is not ours: not reported
    assert {"app_things", "alembic_version"} <= await table_names(engine)


async def test_every_model_column_exists_with_its_nullability(engine: AsyncEngine) -> None:
    await migrate(engine)

    def columns(conn: Connection) -> dict[str, Any]:
        inspector = sa.inspect(conn)
        return {
            f"{table}.{column['name']}": column
            for table in TABLE_NAMES
            for column in inspector.get_columns(table)
        }

    async with engine.connect() as conn:
        found = await conn.run_sync(columns)
    wanted = {f"{t.name}.{c.name}": c for t in metadata.tables.values() for c in t.columns}
    assert set(found) == set(wanted)
    for name, column in wanted.items():
        assert found[name]["nullable"] == column.nullable, name


@pytest.mark.mysql
async def test_mysql_keeps_microseconds_and_binary_collation(mysql_url: str) -> None:
    # Alembic's type comparison does not look at DATETIME precision or collation.
    await migrate(mysql_url)
    engine = create_engine(make_async_url(mysql_url))
    try:
        async with engine.connect() as conn:
            precision = (
                await conn.execute(
                    sa.text(
                        "SELECT column_name, datetime_precision FROM information_schema.columns"
                        " WHERE table_schema = DATABASE() AND data_type = 'datetime'"
                    )
                )
            ).all()
            collations = (
                await conn.execute(
                    sa.text(
                        "SELECT table_name, table_collation FROM information_schema.tables"
                        " WHERE table_schema = DATABASE() AND table_name LIKE 'taskflow_%'"
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    assert len(precision) == 7  # four in history, one in tags, two in pending
    assert {p for _, p in precision} == {6}
    assert {c for name, c in collations if name in TABLE_NAMES} == {"utf8mb4_bin"}


@pytest.mark.postgres
async def test_postgres_stores_timestamps_with_time_zone(postgres_url: str) -> None:
    await migrate(postgres_url)
    engine = create_engine(make_async_url(postgres_url))
    try:
        async with engine.connect() as conn:
            types = set(
                (
                    await conn.execute(
                        sa.text(
                            "SELECT data_type FROM information_schema.columns"
                            " WHERE table_name LIKE 'taskflow_%' AND column_name IN"
                            " ('created_at', 'start_time', 'end_time', 'updated_at',"
                            " 'lease_until')"
                        )
                    )
                ).scalars()
            )
    finally:
        await engine.dispose()
    assert types == {"timestamp with time zone"}


# --------------------------------------------------------------------------- CLI of the package


def test_package_cli_check_and_migrate(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fastapi_taskflow", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    behind = run("check", "--url", url)
    assert behind.returncode == 1, behind.stderr
    assert "current: none" in behind.stdout and f"head:    {head_revision()}" in behind.stdout
    done = run("migrate", "--url", url)
    assert done.returncode == 0, done.stderr
    current = run("check", "--url", url)
    assert current.returncode == 0 and "up to date" in current.stdout
    bad = run("migrate", "--url", "oracle://x/y")
    assert bad.returncode == 2 and "unsupported database URL scheme" in bad.stderr


# --------------------------------------------------------------------------- the wheel


def _site_packages() -> list[str]:
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    paths.update(p for p in sys.path if p.endswith("site-packages"))
    return sorted(paths)


def _installer() -> list[str]:
    """pip of this interpreter, or uv (nox's uv backend makes venvs without pip)."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("neither pip nor uv is available to build and install a wheel")
    return [uv, "pip"]


@pytest.mark.slow
def test_an_installed_wheel_migrates_without_the_repository(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    installer = _installer()
    with_pip = installer[0] == sys.executable
    if with_pip:
        build_cmd = [*installer, "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)]
    else:
        build_cmd = [installer[0], "build", "--wheel", "-q", "-o", str(wheels), str(REPO)]
    build = subprocess.run(
        build_cmd,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("fastapi_taskflow-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "fastapi_taskflow/_migrations/env.py" in names
    assert "fastapi_taskflow/_migrations/versions/0001_initial.py" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    target = ["--python", str(python)]
    install_cmd = [*installer, *target, "install"] if with_pip else [*installer, "install", *target]
    install = subprocess.run(
        [*install_cmd, "-q", "--no-deps", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    # The dependencies come from this environment, after the venv's own site-packages (so
    # the wheel's copy of fastapi_taskflow wins over any editable install here).
    venv_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(venv_site) / "_outer_env.pth").write_text("\n".join(_site_packages()) + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    db = elsewhere / "tasks.db"
    migrated = subprocess.run(
        [str(python), "-m", "fastapi_taskflow", "migrate", "--url", f"sqlite:///{db}"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    where = subprocess.run(
        [
            str(python),
            "-c",
            "from fastapi_taskflow.backends.sql.migrate import script_location;"
            "print(script_location())",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where) == Path(venv_site) / "fastapi_taskflow" / "_migrations"
    check = subprocess.run(
        [str(python), "-m", "fastapi_taskflow", "check", "--url", f"sqlite:///{db}"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    with contextlib.closing(sqlite3.connect(db)) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert TABLE_NAMES | {VERSION_TABLE} <= names
