"""The SQS fixtures both test suites use (tests/integration and tests/collection import them into
their conftest.py): one moto server per session, started and stopped through scripts/sqs-server,
a boto3 client on it, and a fresh set of queues per test."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

import helpers

SQS_SERVER = helpers.REPO_ROOT / "scripts" / "sqs-server"
SQS_ENV_KEYS = (
    "AWS_ENDPOINT_URL_SQS",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_EC2_METADATA_DISABLED",
)


@dataclass
class SqsServer:
    dir: Path
    endpoint: str
    env: dict[str, str]  # what a module binary needs (the five AWS_* variables)
    default_queues: dict[str, str]  # FLEETPKI_* from sqs.env (the queues scripts/sqs-server made)


def parse_env_file(path: Path) -> dict[str, str]:
    """The `export KEY=VALUE` lines of scripts/sqs-server's sqs.env."""
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line.startswith("export "):
            continue
        key, _, value = line[len("export ") :].partition("=")
        words = shlex.split(value)
        out[key] = words[0] if words else ""
    return out


@pytest.fixture(scope="session")
def sqs_server(tmp_path_factory) -> SqsServer:
    """One moto server for the session, started and stopped through scripts/sqs-server."""
    run_dir = tmp_path_factory.mktemp("sqs")

    def sqs_server_cmd(action: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(SQS_SERVER), action, str(run_dir)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )

    # The stop is in `finally` from the start on: an interrupt (Ctrl-C, SIGTERM) while the server
    # is starting must not leave it behind. `stop` is a no-op when nothing was started.
    try:
        start = sqs_server_cmd("start")
        if start.returncode != 0:
            log_file = run_dir / "sqs.log"
            log = log_file.read_text(errors="replace") if log_file.exists() else ""
            pytest.fail(
                f"scripts/sqs-server start failed (rc {start.returncode}):\n{start.stdout}{start.stderr}"
                f"\nlog:\n{log[-3000:]}",
                pytrace=False,
            )
        values = parse_env_file(run_dir / "sqs.env")
        yield SqsServer(
            dir=run_dir,
            endpoint=values["AWS_ENDPOINT_URL_SQS"],
            env={k: values[k] for k in SQS_ENV_KEYS},
            default_queues={k: v for k, v in values.items() if k.startswith("FLEETPKI_")},
        )
    finally:
        stop = sqs_server_cmd("stop")
        if stop.returncode != 0:
            print(f"scripts/sqs-server stop failed: {stop.stdout}{stop.stderr}")


@pytest.fixture(scope="session")
def sqs(sqs_server):
    """A boto3 SQS client on the moto server, for inspecting queues."""
    return helpers.sqs_admin.make_client(sqs_server.endpoint, sqs_server.env["AWS_REGION"])


@dataclass
class Queues:
    prefix: str  # every queue of this test is named prefix-...
    csr: str
    dlq: str
    shared: str
    reply_prefix: str  # reply_queue_prefix option: per-node queues are reply_prefix + instance id

    def snapshot(self, client) -> dict[str, dict[str, int]]:
        """All of this test's queues (including per-node reply queues) with their counts."""
        return helpers.snapshot_queues(client, self.prefix)

    def all_urls(self, client) -> list[str]:
        """Every queue of this test, per-node reply queues included."""
        return helpers.queues_with_prefix(client, self.prefix)


@pytest.fixture
def queues(sqs) -> Queues:
    """A fresh, uniquely named set of queues per test: tests never see each other's messages."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    urls = helpers.sqs_admin.create_prefixed(sqs, prefix)
    yield Queues(
        prefix=prefix,
        csr=urls["csr_queue_url"],
        dlq=urls["csr_dlq_url"],
        shared=urls["shared_cert_queue_url"],
        reply_prefix=f"{prefix}-reply-",
    )
    # Keep moto small: drop this test's queues (reply queues included).
    for url in helpers.queues_with_prefix(sqs, prefix):
        try:
            sqs.delete_queue(QueueUrl=url)
        except Exception:  # noqa: BLE001 - cleanup only
            pass


# --------------------------------------------------------------------------------------------
# A moto server of one test's own, to kill and restart (the session's is shared)
# --------------------------------------------------------------------------------------------


class OwnMotoServer:
    """moto on a fixed loopback port, started and SIGKILLed by PID, restarted empty on that port."""

    REGION = "us-east-1"

    def __init__(self, run_dir: Path, server_env: dict[str, str] | None = None):
        self.dir = run_dir
        self.server_env = server_env or {}  # e.g. moto's INITIAL_NO_AUTH_ACTION_COUNT
        self.dir.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.env = {
            "AWS_ENDPOINT_URL_SQS": self.endpoint,
            "AWS_REGION": self.REGION,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self) -> None:
        python = helpers.REPO_ROOT / ".venv" / "bin" / "python"
        assert python.is_file(), f"{python} is missing: run scripts/venv first (moto lives in the project's .venv)"
        self.starts += 1
        log = open(self.dir / f"moto-{self.starts}.log", "wb")  # noqa: SIM115 - kept open by the child
        self.proc = subprocess.Popen(
            [str(python), str(helpers.REPO_ROOT / "scripts" / "moto_server.py"), "-H", "127.0.0.1", "-p", str(self.port)],
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, **self.server_env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        up = helpers.sqs_admin.wait_until_up(self.endpoint, timeout=30, pid=self.proc.pid)
        assert up, f"moto did not answer on {self.endpoint}; log: {(self.dir / f'moto-{self.starts}.log').read_text(errors='replace')[-2000:]}"

    def client(self):
        """A boto3 SQS client on this server, for creating and inspecting queues."""
        return helpers.sqs_admin.make_client(self.endpoint, self.REGION)

    def create_queues(self, prefix: str) -> Queues:
        """The CSR queue with its dead-letter queue, and the shared queue, named prefix-...: what
        the operator's template makes (idempotent). Reply queues are the nodes' to create."""
        urls = helpers.sqs_admin.create_prefixed(self.client(), prefix)
        return Queues(
            prefix=prefix,
            csr=urls["csr_queue_url"],
            dlq=urls["csr_dlq_url"],
            shared=urls["shared_cert_queue_url"],
            reply_prefix=f"{prefix}-reply-",
        )

    def kill(self) -> None:
        """SIGKILL: the server loses every queue and message it held."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def own_sqs(tmp_path):
    """A moto server of this test's own (OwnMotoServer), started; stopped by PID at the end."""
    server = OwnMotoServer(tmp_path / "own-sqs")
    try:
        server.start()
        yield server
    finally:
        server.stop()
