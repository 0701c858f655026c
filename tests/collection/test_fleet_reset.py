"""A queue server that loses its state in the middle of a rotation: twenty nodes rotate by force
through the site playbook, the SQS server is killed while the CA signs them, restarted empty, and
its CSR and dead-letter queues re-created as an operator would (the reply queues are the nodes').
The first plain run of the site playbook (no `force`), started as soon as the queues are back,
then leaves every node with a valid certificate for its own key, the forced rotation completed. The decisions behind it are unit-tested
in Rust (`fleetpki_core::renewal`: reply_queue_missing, forced_retry); here, the real playbook.

The test has its own moto server (the `own_sqs` fixture) on its own loopback port, so that killing
it touches no other test.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

import helpers
from collection_helpers import PLAYBOOK_TIMEOUT, describe_run, play_recap, write_fleet

NODES = 20
pytestmark = pytest.mark.one_leg


def signed_lines(ca_dir: Path) -> int:
    """Certificates the CA worker recorded as signed (its issuance record, written before sending)."""
    record = ca_dir / "audit.jsonl"
    if not record.exists():
        return 0
    lines = record.read_text(encoding="utf-8").splitlines()
    # The last line may be half-written while the worker runs: count whole lines only.
    return sum(1 for line in lines if line.endswith("}") and json.loads(line).get("decision") == "signed")


def installed_serials(fleet) -> dict[str, int]:
    out = {}
    for host, node in fleet.nodes.items():
        cert = node["path"] / "current" / "cert.pem"
        if cert.exists():
            out[host] = helpers.load_cert(cert).serial_number
    return out


def assert_recap_clean(proc, hosts) -> None:
    recap = play_recap(proc.stdout)
    assert proc.returncode == 0, describe_run(proc)
    assert set(recap) == hosts, f"PLAY RECAP hosts {sorted(recap)} != {sorted(hosts)}\n{describe_run(proc)}"
    bad = {h: r for h, r in recap.items() if r["failed"] or r["unreachable"]}
    assert not bad, f"failed or unreachable hosts: {bad}\n{describe_run(proc)}"


def test_a_queue_server_reset_mid_rotation_heals_on_the_first_plain_run(tmp_path, ansible_env, own_sqs):
    client = own_sqs.client()
    prefix = f"t{uuid.uuid4().hex[:10]}"
    queues = own_sqs.create_queues(prefix)
    env = dict(ansible_env)
    env.update(own_sqs.env)
    fleet = write_fleet(tmp_path / "fleet", NODES, queues, env)
    hosts = {"ca1", *fleet.nodes}

    # 1. The fleet enrols.
    assert_recap_clean(fleet.site(), hosts)
    enrolled = installed_serials(fleet)
    assert sorted(enrolled) == sorted(fleet.nodes), f"nodes without a certificate after enrolment: {enrolled}"

    # 2. A forced rotation of every node; the server is killed once the CA has signed part of it.
    signed_before = signed_lines(fleet.ca_dir)
    log_path = fleet.dir / "site-rotation.log"
    with open(log_path, "w", encoding="utf-8") as log:
        rotation = subprocess.Popen(
            fleet.site_command("-e", "mtls_client_force=true"),
            env=fleet.env,
            cwd=fleet.dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + PLAYBOOK_TIMEOUT
            while signed_lines(fleet.ca_dir) == signed_before and rotation.poll() is None:
                assert time.monotonic() < deadline, "the CA signed nothing of the rotation"
                time.sleep(0.05)  # polling the record for the moment to kill, not waiting it out
            own_sqs.kill()
            rotation.wait(timeout=PLAYBOOK_TIMEOUT)
        finally:
            if rotation.poll() is None:
                rotation.kill()
                rotation.wait()
    output = log_path.read_text(encoding="utf-8")
    after_kill = installed_serials(fleet)
    rotated = sorted(h for h in fleet.nodes if after_kill.get(h) != enrolled[h])
    assert rotation.returncode != 0 and len(rotated) < NODES, (
        f"the kill came after the rotation ended (rc {rotation.returncode}, rotated: {rotated}): nothing was interrupted\n{output[-4000:]}"
    )
    assert signed_lines(fleet.ca_dir) > signed_before, "the kill came before the CA signed anything of the rotation"

    # 3. The server comes back empty; the operator re-creates the CSR and dead-letter queues.
    own_sqs.start()
    assert client.list_queues().get("QueueUrls", []) == [], "the restarted server is not empty"
    assert own_sqs.create_queues(prefix) == queues, "the re-created queues have other URLs"
    # 4. The first plain run heals every node.
    healed = fleet.site()
    assert_recap_clean(healed, hosts)
    final = installed_serials(fleet)
    for host, node in fleet.nodes.items():
        current = node["path"] / "current"
        for purpose in ("sslclient", "sslserver"):
            helpers.assert_openssl_verifies(current / "cert.pem", fleet.root_ca, current / "chain.pem", purpose)
        cert = helpers.load_cert(current / "cert.pem")
        key = helpers.load_private_key(current / "privkey.pem")
        assert helpers.spki_der(key.public_key()) == helpers.spki_der(cert.public_key()), f"{host}: key and certificate differ"
        assert helpers.common_name(cert) == node["instance_id"]
        assert final[host] != enrolled[host], f"{host}: the forced rotation was not completed by the plain run"
        assert not os.path.exists(node["path"] / "pending" / "request.json"), f"{host}: a request is still pending"
    # Nothing left in flight: CSR queue drained, answers consumed, nothing dead-lettered.
    depths = queues.snapshot(client)
    assert all(sum(d.values()) == 0 for d in depths.values()), f"messages left after the healing run: {depths}"
