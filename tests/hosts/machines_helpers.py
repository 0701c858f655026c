"""What the tests on booted machines share: running scripts/machines and commands in a machine.
Polling for a condition is tests/integration/helpers.py's wait_for, imported from here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "integration"))
from helpers import wait_for  # noqa: E402,F401  (tests/integration/helpers.py)

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
