"""Start and stop real application processes (uvicorn on loopback) for multi-instance tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

APPS = Path(__file__).resolve().parent / "apps"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Instance:
    """One uvicorn process serving ``tests/apps/multi_app.py``."""

    def __init__(self, url: str, instance_id: str, runs: Path, **env: str) -> None:
        self.url = url
        self.instance_id = instance_id
        self.runs = runs
        self.env = env
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = runs.parent / f"{instance_id}.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Instance:
        env = dict(os.environ)
        env.update(
            TASKFLOW_URL=self.url,
            TASKFLOW_INSTANCE=self.instance_id,
            TASKFLOW_RUNS=str(self.runs),
            PYTHONPATH=str(ROOT),
            **self.env,
        )
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "multi_app:app", "--app-dir", str(APPS),
                 "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.instance_id} exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base}/health", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.instance_id} did not start:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as after an OOM kill or a lost node."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        """SIGTERM: uvicorn runs the app's graceful shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def run_counts(runs: Path) -> dict[str, int]:
    """How many times each task id started running, from the runs file."""
    counts: dict[str, int] = {}
    if runs.exists():
        for line in runs.read_text().splitlines():
            task_id = line.split(" ", 1)[0]
            counts[task_id] = counts.get(task_id, 0) + 1
    return counts
