"""Run every ``bench_*.py`` in this folder, one after another, each in its own process.

    python tests/benchmarks/run_all.py                     # all benchmarks, default settings
    python tests/benchmarks/run_all.py --quick             # extra arguments go to every bench
    python tests/benchmarks/run_all.py --only core flush   # bench_core.py and bench_flush.py
    python tests/benchmarks/run_all.py --skip dashboard --backend memory sqlite
    nox -s bench -- --quick                                # the same through nox

Arguments this runner does not know are passed to every benchmark unchanged, so every
``bench_*.py`` should accept (and may ignore) the shared ones: ``--quick``, ``--backend NAME...``,
``--postgres-url``, ``--mysql-url``, ``--redis-url``. Output is streamed as it comes; the exit
status is non-zero when any benchmark fails (or none is found).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover(only: list[str], skip: list[str]) -> list[Path]:
    """The benchmark scripts, by name (``core`` = ``bench_core.py``), sorted."""
    scripts = sorted(HERE.glob("bench_*.py"))
    names = {path.stem.removeprefix("bench_"): path for path in scripts}
    unknown = [name for name in [*only, *skip] if name not in names]
    if unknown:
        raise SystemExit(
            f"run_all: no benchmark named {', '.join(unknown)}; available: {', '.join(names)}"
        )
    return [path for name, path in names.items() if (not only or name in only) and name not in skip]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description="Run every bench_*.py; unknown arguments are passed to each benchmark.",
        allow_abbrev=False,
    )
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME", help="run only these")
    parser.add_argument("--skip", nargs="+", default=[], metavar="NAME", help="leave these out")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    opts, passthrough = parser.parse_known_args(argv)
    scripts = discover(opts.only, opts.skip)
    if opts.list:
        for path in scripts:
            print(path.name)
        return 0
    if not scripts:
        print("run_all: no benchmark to run", file=sys.stderr)
        return 1
    outcomes: list[tuple[str, int, float]] = []
    for path in scripts:
        command = [sys.executable, str(path), *passthrough]
        print(f"\n{'=' * 100}\n$ {' '.join(command)}\n{'=' * 100}", flush=True)
        started = time.monotonic()
        try:
            code = subprocess.call(command, stdin=subprocess.DEVNULL)
        except KeyboardInterrupt:
            print(f"\nrun_all: interrupted during {path.name}", file=sys.stderr)
            return 130
        outcomes.append((path.name, code, time.monotonic() - started))
    print(f"\n{'=' * 100}\nBenchmark summary")
    for name, code, seconds in outcomes:
        state = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"  {name:<28} {state:<20} {seconds:7.1f}s")
    failed = [name for name, code, _ in outcomes if code != 0]
    if failed:
        print(f"run_all: {len(failed)} benchmark(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
