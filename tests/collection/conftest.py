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
import tarfile
from pathlib import Path

import pytest

from collection_helpers import (
    BUILD_COLLECTION,
    MODULES,
    VENV_BIN,
    Fleet,
    assert_run_ok,
    base_env,
    describe_run,
    helpers,
    run,
    tool,
    write_fleet,
)

# The SQS fixtures shared with tests/integration (collection_helpers puts it on sys.path).
from sqs_fixtures import own_sqs, queues, sqs, sqs_server  # noqa: F401  (fixtures used by name)


def pytest_configure(config):
    """SIGTERM (a CI timeout, `kill`) becomes KeyboardInterrupt, so the moto server is still stopped."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    # scripts/ansible-matrix deselects these in every leg but its last (`-m "not one_leg"`).
    config.addinivalue_line("markers", "one_leg: a slow fleet test the matrix runs in one leg only (its last)")


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


@pytest.fixture
def make_fleet(tmp_path, queues, sqs_ansible_env):
    """make_fleet(n=3) -> Fleet: write_fleet on this test's queues of the session's moto server."""

    def make(n: int = 3) -> Fleet:
        return write_fleet(tmp_path / "fleet", n, queues, sqs_ansible_env)

    return make

