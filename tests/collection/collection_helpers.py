"""Shared helpers of the collection tests (tests/collection): run ansible commands, read a PLAY RECAP.

Fixtures are in conftest.py; this module is imported by both (a plain module, so that the
integration tests' conftest never shadows it).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "integration"))
import helpers  # noqa: E402  (tests/integration/helpers.py: module env, SQS and openssl helpers)

SQS_SERVER = REPO_ROOT / "scripts" / "sqs-server"
BUILD_COLLECTION = REPO_ROOT / "scripts" / "build-collection"
# The ansible-* commands of the venv that runs these tests (pytest runs with .venv/bin/python).
VENV_BIN = Path(sys.executable).parent
MODULES = helpers.MODULES
ROLES = ("ca_setup", "ca_worker", "mtls_client")
PLAYBOOK_TIMEOUT = 600  # seconds for one ansible-playbook run
SQS_ENV_KEYS = ("AWS_ENDPOINT_URL_SQS", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_EC2_METADATA_DISABLED")


def tool(name: str) -> str:
    path = VENV_BIN / name
    if path.is_file():
        return str(path)
    pytest.fail(f"{name} not found next to {sys.executable}: run the tests with .venv/bin/python", pytrace=False)


# --------------------------------------------------------------------------------------------
# Running ansible commands
# --------------------------------------------------------------------------------------------


def run(cmd: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = PLAYBOOK_TIMEOUT) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            cwd=str(cwd) if cwd else None,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{shlex.join(cmd)} did not finish within {timeout}s\n{exc.stdout}\n{exc.stderr}") from None


def describe_run(proc: subprocess.CompletedProcess, tail: int = 6000) -> str:
    return (
        f"$ {shlex.join(proc.args)}\nrc {proc.returncode}\n"
        f"stdout:\n{proc.stdout[-tail:]}\nstderr:\n{proc.stderr[-tail:]}"
    )


def assert_run_ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, describe_run(proc)
    return proc


RECAP_LINE = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)\s+ignored=(?P<ignored>\d+)\s*$"
)


def play_recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP of an ansible-playbook run: host -> {ok, changed, unreachable, failed, ...}."""
    lines = output.splitlines()
    try:
        start = max(i for i, line in enumerate(lines) if line.startswith("PLAY RECAP"))
    except ValueError:
        raise AssertionError(f"no PLAY RECAP in the output:\n{output[-4000:]}") from None
    recap: dict[str, dict[str, int]] = {}
    for line in lines[start + 1 :]:
        m = RECAP_LINE.match(line.strip())
        if m:
            recap[m["host"]] = {k: int(v) for k, v in m.groupdict().items() if k != "host"}
    assert recap, f"PLAY RECAP without host lines:\n{output[-4000:]}"
    return recap


def openssl_verify_crl(cert, root, intermediate, crl) -> subprocess.CompletedProcess:
    """`openssl verify -crl_check` of a leaf against root + intermediate and the intermediate's CRL."""
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(root), "-untrusted", str(intermediate), "-crl_check", "-CRLfile", str(crl), str(cert)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
