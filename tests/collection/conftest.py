"""Fixtures for the collection tests: the built tarball, installed into an empty collections path,
used through ansible-doc and ansible-playbook against a local moto SQS server.

Run with the project's venv:  .venv/bin/python -m pytest -q tests/collection
The tarball: FLEETPKI_COLLECTION_TARBALL (scripts/test sets it after building once), else
`scripts/build-collection --no-cargo` is run once per session, which needs the module binaries
built already in target/release (`cargo build --release --locked`; scripts/test does it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from collection_helpers import (
    BUILD_COLLECTION,
    MODULES,
    VENV_BIN,
    assert_run_ok,
    describe_run,
    helpers,
    run,
    tool,
)

# The SQS fixtures shared with tests/integration (collection_helpers puts it on sys.path).
from sqs_fixtures import Queues, queues, sqs, sqs_server  # noqa: F401  (fixtures used by name)


def pytest_configure(config):
    """SIGTERM (a CI timeout, `kill`) becomes KeyboardInterrupt, so the moto server is still stopped."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


# --------------------------------------------------------------------------------------------
# The collection: tarball, install, environment
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tarball() -> Path:
    """The collection tarball, built once per session (or the one scripts/test built)."""
    given = os.environ.get("FLEETPKI_COLLECTION_TARBALL", "").strip()
    if given:
        path = Path(given)
        assert path.is_file(), f"FLEETPKI_COLLECTION_TARBALL={given} is not a file"
        return path
    for m in MODULES:
        helpers.binary_path(m)  # fails naming the missing binary
    proc = run([str(BUILD_COLLECTION), "--no-cargo"], env=dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}"))
    assert_run_ok(proc)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"scripts/build-collection printed no tarball path\n{describe_run(proc)}"
    path = Path(lines[-1])
    assert path.is_file(), f"scripts/build-collection's last line is not a file: {lines[-1]!r}"
    return path


@pytest.fixture(scope="session")
def tarball_members(tarball) -> list[str]:
    with tarfile.open(tarball) as tar:
        return tar.getnames()


@pytest.fixture(scope="session")
def ansible_home(tmp_path_factory) -> Path:
    """ANSIBLE_HOME and an empty ansible.cfg: nothing of the developer's ~/.ansible or config is used."""
    home = tmp_path_factory.mktemp("ansible-home")
    (home / "ansible.cfg").write_text("# empty: the tests set everything through the environment\n", encoding="utf-8")
    return home


def base_env(ansible_home: Path, collections_path: Path | None) -> dict[str, str]:
    """The environment of an ansible command: no AWS settings of the developer, our venv first on
    PATH, only `collections_path` (if any) to find collections in, no colours, no retry files."""
    env = helpers.module_env()
    env.update(
        {
            "PATH": f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
            "ANSIBLE_CONFIG": str(ansible_home / "ansible.cfg"),
            "ANSIBLE_HOME": str(ansible_home),
            "ANSIBLE_LOCAL_TEMP": str(ansible_home / "tmp"),
            "ANSIBLE_REMOTE_TEMP": str(ansible_home / "remote-tmp"),
            "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
            "ANSIBLE_ROLES_PATH": str(ansible_home / "roles"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_RETRY_FILES_ENABLED": "false",
            "ANSIBLE_STDOUT_CALLBACK": "default",
            "ANSIBLE_DEPRECATION_WARNINGS": "false",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    for key in ("ANSIBLE_CALLBACKS_ENABLED", "ANSIBLE_CALLBACK_WHITELIST", "ANSIBLE_INVENTORY", "ANSIBLE_VAULT_PASSWORD_FILE"):
        env.pop(key, None)
    if collections_path is not None:
        env["ANSIBLE_COLLECTIONS_PATH"] = str(collections_path)
    return env


@pytest.fixture(scope="session")
def collections_path(tarball, tmp_path_factory, ansible_home) -> Path:
    """`ansible-galaxy collection install <tarball> -p <empty dir>`: the collection every test uses."""
    path = tmp_path_factory.mktemp("collections")
    assert not any(path.iterdir())
    proc = run(
        [tool("ansible-galaxy"), "collection", "install", str(tarball), "-p", str(path)],
        env=base_env(ansible_home, None),
        timeout=120,
    )
    assert_run_ok(proc)
    assert (path / "ansible_collections" / "fleetpki" / "mtls" / "MANIFEST.json").is_file(), describe_run(proc)
    return path


@pytest.fixture(scope="session")
def installed(collections_path) -> Path:
    """The installed collection's root, <path>/ansible_collections/fleetpki/mtls."""
    return collections_path / "ansible_collections" / "fleetpki" / "mtls"


@pytest.fixture(scope="session")
def ansible_env(ansible_home, collections_path) -> dict[str, str]:
    """For ansible-doc and playbooks without SQS: only the installed collection is visible."""
    return base_env(ansible_home, collections_path)


# --------------------------------------------------------------------------------------------
# SQS
# --------------------------------------------------------------------------------------------


@pytest.fixture
def sqs_ansible_env(ansible_env, sqs_server) -> dict[str, str]:
    """ansible_env plus the moto endpoint, region and credentials (the modules read the environment)."""
    env = dict(ansible_env)
    env.update(sqs_server.env)
    return env


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

    def site(self, *args: str) -> subprocess.CompletedProcess:
        """ansible-playbook -i inventory fleetpki.mtls.site [args], by the installed collection's FQCN."""
        proc = run(
            [tool("ansible-playbook"), "-i", str(self.inventory), "--forks", str(len(self.nodes) + 2), "fleetpki.mtls.site", *args],
            env=self.env,
            cwd=self.dir,
        )
        (self.dir / f"site-{len(self.runs) + 1}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
        self.runs.append(proc)
        return proc


def yaml_quote(value: str) -> str:
    import json

    return json.dumps(value)  # JSON strings are YAML strings


@pytest.fixture
def make_fleet(tmp_path, queues, sqs_ansible_env):
    """make_fleet(n=3) -> Fleet: an offline root host, a CA host and n fleet nodes, all local
    connection, written like demo/run's inventory, on this test's queues."""
    import grp
    import pwd

    def make(n: int = 3) -> Fleet:
        base = tmp_path / "fleet"
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
            env=dict(sqs_ansible_env),
        )

    return make
