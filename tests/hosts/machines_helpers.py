"""What the tests on booted machines share: running scripts/machines, commands in a machine, and
polling for a condition."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "machines"
RUN_DIR = REPO_ROOT / ".run" / "machines" / "run"
VENV_BIN = REPO_ROOT / ".venv" / "bin"
SSH_TIMEOUT = 60


def machines(*args: str, timeout: float = SSH_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run scripts/machines ARGS; a failure fails the test with its output."""
    proc = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    if check and proc.returncode != 0:
        pytest.fail(
            f"scripts/machines {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}",
            pytrace=False,
        )
    return proc


def run_in(
    name: str, command: str, stdin: str | None = None, check: bool = True, timeout: float = SSH_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a shell command line in machine NAME as root, over SSH (scripts/machines ssh)."""
    proc = subprocess.run(
        [str(SCRIPT), "ssh", name, command], input=stdin or "", capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT
    )
    if check and proc.returncode != 0:
        pytest.fail(f"in {name}: {command!r} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}", pytrace=False)
    return proc


def wait_for(what: str, condition, timeout: float = 30.0, interval: float = 0.2):
    """Poll CONDITION until it returns something true, or fail after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what} (last: {result!r})", pytrace=False)
        time.sleep(interval)  # the pace of the polling, not a wait standing in for the condition
