"""Real database servers for the test suite (PostgreSQL, MariaDB, Redis) and Chromium.

Standard library only, so it also runs before the test dependencies are installed:

    python tests/_servers.py install   # apt-get what is missing (as root; no-op otherwise)
    python tests/_servers.py check     # start and stop every server once, print timings

Each server class starts a private instance in a temporary directory on a free port of
127.0.0.1 and stops exactly the process it started (never by name, never by polling with
``kill -0``). See /work/shared/INFRA.md for the measured facts behind the flags.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

__all__ = [
    "CHROMIUM_ARGS",
    "MariaDBServer",
    "PostgresServer",
    "RedisServer",
    "ServerError",
    "chromium_executable",
    "ensure_installed",
    "postgres_bindir",
]

# Flags for launching Debian's Chromium headless through Playwright
# (``executable_path=chromium_executable(), args=CHROMIUM_ARGS``).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

COMPONENTS = ("postgres", "mysql", "redis", "browser")


class ServerError(RuntimeError):
    """A test server could not be installed, started or used."""


# --------------------------------------------------------------------------- installing


def postgres_bindir() -> Path | None:
    """Directory holding initdb/pg_ctl (newest installed major version), or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _mariadbd() -> str | None:
    for name in ("mariadbd", "mysqld"):
        path = shutil.which(name) or next(
            (p for p in (f"/usr/sbin/{name}", f"/usr/libexec/{name}") if os.access(p, os.X_OK)),
            None,
        )
        if path:
            return path
    return None


def _redis_server() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )


def chromium_executable() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def _missing(components: tuple[str, ...]) -> dict[str, list[str]]:
    """Map of apt package -> extra apt-get flags, for what is missing."""
    missing: dict[str, list[str]] = {}
    if "postgres" in components and postgres_bindir() is None:
        missing["postgresql"] = ["--no-install-recommends"]
    if "mysql" in components and (
        _mariadbd() is None
        or shutil.which("mariadb-install-db") is None
        or shutil.which("mariadb") is None
    ):
        missing["mariadb-server"] = ["--no-install-recommends"]
    if "redis" in components and _redis_server() is None:
        missing["redis-server"] = ["--no-install-recommends"]
    if "browser" in components and chromium_executable() is None:
        missing["chromium"] = []
    return missing


_apt_updated = False


