"""Nothing issued goes unrecorded: the worker's issuance record (its audit_log_path) holds every
certificate that can have reached a node, whatever the moment the worker dies; revoking every
instance by id then leaves no delivered certificate passing `openssl verify -crl_check`; and a
line removed from or altered in the record is reported by mtls_ca_revoke.

The worker is killed at each of its numbered crash points (`FLEETPKI_TEST_CRASH_AT`, which makes
the binary abort there) and by SIGKILL at random moments while 400 requests drain, 16 batches in
flight; a drain stopped by SIGTERM finishes the batches in hand. "Delivered" is
every certificate on any reply queue — duplicates included — a superset of what nodes install.
The order of actions itself is unit-tested in Rust (`modules/fleetpki-core/tests/worker.rs`) and
the chain format too (`fleetpki_core::record`).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import helpers
from helpers import assert_ok, describe, queue_attributes

# The worker's crash points (ca_sign.rs, `crash`): after the `signed` line is durable, after the
# answer was sent, before the batch delete, after it.
CRASH_POINTS = {11: "before_answer", 12: "after_answer", 13: "before_delete", 14: "after_delete"}


def total(depth: dict[str, int]) -> int:
    return depth["visible"] + depth["in_flight"] + depth["delayed"]


def record_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def recorded_serials(path: Path) -> dict[int, str]:
    """serial -> instance id of every line with a serial."""
    return {int(line["serial"], 16): line["instance_id"] for line in record_lines(path) if line.get("serial")}


def delivered_certificates(sqs, reply_urls: list[str]) -> list[x509.Certificate]:
    """Every certificate on the reply queues (received with visibility 0: left in place)."""
    found = []
    for url in reply_urls:
        for message in helpers.receive_all(sqs, url, visibility_timeout=0):
            body = json.loads(message["Body"])
            if "certificate_pem" in body:
                found.append(x509.load_pem_x509_certificate(body["certificate_pem"].encode()))
    return found


def instance_of(cert: x509.Certificate) -> str:
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def drain_until_empty(sign, sqs, queues, audit: Path, deadline_s: float = 120.0, **overrides: Any) -> None:
    """Runs the worker until the CSR queue is empty, in flight included (a killed worker's
    messages come back after their visibility timeout; each run long-polls for 1 s)."""
    deadline = time.monotonic() + deadline_s
    while total(queue_attributes(sqs, queues.csr)) > 0:
        assert time.monotonic() < deadline, f"the CSR queue did not drain: {queue_attributes(sqs, queues.csr)}"
        result, proc = sign(audit_log_path=str(audit), visibility_timeout=2, **overrides)
        assert_ok(result, proc)


def revoke_args(ca, crl_dir: Path, record: Path, instance_ids: list[str]) -> dict[str, Any]:
    return {
        "ownca_path": str(ca.intermediate_cert_path),
        "ownca_privatekey_path": str(ca.intermediate_privatekey_path),
        "ca_chain_path": str(ca.chain_path),
        "crl_path": str(crl_dir / "crl.pem"),
        "revocations_path": str(crl_dir / "revocations.json"),
        "issuance_log_paths": [str(record)],
        "instance_ids": instance_ids,
    }


def revoke_all_and_check(run_module, ca, tmp_path: Path, audit: Path, certificates: list[x509.Certificate]) -> dict:
    """Revokes every instance of `certificates` by id from the record; none of them may pass
    `openssl verify -crl_check` afterwards."""
    crl_dir = tmp_path / "crl"
    crl_dir.mkdir(exist_ok=True)
    instances = sorted({instance_of(c) for c in certificates})
    result, proc = run_module("mtls_ca_revoke", revoke_args(ca, crl_dir, audit, instances))
    assert_ok(result, proc)
    assert result["issuance_record_problems"] == [], describe(result, proc)
    passing = []
    for i, cert in enumerate(certificates):
        leaf = tmp_path / f"delivered-{i}.pem"
        leaf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        verified = subprocess.run(
            ["openssl", "verify", "-crl_check", "-CRLfile", str(crl_dir / "crl.pem"), "-CAfile", str(ca.root_cert_path),
             "-untrusted", str(ca.chain_path), str(leaf)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if verified.returncode == 0 or "revoked" not in verified.stdout + verified.stderr:
            passing.append((format(cert.serial_number, "x"), verified.stdout + verified.stderr))
    assert passing == [], f"delivered certificates not revoked by instance id: {passing[:5]}"
    return result


@pytest.mark.parametrize("point", sorted(CRASH_POINTS), ids=[CRASH_POINTS[k] for k in sorted(CRASH_POINTS)])
def test_a_worker_killed_at_each_crash_point_leaves_no_delivered_certificate_unrecorded(
    point, make_node, sign, sign_args, sqs, queues, module_env, run_module, ca, tmp_path
):
    nodes = [make_node(n) for n in range(1, 7)]
    for node in nodes:
        assert_ok(*node.submit())
    audit = tmp_path / "issuance.jsonl"
    args = sign_args(batch_size=3, visibility_timeout=2, audit_log_path=str(audit))
    args_file = helpers.write_args(tmp_path / "sign-crash.json", "mtls_ca_sign", args)
    crashed = subprocess.run(
        [str(helpers.binary_path("mtls_ca_sign")), str(args_file)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        env=dict(module_env, FLEETPKI_TEST_CRASH_AT=str(point)), cwd=str(tmp_path),
    )  # fmt: skip
    assert crashed.returncode == -signal.SIGABRT, f"not stopped at crash point {point}: {crashed.stdout}{crashed.stderr}"
    assert f"test crash at point {point}" in crashed.stderr
    # What the crash left: the record already holds the batch's signed certificates.
    signed_at_crash = recorded_serials(audit)
    assert len(signed_at_crash) == 3, record_lines(audit)

    drain_until_empty(sign, sqs, queues, audit)
    reply_urls = [sqs.get_queue_url(QueueName=queues.reply_prefix + node.instance_id)["QueueUrl"] for node in nodes]
    delivered = delivered_certificates(sqs, reply_urls)
    recorded = recorded_serials(audit)
    assert len({c.serial_number for c in delivered}) >= len(nodes)
    missing = [format(c.serial_number, "x") for c in delivered if recorded.get(c.serial_number) != instance_of(c)]
    assert missing == [], f"crash point {point}: delivered but not in the record: {missing}"
    # The crashed run's certificates are recorded whether or not they left the worker.
    assert set(signed_at_crash) <= set(recorded)

    for node in nodes:
        result, proc = node.fetch()
        assert_ok(result, proc)
        assert result["status"] == "installed", describe(result, proc)
    installed = [helpers.load_cert(node.current / "cert.pem") for node in nodes]
    revoke_all_and_check(run_module, ca, tmp_path, audit, delivered + installed)


def node_request(instance_id: str) -> tuple[str, dict[str, str]]:
    """A version 1 request as mtls_csr_submit sends it (P-256 key, CN and one DNS name)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, instance_id)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{instance_id}.fleet.internal")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    body = {
        "instance_id": instance_id,
        "csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode(),
        "version": 1,
        "request_id": str(uuid.uuid4()),
        "timestamp": int(time.time()),
        "profile": "mtls",
        "reply_mode": "per_node",
    }
    return json.dumps(body), {"InstanceId": instance_id}


