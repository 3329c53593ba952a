"""Developer and CI sessions.

    python3 -m pip install nox && nox -s tests   # the full check (what CI runs)
    nox -s tests -- tests/test_servers_smoke.py  # pytest arguments after --
    nox -s lint | typecheck | demo | bench

The `tests` session installs the real servers it needs (PostgreSQL, MariaDB, Redis,
Chromium) with apt-get when run as root on Debian; see tests/_servers.py.
"""

from __future__ import annotations

import nox

# uv when available (fast), otherwise virtualenv (a nox dependency, so always present and,
# unlike `venv`, independent of Debian's separate python3-venv package).
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = False

PYTHON = None  # the interpreter that runs nox (3.11+)
LINT_PATHS = ["fastapi_taskflow", "tests"]


def _install_servers(session: nox.Session) -> None:
    # apt-get installs whatever is missing (as root); a no-op when all is present.
    session.run("python", "tests/_servers.py", "install")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Lint, type-check, then run the whole test suite against real servers."""
    session.install("-e", ".[all,test]")
    _install_servers(session)
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)
    session.run("mypy")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package (configured in pyproject.toml)."""
    session.install("-e", ".[all,test]")
    session.run("mypy", *session.posargs)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Serve docs/examples/demo.py on http://127.0.0.1:8000 (dashboard at /tasks)."""
    session.install("-e", ".", "uvicorn>=0.29")
    session.run(
        "python",
        "-m",
        "uvicorn",
        "demo:app",
        "--app-dir",
        "docs/examples",
        "--host",
        "127.0.0.1",
        "--port",
        "8000",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks against every backend (real servers)."""
    session.install("-e", ".[all,test]")
    _install_servers(session)
    session.run("python", "tests/benchmarks/run_all.py", *session.posargs)
