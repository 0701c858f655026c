"""Revocation end to end: fleetpki.mtls.mtls_ca_revoke revokes by serial and by
instance id (issuance records from the workers' audit logs), issues a CRL signed by the intermediate
that `openssl verify -crl_check` and a real mTLS handshake (demo/mtls-handshake --crl) honour, is
idempotent, writes nothing in check mode, keeps nextUpdate ahead of the clock by re-issuing the CRL
when it is due, and refuses bad options naming them.

The time rule itself (due when nextUpdate is closer than crl_renew_before) is unit-tested in Rust
(`fleetpki_core::crl::reissue_reason`); here a CRL is made due without waiting by issuing it with a
one-day lifetime and then asking for two days of margin.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

import helpers
from helpers import REPO_ROOT, assert_failed_naming, assert_ok, describe, file_mode, tree_snapshot

HANDSHAKE = REPO_ROOT / "demo" / "mtls-handshake"
MODULE = "mtls_ca_revoke"


# ------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ------------------------------------------------------------------------------------------------


@dataclass
class Fleet:
    """Four enrolled nodes. Nodes 1, 2 and 4 were signed by "worker A", node 3 by "worker B";
    each worker keeps its own audit log (as two CA hosts would)."""

    nodes: dict[int, Any]
    serials: dict[int, str]  # node number -> serial (lower-case hex) of its installed certificate
    audit_logs: list[Path]


@pytest.fixture
def fleet(make_node, sign, tmp_path) -> Fleet:
    logs = [tmp_path / "worker-a" / "audit.jsonl", tmp_path / "worker-b" / "audit.jsonl"]
    for log in logs:
        log.parent.mkdir()
    nodes = {n: make_node(n) for n in (1, 2, 3, 4)}
    for batch, log in (((1, 2, 4), logs[0]), ((3,), logs[1])):
        for n in batch:
            assert_ok(*nodes[n].submit())
        result, proc = sign(audit_log_path=str(log))
        assert_ok(result, proc)
        assert result["issued"] == len(batch), describe(result, proc)
    serials = {}
    for n, node in nodes.items():
        result, proc = node.fetch()
        assert_ok(result, proc)
        assert result["status"] == "installed", describe(result, proc)
        serials[n] = format(helpers.load_cert(node.current / "cert.pem").serial_number, "x")
    return Fleet(nodes=nodes, serials=serials, audit_logs=logs)


@pytest.fixture
def crl_dir(tmp_path) -> Path:
    d = tmp_path / "crl"
    d.mkdir()
    return d


@pytest.fixture
def revoke(run_module, ca, crl_dir):
    """revoke(check=False, **options) -> (result, proc): one mtls_ca_revoke run on the session CA."""

    def run(check: bool = False, diff: bool = False, **overrides: Any):
        return run_module(MODULE, revoke_args(ca, crl_dir, **overrides), check=check, diff=diff)

    return run


def revoke_args(ca, crl_dir: Path, **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "ownca_path": str(ca.intermediate_cert_path),
        "ownca_privatekey_path": str(ca.intermediate_privatekey_path),
        "ca_chain_path": str(ca.chain_path),
        "crl_path": str(crl_dir / "crl.pem"),
        "revocations_path": str(crl_dir / "revocations.json"),
    }
    args.update(overrides)
    return args


def load_crl(path: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(path.read_bytes())


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_oid(ExtensionOID.CRL_NUMBER).value.crl_number


def revoked_serials(crl: x509.CertificateRevocationList) -> set[int]:
    return {entry.serial_number for entry in crl}


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_rfc3339(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def openssl_verify_crl(ca, node, crl: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "openssl", "verify", "-crl_check", "-CRLfile", str(crl), "-CAfile", str(ca.root_cert_path),
            "-untrusted", str(node.current / "chain.pem"), str(node.current / "cert.pem"),
        ],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )


def handshake(server, client, ca, crl: Path | None) -> subprocess.CompletedProcess:
    args = [str(HANDSHAKE), "--timeout", "20"]
    if crl is not None:
        args += ["--crl", str(crl)]
    args += [str(server.current), str(client.current), str(ca.root_cert_path)]
    return subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def colon_upper(serial_hex: str) -> str:
    """A serial as `openssl x509 -text` writes it: 4A:1B:..."""
    return ":".join(serial_hex[i : i + 2] for i in range(0, len(serial_hex), 2)).upper()


# ------------------------------------------------------------------------------------------------
# Revoking, and what openssl and TLS make of the CRL
# ------------------------------------------------------------------------------------------------


def test_revoke_by_serial_and_by_instance_id(fleet, revoke, ca, crl_dir):
    n3 = fleet.nodes[3]
    result, proc = revoke(
        serials=[colon_upper(fleet.serials[1])],  # another spelling of the same serial
        instance_ids=[n3.instance_id],
        issuance_log_paths=[str(p) for p in fleet.audit_logs],  # node 3 is only in worker B's log
        reason="key_compromise",
    )
    assert_ok(result, proc)
    assert result["changed"] is True, describe(result, proc)
    assert sorted(result["revoked"]) == sorted([fleet.serials[1], fleet.serials[3]]), describe(result)
    assert result["revoked_count"] == 2, describe(result)
    assert result["crl_number"] == 1, describe(result)

    # The files: a public CRL, a private state file.
    crl_path, state_path = crl_dir / "crl.pem", crl_dir / "revocations.json"
    assert file_mode(crl_path) == 0o644 and file_mode(state_path) == 0o600
    state = json.loads(state_path.read_text(encoding="utf-8"))
    by_serial = {r["serial"]: r for r in state["revoked"]}
    assert set(by_serial) == {fleet.serials[1], fleet.serials[3]}, state
    assert by_serial[fleet.serials[3]]["instance_id"] == n3.instance_id, state
    assert all(r["reason"] == "key_compromise" for r in state["revoked"]), state

    # The CRL: issued and signed by the intermediate, with the node's serials and reasons.
    crl = load_crl(crl_path)
    intermediate = helpers.load_cert(ca.intermediate_cert_path)
    assert crl.issuer == intermediate.subject
    assert crl.is_signature_valid(intermediate.public_key())
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    ski = intermediate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert aki == ski, "the CRL's AKI must be the intermediate's SKI (openssl looks CRLs up by it)"
    assert crl_number(crl) == 1
    assert revoked_serials(crl) == {int(fleet.serials[1], 16), int(fleet.serials[3], 16)}
    for entry in crl:
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        assert reason == x509.ReasonFlags.key_compromise, entry
    assert crl.last_update_utc <= now_utc() < crl.next_update_utc
    assert parse_rfc3339(result["crl_next_update"]) == crl.next_update_utc

    # openssl: the revoked certificates fail as revoked, the others pass.
    for n, node in fleet.nodes.items():
        proc = openssl_verify_crl(ca, node, crl_path)
        if n in (1, 3):
            assert proc.returncode != 0, f"node{n} verifies despite the CRL:\n{proc.stdout}{proc.stderr}"
            assert "certificate revoked" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        else:
            assert proc.returncode == 0 and proc.stdout.strip().endswith(": OK"), proc.stdout + proc.stderr


def test_handshake_refuses_the_revoked_node(fleet, revoke, ca, crl_dir):
    n2, n3, n4 = fleet.nodes[2], fleet.nodes[3], fleet.nodes[4]
    crl = crl_dir / "crl.pem"

    # Before the revocation node 3 is a good peer: what refuses it below is the CRL.
    before = handshake(n3, n2, ca, None)
    assert before.returncode == 0, before.stdout + before.stderr

    result, proc = revoke(instance_ids=[n3.instance_id], issuance_log_paths=[str(p) for p in fleet.audit_logs])
    assert_ok(result, proc)
    assert result["revoked"] == [fleet.serials[3]], describe(result, proc)

    ok = handshake(n2, n4, ca, crl)
    assert ok.returncode == 0 and "handshake OK" in ok.stdout, ok.stdout + ok.stderr
    for server, client in ((n3, n2), (n2, n3)):  # revoked as a server, and as a client
        refused = handshake(server, client, ca, crl)
        out = refused.stdout + refused.stderr
        what = f"{server.instance_id} serving {client.instance_id}"
        assert refused.returncode == 1, f"{what}: not refused (rc {refused.returncode}):\n{out}"
        assert "handshake REFUSED" in refused.stdout and "revoked" in out, out


def test_second_run_changes_nothing(fleet, revoke, crl_dir):
    logs = [str(p) for p in fleet.audit_logs]
    args = {"serials": [fleet.serials[1]], "instance_ids": [fleet.nodes[3].instance_id], "issuance_log_paths": logs}
    assert_ok(*revoke(**args))
    before = tree_snapshot(crl_dir)

    # The same task again, the same serial spelled differently, and the scheduled refresh alone.
    for again in (args, {"serials": ["0x" + fleet.serials[1].upper()]}, {}):
        result, proc = revoke(**again)
        assert_ok(result, proc)
        assert result["changed"] is False, f"{again}:\n{describe(result, proc)}"
        assert result["revoked"] == [] and result["revoked_count"] == 2, describe(result)
        assert tree_snapshot(crl_dir) == before, f"{again} rewrote the CRL or the state file"


def test_check_mode_writes_nothing(fleet, revoke, crl_dir, tmp_path):
    logs = [str(p) for p in fleet.audit_logs]
    # No CRL yet: it would be issued, and nothing is written.
    before = tree_snapshot(crl_dir)
    result, proc = revoke(check=True, serials=[fleet.serials[1]])
    assert_ok(result, proc)
    assert result["changed"] is True and result["revoked"] == [fleet.serials[1]], describe(result, proc)
    assert tree_snapshot(crl_dir) == before
    assert_ok(*revoke(check=True))
    assert tree_snapshot(crl_dir) == before

    # With a CRL: a new revocation would re-issue it; nothing is written either.
    assert_ok(*revoke(serials=[fleet.serials[1]]))
    before = tree_snapshot(crl_dir)
    logs_before = tree_snapshot(tmp_path / "worker-b")
    result, proc = revoke(check=True, instance_ids=[fleet.nodes[3].instance_id], issuance_log_paths=logs)
    assert_ok(result, proc)
    assert result["changed"] is True and result["revoked"] == [fleet.serials[3]], describe(result, proc)
    assert tree_snapshot(crl_dir) == before
    assert tree_snapshot(tmp_path / "worker-b") == logs_before

    # Nothing to do: check mode says so.
    result, proc = revoke(check=True, serials=[fleet.serials[1]])
    assert_ok(result, proc)
    assert result["changed"] is False, describe(result, proc)
    assert tree_snapshot(crl_dir) == before


# ------------------------------------------------------------------------------------------------
# A living CRL: nextUpdate ahead of the clock, re-issued when due or when the list changes
# ------------------------------------------------------------------------------------------------


def test_crl_is_reissued_when_due_or_changed(revoke, crl_dir):
    crl_path = crl_dir / "crl.pem"
    one_day = {"crl_lifetime_days": 1, "crl_renew_before": "23h"}

    # A one-day CRL: nextUpdate about a day ahead.
    t0 = now_utc()
    result, proc = revoke(serials=["4a1b2c3d"], **one_day)
    assert_ok(result, proc)
    crl = load_crl(crl_path)
    assert crl.last_update_utc <= now_utc()
    day = dt.timedelta(days=1)
    assert t0 + day - dt.timedelta(seconds=2) <= crl.next_update_utc <= now_utc() + day
    assert crl_number(crl) == 1

    # 23 h of margin on a CRL 24 h from its nextUpdate: not due, nothing written.
    before = tree_snapshot(crl_dir)
    result, proc = revoke(**one_day)
    assert_ok(result, proc)
    assert result["changed"] is False, describe(result, proc)
    assert parse_rfc3339(result["crl_next_update"]) == crl.next_update_utc, describe(result)
    assert tree_snapshot(crl_dir) == before

    # Two days of margin on a CRL one day from its nextUpdate: due, re-issued a week ahead with the
    # same list and a higher number.
    result, proc = revoke(crl_lifetime_days=7, crl_renew_before="2d")
    assert_ok(result, proc)
    assert result["changed"] is True and "nextUpdate" in result["msg"], describe(result, proc)
    renewed = load_crl(crl_path)
    assert renewed.next_update_utc >= now_utc() + dt.timedelta(days=7) - dt.timedelta(seconds=5)
    assert parse_rfc3339(result["crl_next_update"]) == renewed.next_update_utc
    assert revoked_serials(renewed) == revoked_serials(crl) == {0x4A1B2C3D}
    assert crl_number(renewed) == 2 == result["crl_number"]

    # And then it is current again.
    before = tree_snapshot(crl_dir)
    result, proc = revoke(crl_lifetime_days=7, crl_renew_before="2d")
    assert_ok(result, proc)
    assert result["changed"] is False, describe(result, proc)
    assert tree_snapshot(crl_dir) == before

    # A new revocation re-issues it at once, not due or not.
    result, proc = revoke(serials=["5c6d"], **one_day)
    assert_ok(result, proc)
    assert result["changed"] is True and result["revoked"] == ["5c6d"], describe(result, proc)
    latest = load_crl(crl_path)
    assert revoked_serials(latest) == {0x4A1B2C3D, 0x5C6D}
    assert crl_number(latest) == 3
    assert now_utc() < latest.next_update_utc


@pytest.mark.parametrize(
    "serial",
    ["80ab", "00:80:AB", "0001", "00ff"],
    ids=["high-bit", "der-spelling", "leading-zero-octet", "zero-then-high-bit"],
)
def test_any_serial_spelling_is_idempotent(revoke, crl_dir, serial):
    """Serials not made by our CA (high bit set, leading zero octets, `openssl x509 -text`'s DER
    spelling) name the same integer: revoked once, and the CRL is then current."""
    result, proc = revoke(serials=[serial])
    assert_ok(result, proc)
    assert result["changed"] is True, describe(result, proc)
    assert revoked_serials(load_crl(crl_dir / "crl.pem")) == {int(serial.replace(":", ""), 16)}
    before = tree_snapshot(crl_dir)
    result, proc = revoke(serials=[serial])
    assert_ok(result, proc)
    assert result["changed"] is False, f"the CRL is re-issued on every run:\n{describe(result, proc)}"
    assert tree_snapshot(crl_dir) == before


def test_spellings_of_one_serial_are_one_revocation(revoke, crl_dir):
    result, proc = revoke(serials=["80ab", "00:80:AB", "0x80AB"])
    assert_ok(result, proc)
    assert result["revoked_count"] == 1, f"one serial revoked as several:\n{describe(result, proc)}"
    assert len(list(load_crl(crl_dir / "crl.pem"))) == 1


# ------------------------------------------------------------------------------------------------
# Issuance records
# ------------------------------------------------------------------------------------------------


def audit_line(decision: str, instance_id: str, serial: str | None, not_after: dt.datetime | None) -> str:
    return json.dumps(
        {
            "time": helpers.rfc3339(now_utc()),
            "instance_id": instance_id,
            "decision": decision,
            "serial": serial,
            "not_after": helpers.rfc3339(not_after) if not_after else None,
        }
    )


def test_instance_id_revokes_its_unexpired_certificates_only(revoke, tmp_path):
    now = now_utc()
    log = tmp_path / "audit.jsonl"
    log.write_text(
        "\n".join(
            [
                audit_line("issued", "i-0000000000000000a", "4a0000000000000001", now + dt.timedelta(days=30)),
                audit_line("issued", "i-0000000000000000a", "4a0000000000000002", now - dt.timedelta(days=1)),
                audit_line("issued", "i-0000000000000000a", "4a0000000000000003", now + dt.timedelta(days=2)),
                audit_line("issued", "i-0000000000000000b", "4b0000000000000001", now + dt.timedelta(days=30)),
                audit_line("rejected", "i-0000000000000000a", None, None),
                "this line is not JSON",
                "",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    result, proc = revoke(instance_ids=["i-0000000000000000a"], issuance_log_paths=[str(log)])
    assert_ok(result, proc)
    # Both unexpired certificates of the instance (a renewal leaves two); not the expired one,
    # not another instance's.
    assert sorted(result["revoked"]) == ["4a0000000000000001", "4a0000000000000003"], describe(result, proc)


def test_unknown_instance_id_is_reported(revoke, tmp_path):
    """Revoking an instance id no issuance record names (a typo, a log not gathered) must not pass
    silently as "ok": the operator believes a node is cut off while it is not."""
    log = tmp_path / "audit.jsonl"
    log.write_text(audit_line("issued", "i-0000000000000000b", "4b01", now_utc() + dt.timedelta(days=30)) + "\n")
    result, proc = revoke(instance_ids=["i-0000000000000000c"], issuance_log_paths=[str(log)])
    assert_ok(result, proc)
    assert result["revoked"] == [], describe(result, proc)
    warnings = result.get("warnings") or []
    assert any("i-0000000000000000c" in w for w in warnings), f"no warning names the id:\n{describe(result, proc)}"


# ------------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------------

BAD_OPTIONS = [
    # (changes to valid options, the option the message must name); a None value leaves the option out
    ({"crl_renew_before": "8d"}, "crl_renew_before"),  # longer than the 7-day default lifetime
    ({"crl_lifetime_days": 1, "crl_renew_before": "1d"}, "crl_renew_before"),  # as long as it
    ({"crl_lifetime_days": 2, "crl_renew_before": "49h"}, "crl_renew_before"),
    ({"crl_renew_before": "33%"}, "crl_renew_before"),
    ({"crl_renew_before": "soon"}, "crl_renew_before"),
    ({"crl_renew_before": "0s"}, "crl_renew_before"),  # re-issued only once expired
    ({"crl_lifetime_days": 0}, "crl_lifetime_days"),
    ({"crl_lifetime_days": 367}, "crl_lifetime_days"),
    ({"crl_lifetime_days": "week"}, "crl_lifetime_days"),
    ({"reason": "lost"}, "reason"),
    ({"serials": ["xyz"]}, "serials"),
    ({"instance_ids": ["i-0000000000000000a"]}, "issuance_log_paths"),
    ({"crl_path": None}, "crl_path"),
    ({"revocations_path": None}, "revocations_path"),
    ({"ownca_path": None}, "ownca_path"),
    ({"bogus_option": 1}, "bogus_option"),
]


@pytest.mark.parametrize(
    "changes,option", BAD_OPTIONS, ids=[json.dumps(c, sort_keys=True) for c, _ in BAD_OPTIONS]
)
def test_bad_options_fail_naming_the_option(changes, option, run_module, ca, tmp_path):
    untouched = tmp_path / "untouched"
    args = revoke_args(ca, untouched)
    for key, value in changes.items():
        if value is None:
            args.pop(key)
        else:
            args[key] = value
    result, _proc = run_module(MODULE, args)
    assert_failed_naming(result, option)
    assert not os.path.lexists(untouched), "a module that refused its options wrote files"


def test_state_file_that_is_not_ours_is_refused(revoke, crl_dir):
    (crl_dir / "revocations.json").write_text("[1, 2, 3]\n", encoding="utf-8")
    before = tree_snapshot(crl_dir)
    result, proc = revoke(serials=["4a1b"])
    assert result.get("failed") is True and "revocations.json" in result.get("msg", ""), describe(result, proc)
    assert tree_snapshot(crl_dir) == before


def test_diff_shows_the_crl_number_and_revoked_serials_before_and_after(fleet, revoke, crl_dir):
    first, proc = revoke(diff=True)
    assert_ok(first, proc)
    assert first["diff"] == {"before": None, "after": {"crl_number": 1, "revoked_serials": []}}, first

    target = fleet.serials[1]
    for check in (True, False):
        result, proc = revoke(diff=True, check=check, serials=[target])
        assert_ok(result, proc)
        before, after = result["diff"]["before"], result["diff"]["after"]
        assert before == {"crl_number": 1, "revoked_serials": []}, result
        # The module writes whole bytes (a leading 0 when the top nibble is 0): compared as numbers.
        assert after["crl_number"] == 2 and [int(s, 16) for s in after["revoked_serials"]] == [int(target, 16)], result
    assert crl_number(load_crl(crl_dir / "crl.pem")) == 2

    unchanged, proc = revoke(diff=True, serials=[target])
    assert_ok(unchanged, proc)
    assert unchanged["changed"] is False and "diff" not in unchanged, unchanged
