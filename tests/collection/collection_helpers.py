"""Shared helpers of the collection tests (tests/collection): run ansible commands, read a PLAY RECAP.

Fixtures are in conftest.py; this module is imported by both (a plain module, so that the
integration tests' conftest never shadows it).
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "integration"))
import helpers  # noqa: E402  (tests/integration/helpers.py: module env, SQS and openssl helpers)
from helpers import base_env  # noqa: E402,F401  (the environment of every ansible command of the tests)
from sqs_fixtures import OwnMotoServer, Queues  # noqa: E402,F401  (tests/integration/sqs_fixtures.py)

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


# --------------------------------------------------------------------------------------------
# A simulated fleet: demo/run's inventory shape
# --------------------------------------------------------------------------------------------


@dataclass
class Fleet:
    dir: Path
    inventory: Path
    nodes: dict[str, dict[str, Any]]  # host -> {instance_id, path, sans}
    root_ca: Path  # fleetpki_root_ca_file: fetched by ca_setup, pinned on the nodes
    ca_dir: Path
    offline_root_dir: Path
    queues: Queues
    env: dict[str, str]
    runs: list[subprocess.CompletedProcess] = field(default_factory=list)

    def marker(self, host: str) -> Path:
        """Written by the reload handler (a command) only when a new certificate was installed."""
        return self.dir / "nodes" / f"{host}.reloaded"

    def site_command(self, *args: str) -> list[str]:
        """ansible-playbook -i inventory fleetpki.mtls.site [args], by the installed collection's FQCN."""
        return [tool("ansible-playbook"), "-i", str(self.inventory), "--forks", str(len(self.nodes) + 2), "fleetpki.mtls.site", *args]

    def site(self, *args: str) -> subprocess.CompletedProcess:
        """Runs site_command(args) to its end; its output is kept as site-N.log in the fleet's directory."""
        proc = run(self.site_command(*args), env=self.env, cwd=self.dir)
        (self.dir / f"site-{len(self.runs) + 1}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
        self.runs.append(proc)
        return proc


def yaml_quote(value: str) -> str:
    import json

    return json.dumps(value)  # JSON strings are YAML strings


def write_fleet(base: Path, n: int, queues: Queues, env: dict[str, str]) -> Fleet:
    """An offline root host, a CA host and n fleet nodes under `base`, all local connection,
    written like demo/run's inventory, on `queues`; `env` is the ansible commands' environment."""
    import grp
    import pwd

    (base / "nodes").mkdir(parents=True)
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    q = yaml_quote
    lines = [
        "# Written by tests/collection (demo/run's inventory shape). Every host runs on this machine.",
        "all:",
        "  vars:",
        "    ansible_connection: local",
        '    ansible_python_interpreter: "{{ ansible_playbook_python }}"',
        "    ca_setup_root_host: offline_root",
        f"    ca_setup_root_dir: {q(str(base / 'offline-root'))}",
        f"    ca_setup_dir: {q(str(base / 'ca'))}",
        f"    ca_setup_owner: {q(user)}",
        f"    ca_setup_group: {q(group)}",
        "    ca_setup_organization_name: fleetpki tests",
        f"    ca_worker_ca_dir: {q(str(base / 'ca'))}",
        f"    ca_worker_owner: {q(user)}",
        f"    ca_worker_group: {q(group)}",
        f"    ca_worker_csr_queue_url: {q(queues.csr)}",
        f"    ca_worker_reply_queue_prefix: {q(queues.reply_prefix)}",
        "    ca_worker_identity_proof: enrollment_secret",
        f"    mtls_client_csr_queue_url: {q(queues.csr)}",
        f"    mtls_client_reply_queue_prefix: {q(queues.reply_prefix)}",
        f"    fleetpki_root_ca_file: {q(str(base / 'root-ca.pem'))}",
        "    mtls_client_fetch_timeout: 60",
        "    mtls_client_reload: command",
        f"    mtls_client_reload_command: {q('touch ' + str(base / 'nodes') + '/{{ inventory_hostname }}.reloaded')}",
        "  hosts:",
        "    offline_root:",
        "  children:",
        "    ca:",
        "      hosts:",
        "        ca1:",
        "    fleet:",
        "      hosts:",
    ]
    nodes: dict[str, dict[str, Any]] = {}
    for i in range(1, n + 1):
        host = f"node{i}"
        spec = {
            "instance_id": f"i-{i:017d}",
            "path": base / "nodes" / host,
            "sans": [f"DNS:{host}.fleet.internal", "IP:127.0.0.1"],
        }
        nodes[host] = spec
        lines += [
            f"        {host}:",
            f"          mtls_client_instance_id: {q(spec['instance_id'])}",
            f"          mtls_client_enrollment_secret: {q(secrets.token_hex(32))}",
            f"          mtls_client_path: {q(str(spec['path']))}",
            "          mtls_client_subject_alt_name:",
            *[f"            - {q(s)}" for s in spec["sans"]],
        ]
    inventory = base / "inventory.yml"
    inventory.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Fleet(
        dir=base,
        inventory=inventory,
        nodes=nodes,
        root_ca=base / "root-ca.pem",
        ca_dir=base / "ca",
        offline_root_dir=base / "offline-root",
        queues=queues,
        env=dict(env),
    )

