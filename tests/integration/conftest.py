"""Fixtures for the integration tests: a moto SQS server, per-test queues, a CA, simulated nodes.

Run with the project's venv:  .venv/bin/python -m pytest -q tests/integration
The module binaries must be built first (`scripts/build`; scripts/test does both).
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import helpers

# The SQS fixtures shared with tests/collection.
from sqs_fixtures import Queues, own_sqs, queues, sqs, sqs_server  # noqa: F401  (fixtures used by name)


def pytest_configure(config):
    """Turn SIGTERM (a CI timeout, `kill`) into KeyboardInterrupt, so pytest still runs the fixture
    teardowns and the moto server is stopped instead of being left behind."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


# --------------------------------------------------------------------------------------------
# SQS
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqs_env(sqs_server) -> dict[str, str]:
    return dict(sqs_server.env)



# --------------------------------------------------------------------------------------------
# Running modules
# --------------------------------------------------------------------------------------------


@pytest.fixture
def module_env(sqs_env) -> dict[str, str]:
    """The environment the binaries run with: no AWS settings of the developer, the moto ones."""
    return helpers.module_env(sqs_env)


@pytest.fixture
def run_module(module_env, tmp_path):
    """run_module(name, args, check=False, diff=False, env=None) -> (result, CompletedProcess).

    env defaults to the moto environment; args files are kept under the test's tmp_path/args.
    """

    def run(name: str, args: dict[str, Any], check: bool = False, diff: bool = False, env=None, timeout=None):
        return helpers.run_module(
            name,
            args,
            check=check,
            diff=diff,
            env=module_env if env is None else env,
            timeout=timeout or helpers.MODULE_TIMEOUT,
            args_dir=tmp_path / "args",
        )

    return run


# --------------------------------------------------------------------------------------------
# The CA
# --------------------------------------------------------------------------------------------


@dataclass
class CA:
    dir: Path
    root_cert_path: Path
    root_privatekey_path: Path
    intermediate_cert_path: Path
    intermediate_privatekey_path: Path
    chain_path: Path
    policy_path: Path
    init_result: dict[str, Any] = field(default_factory=dict)

    def init_args(self) -> dict[str, Any]:
        return {
            "root_cert_path": str(self.root_cert_path),
            "root_privatekey_path": str(self.root_privatekey_path),
            "intermediate_cert_path": str(self.intermediate_cert_path),
            "intermediate_privatekey_path": str(self.intermediate_privatekey_path),
            "chain_path": str(self.chain_path),
        }


def ca_paths(directory: Path) -> CA:
    return CA(
        dir=directory,
        root_cert_path=directory / "root.pem",
        root_privatekey_path=directory / "root.key",
        intermediate_cert_path=directory / "intermediate.pem",
        intermediate_privatekey_path=directory / "intermediate.key",
        chain_path=directory / "chain.pem",
        policy_path=directory / "policy.json",
    )


@pytest.fixture(scope="session")
def ca(tmp_path_factory) -> CA:
    """A CA (root + intermediate) made once per session by mtls_ca_init, plus a permissive policy."""
    directory = tmp_path_factory.mktemp("ca")
    ca = ca_paths(directory)
    result, proc = helpers.run_module(
        "mtls_ca_init", ca.init_args(), env=helpers.module_env(), args_dir=directory / "args"
    )
    helpers.assert_ok(result, proc)
    for p in (ca.root_cert_path, ca.intermediate_cert_path, ca.intermediate_privatekey_path, ca.chain_path):
        assert p.is_file(), f"mtls_ca_init did not write {p}:\n{helpers.describe(result, proc)}"
    helpers.write_policy(ca.policy_path)
    ca.init_result = result
    return ca


# --------------------------------------------------------------------------------------------
# Simulated nodes and the worker
# --------------------------------------------------------------------------------------------


@dataclass
class Node:
    """A simulated fleet node: its own instance id, install directory and SANs."""

    n: int
    instance_id: str
    path: Path
    sans: list[str]
    queues: Queues
    ca: CA
    run_module: Any

    def submit_args(self, **overrides: Any) -> dict[str, Any]:
        args = {
            "instance_id": self.instance_id,
            "path": str(self.path),
            "csr_queue_url": self.queues.csr,
            "subject_alt_name": list(self.sans),
            "reply_queue_prefix": self.queues.reply_prefix,
        }
        args.update(overrides)
        return args

    def fetch_args(self, **overrides: Any) -> dict[str, Any]:
        args = {
            "instance_id": self.instance_id,
            "path": str(self.path),
            "ca_path": str(self.ca.root_cert_path),
            "reply_queue_prefix": self.queues.reply_prefix,
            "wait": True,
            "timeout": 30,
        }
        args.update(overrides)
        return args

    def submit(self, check: bool = False, diff: bool = False, **overrides: Any):
        return self.run_module("mtls_csr_submit", self.submit_args(**overrides), check=check, diff=diff)

    def fetch(self, check: bool = False, diff: bool = False, **overrides: Any):
        return self.run_module("mtls_cert_fetch", self.fetch_args(**overrides), check=check, diff=diff)

    # The install layout (docs/interfaces.md).
    @property
    def current(self) -> Path:
        return self.path / "current"

    @property
    def pending_key(self) -> Path:
        return self.path / "pending" / "privkey.pem"

    @property
    def pending_request(self) -> dict[str, Any]:
        return json.loads((self.path / "pending" / "request.json").read_text(encoding="utf-8"))


@pytest.fixture
def make_node(tmp_path, queues, ca, run_module):
    """make_node(n) -> Node with instance id i-0000000000000000n, its own dir, DNS:node<n>.fleet.internal + IP:127.0.0.1."""

    def make(n: int, sans: list[str] | None = None) -> Node:
        return Node(
            n=n,
            instance_id=f"i-{n:017x}",
            path=tmp_path / f"node{n}",
            sans=sans if sans is not None else [f"DNS:node{n}.fleet.internal", "IP:127.0.0.1"],
            queues=queues,
            ca=ca,
            run_module=run_module,
        )

    return make


@pytest.fixture
def sign_args(queues, ca, tmp_path):
    """sign_args(**overrides): mtls_ca_sign options for this test's queues and the session CA,
    with this test's own issuance record."""

    def build(**overrides: Any) -> dict[str, Any]:
        args = {
            "audit_log_path": str(tmp_path / "issuance.jsonl"),
            "csr_queue_url": queues.csr,
            "ownca_path": str(ca.intermediate_cert_path),
            "ownca_privatekey_path": str(ca.intermediate_privatekey_path),
            "ca_chain_path": str(ca.chain_path),
            "policy_path": str(ca.policy_path),
            "reply_queue_prefix": queues.reply_prefix,
            "shared_cert_queue_url": queues.shared,
            "wait_time_seconds": 1,
        }
        args.update(overrides)
        return args

    return build


@pytest.fixture
def sign(run_module, sign_args):
    """sign(check=False, **overrides) -> (result, proc): one mtls_ca_sign drain."""

    def run(check: bool = False, diff: bool = False, **overrides: Any):
        return run_module("mtls_ca_sign", sign_args(**overrides), check=check, diff=diff)

    return run
