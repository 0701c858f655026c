"""Seed compatibility (README "Wire format"): the seed article's own scripts,
unchanged, against our CA worker.

`seed/submit_csr.py` is the article's script as published; `seed/retrieve_cert.py` is its core
logic as published, completed with the argument parsing its Ansible task uses. Both reach moto
through AWS_ENDPOINT_URL_SQS, which boto3 honours. A request in the seed's exact format (no
field of ours) is signed by mtls_ca_sign under a policy with identity proof `none`, answered on
the shared certificate queue in the seed's format, and the seed's retrieve_cert.py installs a
certificate that `openssl verify` accepts against our root and chain. A seed request our policy
refuses goes to the dead-letter queue only: the seed's script never reads a rejection.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

import helpers
from helpers import assert_ok, describe, queue_attributes

SEED_DIR = Path(__file__).resolve().parent / "seed"
EMPTY = {"visible": 0, "in_flight": 0, "delayed": 0}
ONE = {**EMPTY, "visible": 1}


def run_seed(script: str, args: list[str], env: dict[str, str], stdin: str | None = None, timeout: float = 60):
    return subprocess.run(
        [sys.executable, str(SEED_DIR / script), *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def openssl_csr(directory: Path, instance_id: str, sans: list[str]) -> tuple[Path, str]:
    """Key and CSR as the seed's role makes them: RSA-2048, CN = instance id, DNS and IP SANs."""
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / "service.key"
    proc = subprocess.run(
        [
            "openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
            "-subj", f"/CN={instance_id}", "-addext", "subjectAltName=" + ",".join(sans),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    csr = proc.stdout
    assert csr.startswith("-----BEGIN CERTIFICATE REQUEST-----"), csr
    return key, csr


def seed_submit(csr_pem: str, instance_id: str, queues, env) -> str:
    proc = run_seed(
        "submit_csr.py",
        ["--queue-url", queues.csr, "--region", env["AWS_REGION"], "--instance-id", instance_id],
        env,
        stdin=csr_pem,
    )
    assert proc.returncode == 0, f"submit_csr.py failed:\n{proc.stdout}{proc.stderr}"
    out = json.loads(proc.stdout)
    assert out["status"] == "success" and out["message_id"], out
    return out["message_id"]


def peek(sqs, url):
    return helpers.receive_all(sqs, url, visibility_timeout=0)


@pytest.fixture
def seed_env(module_env):
    """The environment the seed scripts run with: moto's endpoint, region and dummy credentials."""
    assert module_env["AWS_ENDPOINT_URL_SQS"].startswith("http://127.0.0.1:")
    return dict(module_env)


def test_seed_request_is_signed_and_retrieved_by_the_seed_script(sign, queues, sqs, ca, tmp_path, seed_env):
    instance_id = "i-0123456789abcdef0"
    sans = ["DNS:seed1.fleet.internal", "IP:127.0.0.1"]
    key_path, csr_pem = openssl_csr(tmp_path / "node", instance_id, sans)
    seed_submit(csr_pem, instance_id, queues, seed_env)

    # The request is in the seed's exact format: its two fields, no field of ours.
    (message,) = peek(sqs, queues.csr)
    assert json.loads(message["Body"]) == {"instance_id": instance_id, "csr_pem": csr_pem}
    assert message["MessageAttributes"]["InstanceId"]["StringValue"] == instance_id

    signed, proc = sign()  # the session policy: identity_proof none, i-*, .fleet.internal, 127/8
    assert_ok(signed, proc)
    assert (signed["issued"], signed["rejected"], signed["dead_lettered"]) == (1, 0, 0), describe(signed, proc)
    assert queue_attributes(sqs, queues.csr) == EMPTY
    assert queue_attributes(sqs, queues.dlq) == EMPTY
    assert queue_attributes(sqs, queues.shared) == ONE
    assert helpers.queues_with_prefix(sqs, queues.reply_prefix) == [], "a seed request must not get a per-node queue"

    # Answered in the seed's format: its three fields (plus optional ones of ours), no `kind`.
    (answer,) = peek(sqs, queues.shared)
    body = json.loads(answer["Body"])
    assert {"instance_id", "certificate_pem", "ca_chain_pem"} <= set(body), body
    assert "kind" not in body and "reason_code" not in body, body
    assert body["instance_id"] == instance_id
    assert answer["MessageAttributes"]["InstanceId"]["StringValue"] == instance_id

    # The seed's retrieve_cert.py takes it and writes certificate and chain.
    cert_path, chain_path = tmp_path / "node" / "service.pem", tmp_path / "node" / "ca-chain.pem"
    started = time.monotonic()
    proc = run_seed(
        "retrieve_cert.py",
        [
            "--queue-url", queues.shared, "--region", seed_env["AWS_REGION"], "--instance-id", instance_id,
            "--cert-path", str(cert_path), "--chain-path", str(chain_path), "--timeout", "30",
        ],
        seed_env,
    )  # fmt: skip
    assert proc.returncode == 0, f"retrieve_cert.py failed:\n{proc.stdout}{proc.stderr}"
    assert "Certificate installed" in proc.stdout, proc.stdout
    assert time.monotonic() - started < 15, "retrieve_cert.py waited although the certificate was there"
    assert queue_attributes(sqs, queues.shared) == EMPTY, "the seed script deletes what it took"

    # The certificate verifies against our root with the chain the seed script wrote.
    for purpose in ("sslserver", "sslclient"):
        proc = subprocess.run(
            [
                "openssl",
                "verify",
                "-CAfile",
                str(ca.root_cert_path),
                "-untrusted",
                str(chain_path),
                "-purpose",
                purpose,
                str(cert_path),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 0 and proc.stdout.strip().endswith(": OK"), proc.stdout + proc.stderr
    leaf = helpers.load_cert(cert_path)
    assert helpers.load_certs(chain_path)[0] == helpers.load_cert(ca.intermediate_cert_path)
    assert helpers.common_name(leaf) == instance_id
    assert sorted(helpers.cert_sans(leaf)) == sorted(sans)
    assert helpers.spki_der(leaf.public_key()) == helpers.spki_der(helpers.load_private_key(key_path).public_key())
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is False
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku


def _tampered(csr_pem: str) -> str:
    return helpers.tamper_csr_signature(csr_pem)


SEED_REFUSALS = [
    # (id, CN, SANs, CSR transform, reason code)
    ("san-not-allowed", "i-0123456789abcdef1", ["DNS:www.evil.example.com"], None, "san_not_allowed"),
    ("cn-not-instance-id", "i-0ffffffffffffffff", ["DNS:seed2.fleet.internal"], None, "subject_mismatch"),
    ("tampered-signature", "i-0123456789abcdef1", ["DNS:seed2.fleet.internal"], _tampered, "csr_signature_invalid"),
]


@pytest.mark.parametrize("cn,sans,transform,code", [x[1:] for x in SEED_REFUSALS], ids=[x[0] for x in SEED_REFUSALS])
def test_refused_seed_request_goes_to_the_dead_letter_queue_only(
    cn, sans, transform, code, sign, queues, sqs, tmp_path, seed_env
):
    instance_id = "i-0123456789abcdef1"
    _, csr_pem = openssl_csr(tmp_path / "node", cn, sans)
    if transform:
        csr_pem = transform(csr_pem)
    seed_submit(csr_pem, instance_id, queues, seed_env)
    (sent,) = peek(sqs, queues.csr)

    audit = tmp_path / "audit.jsonl"
    signed, proc = sign(audit_log_path=str(audit))
    assert_ok(signed, proc)
    assert (signed["issued"], signed["rejected"], signed["dead_lettered"]) == (0, 0, 1), describe(signed, proc)
    assert signed["serials"] == []
    assert queue_attributes(sqs, queues.csr) == EMPTY
    assert queue_attributes(sqs, queues.shared) == EMPTY, "a rejection reached the seed's shared queue"
    assert helpers.queues_with_prefix(sqs, queues.reply_prefix) == []
    assert queue_attributes(sqs, queues.dlq) == ONE

    (dead,) = peek(sqs, queues.dlq)
    assert dead["Body"] == sent["Body"], "the dead-letter queue must hold the seed's body byte for byte"
    reason = dead["MessageAttributes"]["FleetpkiReason"]["StringValue"]
    assert reason.split(":", 1)[0] == code, reason
    assert dead["MessageAttributes"]["InstanceId"]["StringValue"] == instance_id

    lines = [json.loads(line) for line in audit.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0]["reason_code"] == code and lines[0]["instance_id"] == instance_id, lines
