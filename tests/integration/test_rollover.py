"""CA rollover without a broken handshake: renewing the intermediate, then rolling the
root with a trust bundle that holds the old and the new root during the overlap.

Every step ends with a real mTLS handshake (demo/mtls-handshake: openssl s_server/s_client, each
side presenting its certificate and chain and verifying the other's) between every pair of nodes.
The runbook is docs/rollover.md.
"""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

from helpers import REPO_ROOT, assert_ok, write_policy

HANDSHAKE = REPO_ROOT / "demo" / "mtls-handshake"


def handshake(server: Path, client: Path, bundle: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(HANDSHAKE), "--timeout", "20", str(server / "current"), str(client / "current"), str(bundle)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def assert_all_pairs_handshake(nodes, bundle: Path, step: str) -> None:
    for a, b in itertools.combinations(nodes, 2):
        proc = handshake(a.path, b.path, bundle)
        assert proc.returncode == 0, f"{step}: node{a.n} <-> node{b.n} handshake refused:\n{proc.stdout}\n{proc.stderr}"


def init_ca(run_module, directory: Path, root: str, intermediate: str, root_dir: Path | None = None):
    root_dir = root_dir or directory
    args = {
        "root_cert_path": str(root_dir / f"{root}.pem"),
        "root_privatekey_path": str(root_dir / f"{root}.key"),
        "intermediate_cert_path": str(directory / f"{intermediate}.pem"),
        "intermediate_privatekey_path": str(directory / f"{intermediate}.key"),
        "chain_path": str(directory / f"{intermediate}-chain.pem"),
        "root_common_name": f"rollover {root}",
        "intermediate_common_name": f"rollover {intermediate}",
    }
    result, proc = run_module("mtls_ca_init", args)
    assert_ok(result, proc)
    return {
        "ownca_path": args["intermediate_cert_path"],
        "ownca_privatekey_path": args["intermediate_privatekey_path"],
        "ca_chain_path": args["chain_path"],
    }


def renew(nodes, sign, signer, policy: Path, bundle: Path) -> None:
    """Renew `nodes` with `signer` (force: a new request although the certificate is valid)."""
    for node in nodes:
        assert_ok(*node.submit(force=True))
    result, proc = sign(policy_path=str(policy), **signer)
    assert_ok(result, proc)
    assert result["issued"] == len(nodes), result
    for node in nodes:
        result, proc = node.fetch(ca_path=str(bundle))
        assert_ok(result, proc)
        assert result["status"] == "installed", result


def test_intermediate_renewal_and_root_rollover_keep_every_handshake(tmp_path, make_node, sign, run_module):
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    policy = write_policy(tmp_path / "policy.json")
    bundle = tmp_path / "trust-bundle.pem"  # what every node pins (ca_path) and its service trusts
    nodes = [make_node(n) for n in (1, 2, 3)]

    # Step 0: root R1, intermediate I1; every node certified by I1.
    i1 = init_ca(run_module, ca_dir, "r1", "i1")
    bundle.write_text((ca_dir / "r1.pem").read_text())
    renew(nodes, sign, i1, policy, bundle)
    assert_all_pairs_handshake(nodes, bundle, "step 0 (R1/I1)")

    # Step 1: renew the intermediate under the same root; nodes move over one by one.
    i1b = init_ca(run_module, ca_dir, "r1", "i1b")
    assert (ca_dir / "i1b.pem").read_bytes() != (ca_dir / "i1.pem").read_bytes()
    renew(nodes[:1], sign, i1b, policy, bundle)
    assert_all_pairs_handshake(nodes, bundle, "step 1a (one node on I1b)")
    renew(nodes[1:], sign, i1b, policy, bundle)
    assert_all_pairs_handshake(nodes, bundle, "step 1b (all nodes on I1b)")

    # Step 2: a new root R2 with its intermediate I2. Before the bundle holds R2, a node refuses
    # a certificate from it (that is the pinning doing its job) and keeps its I1b pair.
    i2 = init_ca(run_module, ca_dir, "r2", "i2")
    before = (nodes[0].path / "current" / "cert.pem").read_bytes()
    assert_ok(*nodes[0].submit(force=True))
    assert_ok(*sign(policy_path=str(policy), **i2))
    result, _ = nodes[0].fetch(ca_path=str(bundle), wait=False)
    assert result.get("status") != "installed", result
    assert any("certificate_untrusted" in w for w in result.get("warnings", [])), result
    assert (nodes[0].path / "current" / "cert.pem").read_bytes() == before

    # The overlap: the bundle holds both roots everywhere first...
    bundle.write_text((ca_dir / "r1.pem").read_text() + (ca_dir / "r2.pem").read_text())
    assert_all_pairs_handshake(nodes, bundle, "step 2a (bundle R1+R2, nothing re-issued)")
    # ...then the worker signs with I2 and nodes move over, a mixed fleet meanwhile.
    renew(nodes[:1], sign, i2, policy, bundle)
    assert_all_pairs_handshake(nodes, bundle, "step 2b (one node on R2/I2)")
    renew(nodes[1:], sign, i2, policy, bundle)
    assert_all_pairs_handshake(nodes, bundle, "step 2c (all nodes on R2/I2)")

    # Step 3: the old root leaves the bundle once no certificate chains to it.
    bundle.write_text((ca_dir / "r2.pem").read_text())
    assert_all_pairs_handshake(nodes, bundle, "step 3 (bundle R2 only)")