def queue_requests(sqs, queues, count: int, first: int) -> tuple[list[str], list[str]]:
    """Puts `count` node requests on the CSR queue; returns their instance ids and reply queues."""
    instances = [f"i-{first + n:017x}" for n in range(count)]
    reply_urls = [sqs.create_queue(QueueName=queues.reply_prefix + i)["QueueUrl"] for i in instances]
    for start in range(0, len(instances), 10):
        entries = []
        for j, instance in enumerate(instances[start : start + 10]):
            body, attrs = node_request(instance)
            entries.append({
                "Id": str(j), "MessageBody": body,
                "MessageAttributes": {k: {"DataType": "String", "StringValue": v} for k, v in attrs.items()},
            })  # fmt: skip
        assert not sqs.send_message_batch(QueueUrl=queues.csr, Entries=entries).get("Failed")
    return instances, reply_urls


def test_sigkill_at_random_while_400_requests_drain_leaves_nothing_unrecorded(sign_args, sqs, queues, module_env, run_module, ca, tmp_path):
    instances, reply_urls = queue_requests(sqs, queues, 400, 0x400000)
    audit = tmp_path / "issuance.jsonl"
    # 16 batches in flight (the default, said here because it is what is tested): a worker killed
    # with up to 160 requests in hand.
    args = sign_args(visibility_timeout=2, audit_log_path=str(audit), concurrency=16)
    args_file = helpers.write_args(tmp_path / "sign.json", "mtls_ca_sign", args)
    rng = random.Random(18)
    kills = 0
    deadline = time.monotonic() + 300
    while total(queue_attributes(sqs, queues.csr)) > 0:
        assert time.monotonic() < deadline, f"the CSR queue did not drain: {queue_attributes(sqs, queues.csr)}"
        worker = subprocess.Popen(
            [str(helpers.binary_path("mtls_ca_sign")), str(args_file)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=module_env, cwd=str(tmp_path),
        )  # fmt: skip
        if kills < 10:
            # The kill moment is what is random here, not a wait for something.
            try:
                worker.wait(timeout=rng.uniform(0.05, 0.8))
            except subprocess.TimeoutExpired:
                worker.send_signal(signal.SIGKILL)  # our own child, by its Popen
                kills += 1
        out, err = worker.communicate(timeout=120)
        assert worker.returncode in (0, -signal.SIGKILL), f"{worker.returncode}: {out.decode()}{err.decode()}"
    assert kills >= 5, f"only {kills} runs were killed mid-drain"

    delivered = delivered_certificates(sqs, reply_urls)
    recorded = recorded_serials(audit)
    assert {instance_of(c) for c in delivered} == set(instances)
    missing = [format(c.serial_number, "x") for c in delivered if recorded.get(c.serial_number) != instance_of(c)]
    assert missing == [], f"{len(missing)} delivered certificates are not in the record: {missing[:5]}"
    revoke_all_and_check(run_module, ca, tmp_path, audit, delivered)


def test_sigterm_mid_drain_finishes_the_batches_in_hand_and_loses_nothing(sign_args, sqs, queues, module_env, ca, tmp_path):
    """A one-shot drain told to stop takes no more requests, finishes every batch in hand
    (answered, recorded, deleted) and says so; what it did not take waits in the queue."""
    count = 300
    _, reply_urls = queue_requests(sqs, queues, count, 0x500000)
    audit = tmp_path / "issuance.jsonl"
    args = sign_args(visibility_timeout=2, audit_log_path=str(audit), concurrency=16)
    args_file = helpers.write_args(tmp_path / "sign.json", "mtls_ca_sign", args)
    worker = subprocess.Popen(
        [str(helpers.binary_path("mtls_ca_sign")), str(args_file)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=module_env, cwd=str(tmp_path),
    )  # fmt: skip
    try:
        helpers.wait_for(lambda: audit.is_file() and audit.read_text().count("\n") >= 20, timeout=60, interval=0.02, what="the drain's first record lines")
        worker.send_signal(signal.SIGTERM)  # our own child, by its Popen
        out, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, f"{worker.returncode}: {out.decode()}{err.decode()}"
    result = helpers.parse_single_json(out.decode(), "mtls_ca_sign")
    assert_ok(result)
    assert any("stopped by a signal" in w for w in result.get("warnings", [])), describe(result)
    issued = result["issued"]
    assert 0 < issued < count, f"the signal did not stop the drain midway: {describe(result)}"
    assert result["left_for_retry"] == 0 and result["rejected"] == 0 and result["dead_lettered"] == 0, describe(result)

    # Every request issued was answered and recorded; none of them is still queued.
    delivered = delivered_certificates(sqs, reply_urls)
    assert len(delivered) == issued, f"{len(delivered)} certificates on the reply queues for {issued} issued"
    recorded = recorded_serials(audit)
    assert all(recorded.get(c.serial_number) == instance_of(c) for c in delivered), "a delivered certificate is not in the record"
    # The rest waits: a receive the signal cancelled gives its requests back after the visibility
    # timeout, so count once nothing is in flight.
    helpers.wait_for(lambda: queue_attributes(sqs, queues.csr)["in_flight"] == 0, timeout=30, what="the cancelled receives' requests back in the queue")
    assert queue_attributes(sqs, queues.csr)["visible"] == count - issued


def test_a_removed_or_altered_record_line_is_reported(make_node, sign, run_module, ca, tmp_path):
    nodes = [make_node(n) for n in range(1, 4)]
    audit = tmp_path / "issuance.jsonl"
    for node in nodes:
        assert_ok(*node.submit())
    result, proc = sign(audit_log_path=str(audit))
    assert_ok(result, proc)
    lines = audit.read_text().splitlines()
    assert len(lines) == 6, lines  # signed + issued for each

    def problems(text: str) -> list[str]:
        record = tmp_path / f"record-{uuid.uuid4().hex}.jsonl"
        record.write_text(text)
        crl_dir = tmp_path / f"crl-{uuid.uuid4().hex}"
        crl_dir.mkdir()
        result, proc = run_module("mtls_ca_revoke", revoke_args(ca, crl_dir, record, [nodes[0].instance_id]))
        assert_ok(result, proc)
        assert len(result.get("warnings") or []) >= len(result["issuance_record_problems"])
        return result["issuance_record_problems"]

    assert problems("\n".join(lines) + "\n") == []
    removed = lines[:2] + lines[3:]
    (problem,) = problems("\n".join(removed) + "\n")
    assert "line 3 does not follow line 2" in problem, problem
    altered = list(lines)
    altered[1] = altered[1].replace('"decision":"', '"decision":"x', 1)
    (problem,) = problems("\n".join(altered) + "\n")
    assert "line 3 does not follow line 2" in problem and "altered" in problem, problem