def _apt(*args: str) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print("+ apt-get", " ".join(args), file=sys.stderr, flush=True)
    subprocess.run(
        ["apt-get", "-o", "DPkg::Lock::Timeout=300", *args],
        check=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def ensure_installed(components: tuple[str, ...] | list[str] = COMPONENTS) -> None:
    """Install (with apt-get, as root) whichever server binaries are missing.

    A no-op when everything is present. When not root and something is missing, raises
    ServerError naming the packages to install.
    """
    global _apt_updated
    components = tuple(components)
    unknown = set(components) - set(COMPONENTS)
    if unknown:
        raise ValueError(f"unknown components {sorted(unknown)}; choose from {COMPONENTS}")
    missing = _missing(components)
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServerError(
            "The test suite needs real servers that are not installed: "
            + ", ".join(sorted(missing))
            + ". Install them, e.g. `sudo apt-get install -y "
            + " ".join(sorted(missing))
            + "`, or run as root on Debian so `python tests/_servers.py install` can do it"
            " (set TASKFLOW_TEST_NO_SERVERS=1 to skip server tests)."
        )
    if not _apt_updated:
        _apt("update", "-q")
        _apt_updated = True
    plain = sorted(p for p, flags in missing.items() if flags)
    if plain:
        _apt("install", "-y", "-q", "--no-install-recommends", *plain)
    full = sorted(p for p, flags in missing.items() if not flags)
    if full:
        _apt("install", "-y", "-q", *full)
    still = _missing(components)
    if still:
        raise ServerError(f"apt-get finished but these are still missing: {sorted(still)}")


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _check_name(name: str) -> str:
    if not name or not all(c.isalnum() or c == "_" for c in name) or len(name) > 63:
        raise ValueError(f"unsafe database name {name!r} (letters, digits and _ only)")
    return name


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Server:
    """Common bookkeeping: temp dir, port, atexit safety net."""

    name = "server"

    def __init__(self) -> None:
        self.port: int = 0
        self.tmpdir: Path | None = None
        self.started = False

    def _make_tmpdir(self) -> Path:
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"taskflow-{self.name}-"))
        return self.tmpdir

    def _remove_tmpdir(self) -> None:
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> _Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _ProcessServer(_Server):
    """A server we run as a direct child process (mariadbd, redis-server)."""

    def __init__(self) -> None:
        super().__init__()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def _spawn(self, argv: list[str], log_path: Path) -> None:
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal does not reach it directly
        )
        atexit.register(self.stop)

    def _terminate(self, timeout: float = 30.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            else:
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        self._terminate()
        self.started = False
        self._remove_tmpdir()
        atexit.unregister(self.stop)


# --------------------------------------------------------------------------- PostgreSQL


class PostgresServer(_Server):
    """A throw-away PostgreSQL cluster (trust auth, superuser ``postgres``)."""

    name = "postgres"
    user = "postgres"

    def __init__(self) -> None:
        super().__init__()
        self.bindir: Path | None = None
        self.datadir: Path | None = None
        self.sockdir: Path | None = None

    def _as_owner(self) -> list[str]:
        # initdb refuses to run as root: run the cluster as the `postgres` OS user.
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as_owner(), *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self) -> None:
        if self.started:
            return
        ensure_installed(("postgres",))
        self.bindir = postgres_bindir()
        assert self.bindir is not None
        tmp = self._make_tmpdir()
        self.datadir = tmp / "data"
        self.sockdir = tmp / "sock"
        self.sockdir.mkdir()
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                self.stop()
                raise ServerError(
                    "PostgreSQL refuses to run as root and there is no `postgres` OS user;"
                    " install the `postgresql` package (it creates one)"
                ) from None
            shutil.chown(tmp, "postgres", "postgres")
            shutil.chown(self.sockdir, "postgres", "postgres")
        try:
            res = self._run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.datadir),
                    "-U",
                    self.user,
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ]
            )
            if res.returncode != 0:
                raise ServerError(f"initdb failed:\n{res.stdout}\n{res.stderr}")
            last_err = ""
            for _ in range(3):  # the free port can be taken in between; try another
                self.port = free_port()
                opts = (
                    f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockdir}"
                    " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                    " -c max_connections=200"
                )
                res = self._run(
                    [
                        str(self.bindir / "pg_ctl"),
                        "-D",
                        str(self.datadir),
                        "-l",
                        str(tmp / "postgres.log"),
                        "-o",
                        opts,
                        "-w",
                        "-t",
                        "30",
                        "start",
                    ]
                )
                if res.returncode == 0:
                    break
                last_err = f"{res.stdout}\n{res.stderr}\n{_tail(tmp / 'postgres.log')}"
            else:
                raise ServerError(f"PostgreSQL did not start:\n{last_err}")
            self.started = True
            atexit.register(self.stop)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if (
            self.bindir is not None
            and self.datadir is not None
            and (self.datadir / "postmaster.pid").exists()
        ):
            self._run(
                [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"]
            )
        self.started = False
        self._remove_tmpdir()
        atexit.unregister(self.stop)

    # connection info

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def url(self, database: str = "postgres", driver: str = "") -> str:
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.user}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through psql over TCP; returns unaligned tuples-only output."""
        assert self.bindir is not None
        res = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                database,
                "-c",
                sql,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if res.returncode != 0:
            raise ServerError(f"psql failed for {sql!r}: {res.stderr.strip()}")
        return res.stdout

    def create_database(self, name: str) -> None:
        self.psql(f'CREATE DATABASE "{_check_name(name)}"')

    def drop_database(self, name: str) -> None:
        # FORCE ends sessions a test left open (PostgreSQL 13+).
        self.psql(f'DROP DATABASE IF EXISTS "{_check_name(name)}" WITH (FORCE)')


# --------------------------------------------------------------------------- MariaDB


class MariaDBServer(_ProcessServer):
    """A throw-away MariaDB server; user ``root`` without a password over TCP."""

    name = "mariadb"
    user = "root"

    def start(self) -> None:
        if self.started:
            return
        ensure_installed(("mysql",))
        mariadbd = _mariadbd()
        assert mariadbd is not None
        tmp = self._make_tmpdir()
        datadir = tmp / "data"
        try:
            res = subprocess.run(
                [
                    "mariadb-install-db",
                    "--no-defaults",
                    "--user=root",
                    f"--datadir={datadir}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
            )
            if res.returncode != 0:
                raise ServerError(f"mariadb-install-db failed:\n{res.stdout}\n{res.stderr}")
            last_err = ""
            for _ in range(3):
                self.port = free_port()
                self._spawn(
                    [
                        mariadbd,
                        "--no-defaults",
                        "--user=root",
                        f"--datadir={datadir}",
                        f"--port={self.port}",
                        "--bind-address=127.0.0.1",
                        f"--socket={tmp / 'mysqld.sock'}",
                        f"--pid-file={tmp / 'mysqld.pid'}",
                        f"--log-error={tmp / 'error.log'}",
                        "--character-set-server=utf8mb4",
                        "--collation-server=utf8mb4_unicode_ci",
                        "--skip-name-resolve",
                        "--innodb-flush-log-at-trx-commit=0",
                        "--innodb-doublewrite=0",
                        "--sync-binlog=0",
                        "--max-connections=300",
                    ],
                    tmp / "stdout.log",
                )
                if self._wait_ready(20.0):
                    break
                last_err = _tail(tmp / "error.log")
                self._terminate()
            else:
                raise ServerError(f"MariaDB did not start:\n{last_err}")
            self.started = True
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                if self.sql("SELECT 1", timeout=5).strip() == "1":
                    return True
            except (ServerError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.05)
        return False

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def url(self, database: str = "", driver: str = "") -> str:
        scheme = f"mysql+{driver}" if driver else "mysql"
        return f"{scheme}://{self.user}@127.0.0.1:{self.port}/{database}?charset=utf8mb4"

    def sql(self, sql: str, database: str = "", timeout: float = 60) -> str:
        """Run SQL through the mariadb client over TCP; returns tab-separated rows."""
        argv = [
            "mariadb",
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-P",
            str(self.port),
            "-u",
            self.user,
            "--batch",
            "--skip-column-names",
            "-e",
            sql,
        ]
        if database:
            argv.append(database)
        res = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
        if res.returncode != 0:
            raise ServerError(f"mariadb failed for {sql!r}: {res.stderr.strip()}")
        return res.stdout

    def create_database(self, name: str) -> None:
        self.sql(
            f"CREATE DATABASE `{_check_name(name)}`"
            " CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        )

    def drop_database(self, name: str) -> None:
        name = _check_name(name)
        # End sessions a test left open on this database, so DROP does not wait on their
        # metadata locks.
        ids = self.sql(
            f"SELECT id FROM information_schema.processlist WHERE db = '{name}'"
            " AND id <> CONNECTION_ID()"
        ).split()
        for conn_id in ids:
            with contextlib.suppress(ServerError):
                self.sql(f"KILL {int(conn_id)}")
        self.sql(f"DROP DATABASE IF EXISTS `{name}`")


# --------------------------------------------------------------------------- Redis


class RedisServer(_ProcessServer):
    """A throw-away Redis server without persistence."""

    name = "redis"

    def start(self) -> None:
        if self.started:
            return
        ensure_installed(("redis",))
        redis_server = _redis_server()
        assert redis_server is not None
        tmp = self._make_tmpdir()
        try:
            last_err = ""
            for _ in range(3):
                self.port = free_port()
                self._spawn(
                    [
                        redis_server,
                        "--port",
                        str(self.port),
                        "--bind",
                        "127.0.0.1",
                        "--dir",
                        str(tmp),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--daemonize",
                        "no",
                    ],
                    tmp / "redis.log",
                )
                if self._wait_ready(10.0):
                    break
                last_err = _tail(tmp / "redis.log")
                self._terminate()
            else:
                raise ServerError(f"Redis did not start:\n{last_err}")
            self.started = True
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                if self.command("PING") == "PONG":
                    return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def command(self, *args: str) -> Any:
        """Send one command over a raw socket; returns a simple reply (str/int/None)."""
        payload = f"*{len(args)}\r\n".encode()
        for arg in args:
            data = arg.encode()
            payload += b"$%d\r\n%s\r\n" % (len(data), data)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(payload)
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    raise OSError("connection closed by redis")
                reply += chunk
        kind, body = reply[:1], reply[1:-2].decode()
        if kind == b"+":
            return body
        if kind == b":":
            return int(body)
        if kind == b"-":
            raise ServerError(f"redis error: {body}")
        return body

    def flushall(self) -> None:
        if self.command("FLUSHALL") != "OK":
            raise ServerError("FLUSHALL failed")


# --------------------------------------------------------------------------- CLI


def _check() -> None:
    for cls in (PostgresServer, MariaDBServer, RedisServer):
        t0 = time.monotonic()
        server = cls()
        server.start()
        t1 = time.monotonic()
        print(f"{cls.__name__}: started on port {server.port} in {t1 - t0:.2f}s", flush=True)
        if isinstance(server, (PostgresServer, MariaDBServer)):
            server.create_database("smoke_check")
            server.drop_database("smoke_check")
        else:
            server.flushall()
        server.stop()
        print(f"{cls.__name__}: stopped in {time.monotonic() - t1:.2f}s", flush=True)
    print(f"chromium: {chromium_executable()}")


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "install"
    if cmd == "install":
        ensure_installed(argv[2:] or COMPONENTS)
        print("servers installed:", ", ".join(argv[2:] or COMPONENTS))
        return 0
    if cmd == "check":
        ensure_installed()
        _check()
        return 0
    print("usage: python tests/_servers.py [install [component...] | check]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
