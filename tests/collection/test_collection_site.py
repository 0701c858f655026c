"""The collection's site playbook (fleetpki.mtls.site, from the installed tarball) on a simulated
fleet: an offline root host, a CA host and three nodes, all local connection (demo/run's shape)."""

from __future__ import annotations

import os
from pathlib import Path

import helpers
from collection_helpers import describe_run, play_recap

NODES = 3


def assert_no_failure(proc, recap, expected_hosts):
    assert proc.returncode == 0, describe_run(proc)
    assert set(recap) == expected_hosts, f"PLAY RECAP hosts {sorted(recap)} != {sorted(expected_hosts)}\n{describe_run(proc)}"
    bad = {h: r for h, r in recap.items() if r["failed"] or r["unreachable"]}
    assert not bad, f"failed or unreachable hosts: {bad}\n{describe_run(proc)}"


def files_under(path: Path) -> list[str]:
    """Every non-directory entry under path (files and symlinks), relative; [] when path is missing."""
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            out.append(os.path.relpath(os.path.join(dirpath, name), path))
    return sorted(out)


def test_site_converges_then_changes_nothing(make_fleet, sqs):
    fleet = make_fleet(NODES)
    hosts = {"ca1", *fleet.nodes}

    first = fleet.site()
    recap = play_recap(first.stdout)
    assert_no_failure(first, recap, hosts)
    assert all(recap[h]["changed"] > 0 for h in hosts), f"first run: a host changed nothing: {recap}"

    # Every node holds a certificate for its own key, names and instance id, from our CA.
    root = fleet.root_ca
    assert root.is_file(), "ca_setup did not fetch the root CA certificate to fleetpki_root_ca_file"
    assert not (fleet.ca_dir / "root.key.pem").exists(), "the root key reached the CA host"
    assert (fleet.offline_root_dir / "root.key.pem").is_file(), "the root key is not on the offline root host"
    for host, node in fleet.nodes.items():
        current = node["path"] / "current"
        assert current.is_symlink(), f"{host}: no current/ symlink"
        for purpose in ("sslclient", "sslserver"):
            helpers.assert_openssl_verifies(current / "cert.pem", root, current / "chain.pem", purpose)
        cert = helpers.load_cert(current / "cert.pem")
        assert helpers.common_name(cert) == node["instance_id"]
        assert helpers.cert_sans(cert) == node["sans"]
        key = helpers.load_private_key(current / "privkey.pem")
        assert helpers.spki_der(key.public_key()) == helpers.spki_der(cert.public_key()), f"{host}: key and cert differ"
        assert helpers.file_mode(current / "privkey.pem") == 0o600
        assert (node["path"] / "ca.pem").read_bytes() == root.read_bytes(), f"{host}: pinned CA is not the root"
        assert fleet.marker(host).exists(), f"{host}: the reload handler did not run"
        fleet.marker(host).unlink()

    # Nothing is left in flight: CSR queue drained, answers consumed, nothing dead-lettered.
    depths = fleet.queues.snapshot(sqs)
    assert all(sum(d.values()) == 0 for d in depths.values()), f"messages left after the first run: {depths}"
    reply_queues = [u for u in depths if "-reply-" in u]
    assert len(reply_queues) == NODES, f"expected one reply queue per node: {sorted(depths)}"

    second = fleet.site()
    recap2 = play_recap(second.stdout)
    assert_no_failure(second, recap2, hosts)
    changed = {h: r["changed"] for h, r in recap2.items() if r["changed"]}
    assert not changed, f"the second run changed something: {changed}\n{describe_run(second)}"
    assert not any(fleet.marker(h).exists() for h in fleet.nodes), "the reload handler ran on the second run"
    depths2 = fleet.queues.snapshot(sqs)
    assert all(sum(d.values()) == 0 for d in depths2.values()), f"the second run left messages: {depths2}"


def test_check_mode_on_a_fresh_fleet_changes_nothing(make_fleet, sqs):
    fleet = make_fleet(NODES)
    hosts = {"ca1", *fleet.nodes}
    before_queues = sorted(fleet.queues.all_urls(sqs))

    proc = fleet.site("--check")
    recap = play_recap(proc.stdout)
    assert_no_failure(proc, recap, hosts)
    unchanged = sorted(h for h in hosts if recap[h]["changed"] == 0)
    assert not unchanged, f"--check on a fresh fleet: these hosts report nothing to change: {unchanged}\n{describe_run(proc)}"

    # No key, certificate, request or CA file anywhere; the nodes' directories are not even made.
    written = {
        str(p): files_under(p)
        for p in [fleet.ca_dir, fleet.offline_root_dir, *(n["path"] for n in fleet.nodes.values())]
        if os.path.lexists(p)
    }
    assert not written, f"--check created: {written}"
    assert not fleet.root_ca.exists(), "--check fetched a root CA certificate"
    assert not any(fleet.marker(h).exists() for h in fleet.nodes), "--check ran the reload handler"
    # No queue created (no per-node reply queue) and every queue empty, by GetQueueAttributes.
    assert sorted(fleet.queues.all_urls(sqs)) == before_queues, "--check created queues"
    depths = fleet.queues.snapshot(sqs)
    assert all(sum(d.values()) == 0 for d in depths.values()), f"--check left messages: {depths}"
