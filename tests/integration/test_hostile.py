"""Hostile input, through the real binaries and moto.

- A corpus built by mutating one valid version-1 request (the node's own, taken off the CSR queue
  and republished with boto3) reaches every reason code of the worker: each is refused with its
  own code, answered to the node and/or dead-lettered, nothing is signed, and where the node is
  answered its `mtls_cert_fetch` fails at once naming the code.
- Forged certificate messages and fake rejections on a node's reply queue are ignored: nothing is
  installed, a warning says why, the installed pair is byte-for-byte unchanged, and the genuine
  answer still installs afterwards.
- The enrollment-secret proof: the end-to-end flow passes; a wrong, missing or too-old HMAC is
  refused.
- No private key or secret appears in any queue message, log line or module result.
- The audit log holds one JSON line per decision with the fields AUDIT_FIELDS lists.

Reason codes and their routing come from modules/fleetpki-core/src/policy.rs and
modules/fleetpki-modules/src/ca_sign.rs: integrity failures (`is_integrity_failure`) go to the
dead-letter queue with a `FleetpkiReason` attribute and, for a readable per-node v1 request, are
also answered to the node; policy refusals are answered on the node's reply queue only.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

import helpers
from helpers import assert_ok, describe, queue_attributes, tree_snapshot

EMPTY = {"visible": 0, "in_flight": 0, "delayed": 0}
ONE = {**EMPTY, "visible": 1}

# Where a refusal goes (ca_sign.rs, `refuse`).
ANSWER = "answer"  # policy refusal: a rejection on the node's reply queue, nothing dead-lettered
ANSWER_DLQ = "answer+dlq"  # integrity failure of a readable per-node v1 request: both
DLQ = "dlq"  # nothing to answer (unreadable, or no reply queue can be derived): dead-letter only

# The fields every audit line must have, under the names the worker writes.
AUDIT_FIELDS = (
    "time",
    "request_id",
    "instance_id",
    "sender_id",
    "decision",
    "reason_code",
    "serial",
    "not_after",
    "csr_sha256",
    "certificate_sha256",
    "prev_sha256",
)

# A fetch that is answered must return "at once": well under its 30 s timeout.
FETCH_TIMEOUT = 30
AT_ONCE_SECONDS = 10.0

ROLE_ID = "AROAEXAMPLENODEROLE01"  # a role id of the form AWS uses (AROA...), not moto's sender


# ------------------------------------------------------------------------------------------------
# Small builders
# ------------------------------------------------------------------------------------------------


def general_names(sans: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for san in sans:
        kind, value = san.split(":", 1)
        kind = kind.upper()
        if kind == "DNS":
            out.append(x509.DNSName(value))
        elif kind == "IP":
            out.append(x509.IPAddress(ipaddress.ip_address(value)))
        elif kind == "EMAIL":
            out.append(x509.RFC822Name(value))
        elif kind == "URI":
            out.append(x509.UniformResourceIdentifier(value))
        else:
            raise AssertionError(f"unknown SAN kind {kind}")
    return out


def build_csr(
    cn: str,
    sans: list[str],
    key=None,
    extensions: list[tuple[x509.ExtensionType, bool]] = (),
    algorithm=hashes.SHA256(),
    more_cns: tuple[str, ...] = (),
) -> str:
    """A CSR made with `cryptography` (CN, more CNs after it, SANs, extra requested extensions,
    signature hash)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name) for name in (cn, *more_cns)])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(general_names(sans)), critical=False)
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        algorithm = None
    csr = builder.sign(key, algorithm)
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def key_usage(**set_bits: bool) -> x509.KeyUsage:
    bits = dict(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    bits.update(set_bits)
    return x509.KeyUsage(**bits)


def pem_wrap(label: str, der: bytes) -> str:
    b64 = base64.b64encode(der).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def make_leaf(
    issuer: x509.Certificate,
    issuer_key,
    public_key,
    cn: str,
    sans: list[str],
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    ekus=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
    ca: bool = False,
) -> x509.Certificate:
    """A leaf like our worker's, with every property the forgeries vary exposed."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True, key_cert_sign=ca, crl_sign=ca), critical=True)
        .add_extension(x509.SubjectAlternativeName(general_names(sans)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()), critical=False)
    )
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def enrollment_hmac(secret: str, request_id: str, timestamp: int, instance_id: str, profile: str, csr_pem: str) -> str:
    """The enrollment proof, computed independently of the Rust code from its documented input
    (`fleetpki-enrollment-v1`, request id, timestamp, instance id, profile, CSR; HMAC-SHA256, hex)."""
    text = f"fleetpki-enrollment-v1\n{request_id}\n{timestamp}\n{instance_id}\n{profile}\n{csr_pem}"
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def enrollment_hmac_v2(secret: str, body: dict[str, Any]) -> str:
    """The v2 proof nodes send, computed independently of the Rust code from docs/interfaces.md,
    "Enrollment HMAC": `v2:` + HMAC-SHA256 of a whitespace-free JSON array of every field."""
    fields = [
        "fleetpki-enrollment-v2",
        body.get("version"),
        body.get("request_id"),
        body.get("timestamp"),
        body["instance_id"],
        body.get("profile") or "mtls",
        body.get("lifetime_days"),
        body.get("reply_mode") or ("per_node" if "version" in body else "shared"),
        body["csr_pem"],
    ]
    text = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
    return "v2:" + hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def reason_code_of(reason_attribute: str) -> str:
    """FleetpkiReason is `<code>: <message>`; the code is what the tests compare."""
    return reason_attribute.split(":", 1)[0].strip()


def peek(sqs, url: str) -> list[dict[str, Any]]:
    """Every visible message of a queue, left visible (raises receive counts: use where done)."""
    return helpers.receive_all(sqs, url, visibility_timeout=0)


def all_messages(sqs, queues) -> dict[str, list[dict[str, Any]]]:
    return {url: peek(sqs, url) for url in helpers.queues_with_prefix(sqs, queues.prefix)}


def assert_no_certificate_anywhere(sqs, queues) -> None:
    """No certificate message (our kind or the seed's: a `certificate_pem` field) on any queue."""
    for url, messages in all_messages(sqs, queues).items():
        for m in messages:
            assert "certificate_pem" not in m["Body"], f"a certificate was published on {url}: {m['Body'][:300]}"


def read_audit(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = []
    for line in lines:
        value = json.loads(line)  # every line is one JSON object
        assert isinstance(value, dict), line
        out.append(value)
    return out


def assert_audit_line(line: dict[str, Any]) -> None:
    missing = [f for f in AUDIT_FIELDS if f not in line]
    assert not missing, f"audit line lacks {missing}: {line}"
    t = dt.datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.UTC) - t).total_seconds()) < 600, f"audit time {line['time']} is not now"


def csr_digests(csr_pem: str) -> set[str]:
    """SHA-256 of a CSR as the audit log may give it: of the DER inside its PEM block (even when
    that DER is not a valid CSR), or of the text the message carried when it holds no PEM."""
    out = {hashlib.sha256(csr_pem.encode()).hexdigest()}
    try:
        der = x509.load_pem_x509_csr(csr_pem.encode()).public_bytes(serialization.Encoding.DER)
        out.add(hashlib.sha256(der).hexdigest())
    except ValueError:
        pass
    lines = csr_pem.strip().splitlines()
    if len(lines) >= 2 and lines[0].startswith("-----BEGIN ") and lines[-1].startswith("-----END "):
        try:
            out.add(hashlib.sha256(base64.b64decode("".join(lines[1:-1]), validate=True)).hexdigest())
        except ValueError:
            pass
    return out


def timed_fetch(node, **overrides):
    started = time.monotonic()
    result, proc = node.fetch(**overrides)
    return result, proc, time.monotonic() - started


# ------------------------------------------------------------------------------------------------
# The base request: the node's own valid v1 request, taken off the CSR queue
# ------------------------------------------------------------------------------------------------


@dataclass
class Base:
    node: Any
    body: dict[str, Any]
    attrs: dict[str, str]
    sender_id: str
    submitted: dict[str, Any]
    proc: Any = None

    @property
    def request_id(self) -> str:
        return self.body["request_id"]


def intercept(node, sqs, queues, **submit_overrides) -> Base:
    """Runs the node's mtls_csr_submit, then takes its request off the CSR queue (receive+delete)."""
    submitted, proc = node.submit(**submit_overrides)
    assert_ok(submitted, proc)
    assert submitted["submitted"] is True, describe(submitted, proc)
    assert queue_attributes(sqs, queues.csr) == ONE, "intercept expects the node's request alone in the CSR queue"
    messages = helpers.receive_all(sqs, queues.csr, visibility_timeout=60)
    assert len(messages) == 1, messages
    message = messages[0]
    sqs.delete_message(QueueUrl=queues.csr, ReceiptHandle=message["ReceiptHandle"])
    body = json.loads(message["Body"])
    assert body["version"] == 1 and body["request_id"] == submitted["request_id"], body
    assert body["instance_id"] == node.instance_id
    attrs = {k: v["StringValue"] for k, v in message.get("MessageAttributes", {}).items()}
    assert attrs == {"InstanceId": node.instance_id}, attrs
    assert queue_attributes(sqs, queues.csr) == EMPTY
    return Base(
        node=node, body=body, attrs=attrs, sender_id=message["Attributes"]["SenderId"], submitted=submitted, proc=proc
    )


def publish(sqs, url: str, body: str, attrs: dict[str, str]) -> None:
    sqs.send_message(
        QueueUrl=url,
        MessageBody=body,
        MessageAttributes={k: {"DataType": "String", "StringValue": v} for k, v in attrs.items()},
    )


# ------------------------------------------------------------------------------------------------
# The corpus
# ------------------------------------------------------------------------------------------------

Mutation = Callable[[Base], tuple[str, dict[str, str]]]


def set_fields(**changes: Any) -> Mutation:
    def mutate(base: Base):
        body = dict(base.body)
        body.update(changes)
        return json.dumps(body), dict(base.attrs)

    return mutate


def drop_fields(*names: str) -> Mutation:
    def mutate(base: Base):
        body = {k: v for k, v in base.body.items() if k not in names}
        return json.dumps(body), dict(base.attrs)

    return mutate


def raw_body(text: str) -> Mutation:
    return lambda base: (text, dict(base.attrs))


def with_csr(make: Callable[[Any], str]) -> Mutation:
    """Replaces the CSR with one made for the node (its CN and SANs unless `make` says otherwise)."""

    def mutate(base: Base):
        body = dict(base.body)
        body["csr_pem"] = make(base.node)
        return json.dumps(body), dict(base.attrs)

    return mutate


def with_attrs(**changes: str | None) -> Mutation:
    def mutate(base: Base):
        attrs = dict(base.attrs)
        for k, v in changes.items():
            if v is None:
                attrs.pop(k, None)
            else:
                attrs[k] = v
        return json.dumps(base.body), attrs

    return mutate


def with_timestamp(delta_seconds: int) -> Mutation:
    def mutate(base: Base):
        body = dict(base.body)
        body["timestamp"] = int(time.time()) + delta_seconds
        return json.dumps(body), dict(base.attrs)

    return mutate


def unchanged(base: Base):
    return json.dumps(base.body), dict(base.attrs)


def other_instance_body(base: Base):
    """The body claims another (valid, policy-allowed) instance that has no reply queue."""
    body = dict(base.body)
    body["instance_id"] = "i-0aaaaaaaaaaaaaaaa"
    return json.dumps(body), dict(base.attrs)


def padded(size: int) -> Mutation:
    def mutate(base: Base):
        body = dict(base.body)
        body["padding"] = "x" * size  # an unknown field: ignored when small, but over the limit here
        return json.dumps(body), dict(base.attrs)

    return mutate


def csr_ca_true(node):
    return build_csr(node.instance_id, node.sans, extensions=[(x509.BasicConstraints(ca=True, path_length=None), True)])


def csr_key_cert_sign(node):
    return build_csr(
        node.instance_id, node.sans, extensions=[(key_usage(digital_signature=True, key_cert_sign=True), True)]
    )


def csr_crl_sign(node):
    return build_csr(node.instance_id, node.sans, extensions=[(key_usage(digital_signature=True, crl_sign=True), True)])


def csr_unknown_critical(node):
    ext = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.7.1"), b"\x05\x00")
    return build_csr(node.instance_id, node.sans, extensions=[(ext, True)])


def csr_too_large(node):
    return "-----BEGIN CERTIFICATE REQUEST-----\n" + ("A" * 64 + "\n") * 270 + "-----END CERTIFICATE REQUEST-----\n"


def csr_certificate_block(node):
    # A well-formed PEM of the wrong kind (a certificate, not a request).
    return helpers.pem(helpers.make_ca()[0])


GARBAGE_CSR = "-----BEGIN CERTIFICATE REQUEST-----\nnot*base64*at*all\n-----END CERTIFICATE REQUEST-----\n"
DER_GARBAGE_CSR = pem_wrap("CERTIFICATE REQUEST", b"\x30\x03\x02\x01\x01" + os.urandom(40))


@dataclass(frozen=True)
class Case:
    id: str
    code: str
    route: str
    mutate: Mutation
    policy: dict[str, Any] = field(default_factory=dict)  # overrides of helpers.write_policy
    inline_policy: bool = False  # pass the policy as the `policy` dict instead of a file
    enroll: bool = False  # node submits with its enrollment secret (policy enrollment_secret)


NODE1 = "i-00000000000000001"
SECRET1 = "enroll-secret-node1-" + uuid.uuid4().hex
ENROLL_POLICY = {
    "identity_proof": "enrollment_secret",
    "enrollment_secrets": {NODE1: SECRET1, "i-00000000000000002": "enroll-secret-node2-" + uuid.uuid4().hex},
}

CORPUS = [
    # --- limits and JSON shape (integrity: dead-lettered) ---------------------------------------
    Case("body-not-json", "message_malformed", DLQ, raw_body("this is { not json")),
    Case("body-json-array", "message_malformed", DLQ, raw_body("[1, 2, 3]")),
    Case("body-too-large", "message_too_large", DLQ, padded(65 * 1024)),
    Case("instance_id-missing", "message_malformed", DLQ, drop_fields("instance_id")),
    Case("instance_id-wrong-type", "message_malformed", DLQ, set_fields(instance_id=12345)),
    Case("instance_id-invalid-chars", "instance_id_invalid", DLQ, set_fields(instance_id="i-../../evil queue")),
    Case("csr_pem-missing", "message_malformed", DLQ, drop_fields("csr_pem")),
    Case("csr_pem-wrong-type", "message_malformed", DLQ, set_fields(csr_pem=["-----BEGIN CERTIFICATE REQUEST-----"])),
    Case("version-wrong-type", "message_malformed", DLQ, set_fields(version="1")),
    Case("request_id-wrong-type", "message_malformed", DLQ, set_fields(request_id=42)),
    Case("request_id-missing", "message_malformed", DLQ, drop_fields("request_id")),
    Case("timestamp-wrong-type", "message_malformed", DLQ, set_fields(timestamp="yesterday")),
    Case("profile-unknown-value", "message_malformed", DLQ, set_fields(profile="admin")),
    Case("lifetime_days-negative", "message_malformed", DLQ, set_fields(lifetime_days=-1)),
    Case("lifetime_days-wrong-type", "message_malformed", DLQ, set_fields(lifetime_days="30")),
    Case("reply_mode-unknown-value", "message_malformed", DLQ, set_fields(reply_mode="broadcast")),
    Case("identity_proof-wrong-type", "message_malformed", DLQ, set_fields(identity_proof="trust me")),
    # No reply queue can be derived for the instance the body names: dead-lettered with the code.
    Case("instance_id-other-instance-without-queue", "instance_id_mismatch", DLQ, other_instance_body),
    # --- readable per-node v1 request, integrity failure: dead-lettered AND answered ------------
    Case("version-2", "unsupported_version", ANSWER_DLQ, set_fields(version=2)),
    Case("timestamp-missing", "message_malformed", ANSWER_DLQ, drop_fields("timestamp")),
    Case("csr_pem-too-large", "csr_too_large", ANSWER_DLQ, with_csr(csr_too_large)),
    Case("csr_pem-not-pem", "csr_malformed", ANSWER_DLQ, set_fields(csr_pem="hello, I am a CSR")),
    Case("csr_pem-bad-base64", "csr_malformed", ANSWER_DLQ, set_fields(csr_pem=GARBAGE_CSR)),
    Case("csr_pem-bad-der", "csr_malformed", ANSWER_DLQ, set_fields(csr_pem=DER_GARBAGE_CSR)),
    Case("csr_pem-certificate-block", "csr_malformed", ANSWER_DLQ, with_csr(csr_certificate_block)),
    Case(
        "csr-signature-tampered",
        "csr_signature_invalid",
        ANSWER_DLQ,
        with_csr(lambda n: helpers.tamper_csr_signature(build_csr(n.instance_id, n.sans))),
    ),
    Case(
        "csr-signature-ecdsa-sha512",
        "csr_signature_algorithm",
        ANSWER_DLQ,
        with_csr(lambda n: build_csr(n.instance_id, n.sans, algorithm=hashes.SHA512())),
    ),
    # --- policy refusals: answered to the node only ---------------------------------------------
    Case("attribute-InstanceId-missing", "instance_id_mismatch", ANSWER, with_attrs(InstanceId=None)),
    Case("attribute-InstanceId-other", "instance_id_mismatch", ANSWER, with_attrs(InstanceId="i-0bbbbbbbbbbbbbbbb")),
    Case(
        "csr-cn-not-instance-id",
        "subject_mismatch",
        ANSWER,
        with_csr(lambda n: build_csr("i-0ccccccccccccccccc", n.sans)),
    ),
    # The first CN is this node's, a second names another node.
    Case(
        "csr-two-cns",
        "subject_mismatch",
        ANSWER,
        with_csr(lambda n: build_csr(n.instance_id, n.sans, more_cns=("i-0bbbbbbbbbbbbbbbb",))),
    ),
    # --- reply routes the policy does not allow: decided before anything is signed ------------
    Case("reply_mode-per_node-not-allowed", "reply_mode_not_allowed", ANSWER, unchanged, policy={"reply_modes": ["shared"]}),
    # A shared-mode request cannot be told on its node's own queue: dead-lettered.
    Case(
        "reply_mode-shared-not-allowed",
        "reply_mode_not_allowed",
        DLQ,
        set_fields(reply_mode="shared"),
        policy={"reply_modes": ["per_node"]},
    ),
    Case(
        "instance-not-in-policy",
        "instance_not_allowed",
        ANSWER,
        unchanged,
        policy={"instances": [{"instance_id": "i-0ddddddddddddddd0", "dns_suffixes": [".fleet.internal"]}]},
    ),
    Case(
        "san-dns-not-allowed",
        "san_not_allowed",
        ANSWER,
        with_csr(lambda n: build_csr(n.instance_id, [*n.sans, "DNS:www.evil.example.com"])),
    ),
    Case(
        "san-ip-not-allowed",
        "san_not_allowed",
        ANSWER,
        with_csr(lambda n: build_csr(n.instance_id, [*n.sans, "IP:10.9.9.9"])),
    ),
    Case(
        "san-wildcard-under-allowed-suffix",
        "san_not_allowed",
        ANSWER,
        with_csr(lambda n: build_csr(n.instance_id, ["DNS:*.fleet.internal"])),
    ),
    Case(
        "san-email",
        "san_unsupported",
        ANSWER,
        with_csr(lambda n: build_csr(n.instance_id, [*n.sans, "email:root@node1.fleet.internal"])),
    ),
    Case(
        "san-uri",
        "san_unsupported",
        ANSWER,
        with_csr(lambda n: build_csr(n.instance_id, [*n.sans, "URI:spiffe://fleet/node1"])),
    ),
    Case(
        "key-rsa-1024",
        "key_too_small",
        ANSWER,
        with_csr(lambda n: build_csr(n.instance_id, n.sans, key=rsa.generate_private_key(65537, 1024))),
    ),
    Case(
        "key-rsa-2048-below-policy-minimum",
        "key_too_small",
        ANSWER,
        with_csr(lambda n: build_csr(n.instance_id, n.sans, key=rsa.generate_private_key(65537, 2048))),
        policy={"rsa_min_bits": 3072},
    ),
    Case(
        "key-ec-p521",
        "key_type_not_allowed",
        ANSWER,
        with_csr(
            lambda n: build_csr(
                n.instance_id, n.sans, key=ec.generate_private_key(ec.SECP521R1()), algorithm=hashes.SHA512()
            )
        ),
    ),
    Case(
        "key-ed25519",
        "key_type_not_allowed",
        ANSWER,
        with_csr(lambda n: build_csr(n.instance_id, n.sans, key=ed25519.Ed25519PrivateKey.generate())),
    ),
    Case(
        "key-ec-p384-not-in-policy",
        "key_type_not_allowed",
        ANSWER,
        with_csr(
            lambda n: build_csr(
                n.instance_id, n.sans, key=ec.generate_private_key(ec.SECP384R1()), algorithm=hashes.SHA384()
            )
        ),
        policy={"ec_curves": ["secp256r1"]},
    ),
    Case("csr-ca-true", "ca_requested", ANSWER, with_csr(csr_ca_true)),
    Case("csr-key-cert-sign", "ca_requested", ANSWER, with_csr(csr_key_cert_sign)),
    Case("csr-crl-sign", "ca_requested", ANSWER, with_csr(csr_crl_sign)),
    Case("csr-unknown-critical-extension", "critical_extension", ANSWER, with_csr(csr_unknown_critical)),
    Case("lifetime_days-over-maximum", "lifetime_not_allowed", ANSWER, set_fields(lifetime_days=365)),
    Case("lifetime_days-zero", "lifetime_not_allowed", ANSWER, set_fields(lifetime_days=0)),
    Case(
        "profile-not-allowed",
        "profile_not_allowed",
        ANSWER,
        set_fields(profile="server"),
        policy={"profiles": ["mtls"]},
    ),
    Case("timestamp-too-old", "request_expired", ANSWER, with_timestamp(-(86_400 + 600))),
    Case("timestamp-in-the-future", "request_expired", ANSWER, with_timestamp(3600)),
    Case(
        "sender-id-not-the-node",
        "sender_mismatch",
        ANSWER,
        unchanged,
        policy={"identity_proof": "sqs_sender_id", "sender_role_ids": [ROLE_ID]},
        inline_policy=True,
    ),
    Case(
        "identity_proof-missing",
        "identity_proof_missing",
        ANSWER,
        drop_fields("identity_proof"),
        policy=ENROLL_POLICY,
        enroll=True,
    ),
    Case(
        "identity_proof-other-type",
        "identity_proof_missing",
        ANSWER,
        set_fields(identity_proof={"type": "password", "hmac": "00" * 32}),
        policy=ENROLL_POLICY,
        enroll=True,
    ),
    Case(
        "identity_proof-wrong-hmac",
        "identity_proof_invalid",
        ANSWER,
        set_fields(identity_proof={"type": "enrollment_secret", "hmac": "00" * 32}),
        policy=ENROLL_POLICY,
        enroll=True,
    ),
    Case(
        "identity_proof-hmac-not-hex",
        "identity_proof_invalid",
        ANSWER,
        set_fields(identity_proof={"type": "enrollment_secret", "hmac": "zz" * 32}),
        policy=ENROLL_POLICY,
        enroll=True,
    ),
    Case(
        "identity_proof-no-secret-for-instance",
        "identity_proof_invalid",
        ANSWER,
        unchanged,
        policy={"identity_proof": "enrollment_secret", "enrollment_secrets": {"i-0eeeeeeeeeeeeeee0": "x" * 32}},
        enroll=True,
    ),
    # The request carries a valid HMAC but was made for another profile than the one it asks for.
    Case(
        "identity_proof-profile-changed-after-signing",
        "identity_proof_invalid",
        ANSWER,
        set_fields(profile="client"),
        policy=ENROLL_POLICY,
        enroll=True,
    ),
]

ALL_REASON_CODES = {
    "message_too_large", "message_malformed", "unsupported_version", "csr_too_large", "csr_malformed",
    "csr_signature_algorithm", "csr_signature_invalid", "instance_id_invalid", "instance_id_mismatch",
    "instance_not_allowed", "san_not_allowed", "san_unsupported", "key_type_not_allowed", "key_too_small",
    "ca_requested", "critical_extension", "lifetime_not_allowed", "profile_not_allowed",
    "identity_proof_missing", "identity_proof_invalid", "sender_mismatch", "request_expired",
    "signer_refused", "subject_mismatch", "reply_mode_not_allowed",
}  # fmt: skip
# Reached only through a remote signer (KMS, Private CA): tests/integration/test_signers.py.
REMOTE_SIGNER_CODES = {"signer_refused"}


def test_corpus_reaches_every_reason_code_of_the_worker():
    """The corpus covers every code the worker lists (`mtls_ca_sign --reason-codes`): a new code
    without a case fails here."""
    listed = subprocess.run(
        [str(helpers.binary_path("mtls_ca_sign")), "--reason-codes"], capture_output=True, text=True, timeout=30, check=True
    )
    codes = {entry["code"]: entry["dead_lettered"] for entry in json.loads(listed.stdout)}
    assert set(codes) == ALL_REASON_CODES, f"the worker's codes changed: {set(codes) ^ ALL_REASON_CODES}"
    expected = ALL_REASON_CODES - REMOTE_SIGNER_CODES
    assert {c.code for c in CORPUS} == expected, expected - {c.code for c in CORPUS}
    # The listing agrees with the routes the corpus observes: a policy answer is never
    # dead-lettered, an integrity failure always is (DLQ-only cases also cover requests that
    # cannot be answered at all, whatever their code).
    for case in CORPUS:
        if case.route in (ANSWER, ANSWER_DLQ):
            assert codes[case.code] == (case.route == ANSWER_DLQ), f"{case.id}: {case.code} listed as dead_lettered={codes[case.code]}"


def policy_args(case: Case, tmp_path: Path) -> dict[str, Any]:
    if case.inline_policy:
        policy = {
            "identity_proof": "none",
            "instances": [
                {"instance_id_pattern": "i-*", "dns_suffixes": [".fleet.internal"], "ip_networks": ["127.0.0.0/8"]}
            ],
        }
        policy.update(case.policy)
        return {"policy": policy, "policy_path": None}
    path = helpers.write_policy(tmp_path / "policy.json", **case.policy)
    return {"policy_path": str(path)}


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_corpus_request_is_refused_with_its_reason(case: Case, make_node, sign, queues, sqs, tmp_path):
    node = make_node(1)
    assert node.instance_id == NODE1
    base = intercept(node, sqs, queues, **({"enrollment_secret": SECRET1} if case.enroll else {}))
    reply_url = base.submitted["reply_queue_url"]
    body, attrs = case.mutate(base)
    publish(sqs, queues.csr, body, attrs)

    audit = tmp_path / "audit.jsonl"
    signed, proc = sign(audit_log_path=str(audit), **policy_args(case, tmp_path))
    assert_ok(signed, proc)

    # Nothing signed; counted where the route says.
    answered = case.route in (ANSWER, ANSWER_DLQ)
    dead = case.route in (DLQ, ANSWER_DLQ)
    assert signed["issued"] == 0 and signed["serials"] == [], describe(signed, proc)
    assert signed["dead_lettered"] == (1 if dead else 0), describe(signed, proc)
    assert signed["rejected"] == (1 if case.route == ANSWER else 0), describe(signed, proc)
    assert queue_attributes(sqs, queues.csr) == EMPTY, "the refused request stayed in the CSR queue"
    assert queue_attributes(sqs, queues.shared) == EMPTY
    assert queue_attributes(sqs, queues.dlq) == (ONE if dead else EMPTY)
    assert queue_attributes(sqs, reply_url) == (ONE if answered else EMPTY)
    assert_no_certificate_anywhere(sqs, queues)

    if dead:
        (message,) = peek(sqs, queues.dlq)
        assert message["Body"] == body, "the dead-letter queue must hold the original body byte for byte"
        dlq_attrs = message.get("MessageAttributes", {})
        assert "FleetpkiReason" in dlq_attrs, dlq_attrs
        assert reason_code_of(dlq_attrs["FleetpkiReason"]["StringValue"]) == case.code, dlq_attrs
        if "InstanceId" in attrs:
            assert dlq_attrs["InstanceId"]["StringValue"] == attrs["InstanceId"], dlq_attrs

    if answered:
        (message,) = peek(sqs, reply_url)
        reply = json.loads(message["Body"])
        assert reply.get("kind") == "rejection", reply
        assert reply["version"] == 1
        assert reply["request_id"] == base.request_id, reply
        assert reply["instance_id"] == node.instance_id, reply
        assert reply["reason_code"] == case.code, reply
        assert isinstance(reply["message"], str) and reply["message"], reply
        assert message["MessageAttributes"]["InstanceId"]["StringValue"] == node.instance_id

    # One audit line for the decision.
    lines = read_audit(audit)
    assert len(lines) == 1, lines
    line = lines[0]
    assert_audit_line(line)
    assert line["decision"] == ("rejected" if case.route == ANSWER else "dead_lettered"), line
    assert line["reason_code"] == case.code, line
    assert line["serial"] is None and line["certificate_sha256"] is None and line["not_after"] is None, line
    assert line["sender_id"] == base.sender_id, line
    parsed = None
    try:
        parsed = json.loads(body)
    except ValueError:
        pass
    readable = (
        isinstance(parsed, dict)
        and isinstance(parsed.get("csr_pem"), str)
        and case.code
        not in (
            "message_too_large",
            "message_malformed",
        )
    )
    if readable:
        assert line["instance_id"] == parsed["instance_id"], line
        assert line["request_id"] == parsed.get("request_id"), line
        assert line["csr_sha256"] in csr_digests(parsed["csr_pem"]), line

    # The node: answered -> its fetch fails at once naming the reason; otherwise it still waits.
    if answered:
        result, proc, elapsed = timed_fetch(node, wait=True, timeout=FETCH_TIMEOUT)
        assert result.get("failed") is True, describe(result, proc)
        assert case.code in result["msg"], f"the fetch failure does not name {case.code}: {result['msg']!r}"
        assert elapsed < AT_ONCE_SECONDS, f"the fetch took {elapsed:.1f}s: it did not fail at once"
    else:
        result, proc = node.fetch(wait=False)
        assert_ok(result, proc)
        assert result["status"] == "pending", describe(result, proc)
    assert not os.path.lexists(node.current), "a refused request led to an installed certificate"


def test_corpus_base_request_is_signed_and_installed(make_node, sign, queues, sqs, tmp_path):
    """Positive control for the corpus: the intercepted request, republished unchanged through the
    same path, is signed and installed (so each refusal above is due to its one mutation)."""
    node = make_node(1)
    base = intercept(node, sqs, queues)
    body, attrs = unchanged(base)
    publish(sqs, queues.csr, body, attrs)
    audit = tmp_path / "audit.jsonl"
    signed, proc = sign(audit_log_path=str(audit))
    assert_ok(signed, proc)
    assert (signed["issued"], signed["rejected"], signed["dead_lettered"]) == (1, 0, 0), describe(signed, proc)
    result, proc, elapsed = timed_fetch(node)
    assert_ok(result, proc)
    assert result["status"] == "installed", describe(result, proc)
    assert elapsed < AT_ONCE_SECONDS
    # Recorded before it was sent (`signed`), then its delivery (`issued`), the chain unbroken.
    signed_line, line = read_audit(audit)
    for entry in (signed_line, line):
        assert_audit_line(entry)
    assert signed_line["decision"] == "signed" and signed_line["serial"] == line["serial"], signed_line
    assert line["decision"] == "issued" and line["reason_code"] is None, line
    first, _second = audit.read_text().splitlines()
    assert json.loads(first)["prev_sha256"] == "0" * 64
    assert line["prev_sha256"] == hashlib.sha256(first.encode()).hexdigest(), line


@pytest.mark.parametrize(
    "policy,enroll",
    [
        ({}, False),
        ({"identity_proof": "enrollment_secret", "enrollment_secrets": ENROLL_POLICY["enrollment_secrets"]}, True),
    ],
    ids=["proof-none", "proof-enrollment-secret"],
)
def test_harmless_non_critical_extensions_are_ignored_not_copied(
    policy, enroll, make_node, sign, queues, sqs, tmp_path, ca
):
    """A CSR with harmless non-critical extensions (an unknown one, an EKU asking for codeSigning)
    is signed; none of them is copied into the certificate."""
    node = make_node(1)
    base = intercept(node, sqs, queues, **({"enrollment_secret": SECRET1} if enroll else {}))
    key = helpers.load_private_key(node.pending_key)
    unknown = ObjectIdentifier("1.3.6.1.4.1.55555.7.2")
    csr_pem = build_csr(
        node.instance_id,
        node.sans,
        key=key,
        extensions=[
            (x509.UnrecognizedExtension(unknown, b"\x05\x00"), False),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False),
        ],
    )
    body = dict(base.body, csr_pem=csr_pem)
    if enroll:
        body["identity_proof"] = {
            "type": "enrollment_secret",
            "hmac": enrollment_hmac(
                SECRET1, body["request_id"], body["timestamp"], node.instance_id, body["profile"], csr_pem
            ),
        }
    publish(sqs, queues.csr, json.dumps(body), base.attrs)
    signed, proc = sign(policy_path=str(helpers.write_policy(tmp_path / "policy.json", **policy)))
    assert_ok(signed, proc)
    assert signed["issued"] == 1, describe(signed, proc)
    result, proc = node.fetch()
    assert_ok(result, proc)
    assert result["status"] == "installed", describe(result, proc)
    leaf = helpers.load_cert(node.current / "cert.pem")
    oids = {e.oid for e in leaf.extensions}
    assert unknown not in oids, "an unknown requested extension was copied into the certificate"
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CODE_SIGNING not in eku, "a requested EKU was copied into the certificate"


# ------------------------------------------------------------------------------------------------
# Forged certificate messages and fake rejections on the node's reply queue
# ------------------------------------------------------------------------------------------------


@dataclass
class Forgery:
    """Context for building a forged reply: the node with an installed pair and a pending request."""

    node: Any
    ca: Any
    request_id: str  # the pending request
    previous_request_id: str  # the request whose certificate is installed
    pending_public_key: Any
    intermediate: x509.Certificate
    intermediate_key: Any
    root: x509.Certificate

    def chain(self) -> list[x509.Certificate]:
        return [self.intermediate, self.root]

    def message(self, leaf: x509.Certificate, chain=None, request_id: str | None = None) -> str:
        return json.dumps(
            helpers.certificate_message(
                leaf, chain or self.chain(), self.node.instance_id, request_id or self.request_id
            )
        )

    def leaf(self, **overrides) -> x509.Certificate:
        args = dict(
            issuer=self.intermediate,
            issuer_key=self.intermediate_key,
            public_key=self.pending_public_key,
            cn=self.node.instance_id,
            sans=self.node.sans,
        )
        args.update(overrides)
        return make_leaf(**args)


def forged_other_key(f: Forgery) -> str:
    return f.message(f.leaf(public_key=ec.generate_private_key(ec.SECP256R1()).public_key()))


def forged_foreign_ca(f: Forgery) -> str:
    f_root, f_inter, f_key = helpers.make_ca(f.root.subject, f.intermediate.subject)
    return f.message(f.leaf(issuer=f_inter, issuer_key=f_key), chain=[f_inter, f_root])


def forged_foreign_intermediate_our_root(f: Forgery) -> str:
    _, f_inter, f_key = helpers.make_ca(f.root.subject, f.intermediate.subject)
    return f.message(f.leaf(issuer=f_inter, issuer_key=f_key), chain=[f_inter, f.root])


def forged_expired(f: Forgery) -> str:
    now = dt.datetime.now(dt.UTC)
    return f.message(f.leaf(not_before=now - dt.timedelta(days=40), not_after=now - dt.timedelta(days=10)))


def forged_not_yet_valid(f: Forgery) -> str:
    now = dt.datetime.now(dt.UTC)
    return f.message(f.leaf(not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=31)))


def forged_extra_name(f: Forgery) -> str:
    return f.message(f.leaf(sans=[*f.node.sans, "DNS:www.evil.example.com"]))


def forged_missing_name(f: Forgery) -> str:
    return f.message(f.leaf(sans=f.node.sans[:1]))


def forged_other_cn(f: Forgery) -> str:
    return f.message(f.leaf(cn="i-0ffffffffffffffff"))


def forged_server_only(f: Forgery) -> str:
    # The seed worker's shape (serverAuth only): the mtls profile needs clientAuth too.
    return f.message(f.leaf(ekus=(ExtendedKeyUsageOID.SERVER_AUTH,)))


def forged_ca_certificate(f: Forgery) -> str:
    return f.message(f.leaf(ca=True))


def forged_stale_request_id(f: Forgery) -> str:
    # Otherwise perfect (our CA, the pending key, the names): only the request id is the old one.
    return f.message(f.leaf(), request_id=f.previous_request_id)


def forged_unknown_request_id(f: Forgery) -> str:
    return f.message(f.leaf(), request_id=str(uuid.uuid4()))


def forged_no_request_id(f: Forgery) -> str:
    body = json.loads(f.message(f.leaf()))
    del body["request_id"]
    return json.dumps(body)


def forged_garbage_pem(f: Forgery) -> str:
    body = json.loads(f.message(f.leaf()))
    body["certificate_pem"] = "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n"
    return json.dumps(body)


def forged_not_json(f: Forgery) -> str:
    return "-----BEGIN CERTIFICATE----- this is not a message {"


def forged_huge_body(f: Forgery) -> str:
    body = json.loads(f.message(f.leaf(public_key=ec.generate_private_key(ec.SECP256R1()).public_key())))
    body["certificate_pem"] = pem_wrap("CERTIFICATE", os.urandom(150 * 1024))  # ~200 KB of PEM
    text = json.dumps(body)
    assert 190 * 1024 < len(text) < 256 * 1024, len(text)
    return text


def fake_rejection(request_id_of: Callable[[Forgery], str], instance_id_of=None) -> Callable[[Forgery], str]:
    def build(f: Forgery) -> str:
        return json.dumps(
            {
                "version": 1,
                "kind": "rejection",
                "instance_id": instance_id_of(f) if instance_id_of else f.node.instance_id,
                "request_id": request_id_of(f),
                "reason_code": "san_not_allowed",
                "message": "forged rejection",
            }
        )

    return build


def fake_rejection_without_request_id(f: Forgery) -> str:
    return json.dumps(
        {
            "version": 1,
            "kind": "rejection",
            "instance_id": f.node.instance_id,
            "reason_code": "san_not_allowed",
            "message": "x",
        }
    )


# (id, builder, what the fetch warning must contain: a reason code, or "request" for discards)
FORGERIES = [
    ("certificate-for-another-key", forged_other_key, ["certificate_key_mismatch"]),
    ("foreign-ca-with-our-dn", forged_foreign_ca, ["certificate_untrusted"]),
    ("foreign-intermediate-with-our-dn-and-our-root", forged_foreign_intermediate_our_root, ["certificate_untrusted"]),
    ("expired-by-our-intermediate", forged_expired, ["certificate_expired"]),
    ("not-yet-valid-by-our-intermediate", forged_not_yet_valid, ["certificate_not_yet_valid"]),
    ("wrong-names-extra-san", forged_extra_name, ["certificate_names_mismatch"]),
    ("wrong-names-missing-san", forged_missing_name, ["certificate_names_mismatch"]),
    ("wrong-common-name", forged_other_cn, ["certificate_subject_mismatch"]),
    ("server-auth-only", forged_server_only, ["certificate_usage_missing"]),
    ("ca-certificate-for-our-key", forged_ca_certificate, ["certificate_is_ca", "certificate_untrusted"]),
    ("stale-request-id", forged_stale_request_id, ["{previous_request_id}"]),
    ("unknown-request-id", forged_unknown_request_id, ["discarded"]),
    ("no-request-id", forged_no_request_id, ["discarded"]),
    ("garbage-pem", forged_garbage_pem, ["certificate_malformed"]),
    ("not-json", forged_not_json, ["discarded"]),
    ("huge-body", forged_huge_body, ["certificate_malformed", "certificate_key_mismatch", "discarded"]),
    ("fake-rejection-other-request-id", fake_rejection(lambda f: str(uuid.uuid4())), ["discarded"]),
    ("fake-rejection-stale-request-id", fake_rejection(lambda f: f.previous_request_id), ["{previous_request_id}"]),
    (
        "fake-rejection-for-another-instance",
        fake_rejection(lambda f: f.request_id, instance_id_of=lambda f: "i-0ffffffffffffffff"),
        ["discarded"],
    ),
    ("fake-rejection-without-request-id", fake_rejection_without_request_id, ["discarded"]),
]


def node_state(node) -> dict[str, Any]:
    """The installed pair (every file through current/, byte for byte), the version tree and the
    pending request and key."""
    current = {
        name: hashlib.sha256((node.current / name).read_bytes()).hexdigest()
        for name in sorted(os.listdir(node.current))
    }
    return {
        "current_link": os.readlink(node.current),
        "current_files": current,
        "versions": tree_snapshot(node.path / "versions"),
        "pending_key": node.pending_key.read_bytes(),
        "pending_request": (node.path / "pending" / "request.json").read_bytes(),
    }


def installed_and_pending(node, sign, sqs, ca) -> Forgery:
    """The node enrolled once (a pair installed), then asked for a renewal (pending)."""
    first, proc = node.submit()
    assert_ok(first, proc)
    signed, proc = sign()
    assert_ok(signed, proc)
    assert signed["issued"] == 1, describe(signed, proc)
    result, proc = node.fetch()
    assert_ok(result, proc)
    assert result["status"] == "installed", describe(result, proc)
    renewal, proc = node.submit(force=True)
    assert_ok(renewal, proc)
    assert renewal["submitted"] is True and renewal["request_id"] != first["request_id"], describe(renewal, proc)
    assert node.pending_request["request_id"] == renewal["request_id"]
    return Forgery(
        node=node,
        ca=ca,
        request_id=renewal["request_id"],
        previous_request_id=first["request_id"],
        pending_public_key=helpers.load_private_key(node.pending_key).public_key(),
        intermediate=helpers.load_cert(ca.intermediate_cert_path),
        intermediate_key=helpers.load_private_key(ca.intermediate_privatekey_path),
        root=helpers.load_cert(ca.root_cert_path),
    )


def assert_genuine_installed(node, sign, f: Forgery, before: dict[str, Any]) -> None:
    """The genuine answer to the pending request still installs after the forgery."""
    signed, proc = sign()
    assert_ok(signed, proc)
    assert signed["issued"] == 1, describe(signed, proc)
    result, proc = node.fetch(wait=True, timeout=FETCH_TIMEOUT)
    assert_ok(result, proc)
    assert result["status"] == "installed" and result["request_id"] == f.request_id, describe(result, proc)
    leaf = helpers.load_cert(node.current / "cert.pem")
    assert helpers.serial_int(signed["serials"][0]) == leaf.serial_number, "not the certificate the worker issued"
    assert helpers.spki_der(leaf.public_key()) == helpers.spki_der(f.pending_public_key)
    assert leaf.issuer == f.intermediate.subject
    assert os.readlink(node.current) != before["current_link"]
    helpers.assert_openssl_verifies(
        node.current / "cert.pem", f.ca.root_cert_path, f.ca.intermediate_cert_path, "sslclient"
    )


@pytest.mark.parametrize("forgery_id,build,expect", FORGERIES, ids=[x[0] for x in FORGERIES])
def test_forged_reply_is_ignored_and_installed_pair_untouched(
    forgery_id, build, expect, make_node, sign, queues, sqs, ca
):
    node = make_node(1)
    f = installed_and_pending(node, sign, sqs, ca)
    reply_url = sqs.get_queue_url(QueueName=f"{queues.reply_prefix}{node.instance_id}")["QueueUrl"]
    assert queue_attributes(sqs, reply_url) == EMPTY
    before = node_state(node)

    publish(sqs, reply_url, build(f), {"InstanceId": node.instance_id})
    result, proc, _elapsed = timed_fetch(node, wait=False)
    assert_ok(result, proc)  # a forgery never makes the node fail (a fake rejection included)
    assert result["changed"] is False and result["status"] == "pending", describe(result, proc)
    warnings = result.get("warnings") or []
    assert warnings, f"the ignored message was not reported as a warning\n{describe(result, proc)}"
    wanted = [w.format(previous_request_id=f.previous_request_id) for w in expect]
    assert any(any(w in text for w in wanted) for text in warnings), f"no warning names {wanted}: {warnings}"
    assert node_state(node) == before, "an ignored message changed the installed pair or the pending request"

    # The genuine answer still ends installed.
    assert_genuine_installed(node, sign, f, before)


def test_forgeries_queued_before_the_genuine_answer_do_not_stop_it(make_node, sign, queues, sqs, ca):
    """Every forgery and fake rejection, then the genuine certificate, all waiting on the queue:
    one fetch skips the forgeries and installs the genuine certificate."""
    node = make_node(1)
    f = installed_and_pending(node, sign, sqs, ca)
    reply_url = sqs.get_queue_url(QueueName=f"{queues.reply_prefix}{node.instance_id}")["QueueUrl"]
    before = node_state(node)
    for _, build, _ in FORGERIES[:9]:
        publish(sqs, reply_url, build(f), {"InstanceId": node.instance_id})
    signed, proc = sign()
    assert_ok(signed, proc)
    assert signed["issued"] == 1, describe(signed, proc)
    for _, build, _ in FORGERIES[9:]:
        publish(sqs, reply_url, build(f), {"InstanceId": node.instance_id})
    result, proc, elapsed = timed_fetch(node, wait=True, timeout=FETCH_TIMEOUT)
    assert_ok(result, proc)
    assert result["status"] == "installed" and result["request_id"] == f.request_id, describe(result, proc)
    assert elapsed < AT_ONCE_SECONDS
    # The forgeries sent before the certificate were seen (and refused) before it was installed.
    assert len(result.get("warnings") or []) >= 9, describe(result, proc)
    leaf = helpers.load_cert(node.current / "cert.pem")
    assert helpers.serial_int(signed["serials"][0]) == leaf.serial_number
    assert helpers.spki_der(leaf.public_key()) == helpers.spki_der(f.pending_public_key)
    assert os.readlink(node.current) != before["current_link"]


def test_genuine_rejection_for_the_pending_request_fails_the_fetch(make_node, sign, queues, sqs, ca, tmp_path):
    """Control for the fake rejections: a rejection for the pending request id does fail the fetch
    at once, and leaves the installed pair untouched."""
    node = make_node(1)
    installed_and_pending(node, sign, sqs, ca)
    before = node_state(node)
    # The worker refuses the pending renewal (the policy no longer allows this instance).
    policy = helpers.write_policy(
        tmp_path / "narrow.json",
        instances=[{"instance_id": "i-0ddddddddddddddd0", "dns_suffixes": [".fleet.internal"]}],
    )
    signed, proc = sign(policy_path=str(policy))
    assert_ok(signed, proc)
    assert (signed["issued"], signed["rejected"]) == (0, 1), describe(signed, proc)
    result, proc, elapsed = timed_fetch(node, wait=True, timeout=FETCH_TIMEOUT)
    assert result.get("failed") is True and "instance_not_allowed" in result["msg"], describe(result, proc)
    assert elapsed < AT_ONCE_SECONDS
    assert os.readlink(node.current) == before["current_link"]
    assert {n: hashlib.sha256((node.current / n).read_bytes()).hexdigest() for n in os.listdir(node.current)} == before[
        "current_files"
    ]


# ------------------------------------------------------------------------------------------------
# Enrollment secret
# ------------------------------------------------------------------------------------------------


def enroll_policy(tmp_path: Path, secrets: dict[str, str], **overrides) -> Path:
    return helpers.write_policy(
        tmp_path / "enroll-policy.json", identity_proof="enrollment_secret", enrollment_secrets=secrets, **overrides
    )


def test_enrollment_secret_end_to_end(make_node, sign, queues, sqs, ca, tmp_path):
    nodes = [make_node(1), make_node(2)]
    secrets = {n.instance_id: f"enroll-{n.n}-{uuid.uuid4().hex}" for n in nodes}
    policy = enroll_policy(tmp_path, secrets)
    submitted = {}
    for node in nodes:
        result, proc = node.submit(enrollment_secret=secrets[node.instance_id])
        assert_ok(result, proc)
        submitted[node.n] = result
    # The proof is on the wire as documented: type enrollment_secret and an HMAC that verifies.
    for m in peek(sqs, queues.csr):
        body = json.loads(m["Body"])
        proof = body["identity_proof"]
        assert proof["type"] == "enrollment_secret", body
        assert proof["hmac"] == enrollment_hmac_v2(secrets[body["instance_id"]], body)
    signed, proc = sign(policy_path=str(policy))
    assert_ok(signed, proc)
    assert (signed["issued"], signed["rejected"], signed["dead_lettered"]) == (2, 0, 0), describe(signed, proc)
    assert not any("identity_proof: none" in w for w in signed.get("warnings", [])), signed.get("warnings")
    for node in nodes:
        result, proc = node.fetch()
        assert_ok(result, proc)
        assert result["status"] == "installed" and result["request_id"] == submitted[node.n]["request_id"]
        helpers.assert_openssl_verifies(
            node.current / "cert.pem", ca.root_cert_path, ca.intermediate_cert_path, "sslserver"
        )
        helpers.assert_openssl_verifies(
            node.current / "cert.pem", ca.root_cert_path, ca.intermediate_cert_path, "sslclient"
        )


def test_enrollment_hmac_recomputed_for_a_new_timestamp_is_accepted(make_node, sign, queues, sqs, tmp_path):
    """Control for the replay test: the test's own HMAC (from the documented input) is the one
    the worker accepts, so a refusal of an old request is due to its age alone."""
    node = make_node(1)
    secret = "enroll-" + uuid.uuid4().hex
    base = intercept(node, sqs, queues, enrollment_secret=secret)
    body = dict(base.body, timestamp=base.body["timestamp"] - 120)
    body["identity_proof"] = {
        "type": "enrollment_secret",
        "hmac": enrollment_hmac(
            secret, body["request_id"], body["timestamp"], node.instance_id, body["profile"], body["csr_pem"]
        ),
    }
    assert body["identity_proof"] != base.body["identity_proof"]
    publish(sqs, queues.csr, json.dumps(body), base.attrs)
    signed, proc = sign(
        policy_path=str(enroll_policy(tmp_path, {node.instance_id: secret}, max_request_age_seconds=600))
    )
    assert_ok(signed, proc)
    assert signed["issued"] == 1, describe(signed, proc)
    # The v1 form still passes while the policy allows it, with a warning naming the request.
    assert any("v1 enrollment HMAC" in w and body["request_id"] in w for w in signed.get("warnings", [])), describe(signed, proc)
    result, proc = node.fetch()
    assert_ok(result, proc)
    assert result["status"] == "installed", describe(result, proc)


ENROLL_REFUSALS = [
    # (id, how the node submits / what is republished, expected code)
    ("wrong-secret", "wrong", "identity_proof_invalid"),
    ("another-nodes-secret", "other-node", "identity_proof_invalid"),
    ("missing-hmac", "missing", "identity_proof_missing"),
    ("replayed-too-late", "replay", "request_expired"),
]


@pytest.mark.parametrize("kind,code", [x[1:] for x in ENROLL_REFUSALS], ids=[x[0] for x in ENROLL_REFUSALS])
def test_enrollment_secret_refusals(kind, code, make_node, sign, queues, sqs, tmp_path):
    node, other = make_node(1), make_node(2)
    secrets = {node.instance_id: "enroll-1-" + uuid.uuid4().hex, other.instance_id: "enroll-2-" + uuid.uuid4().hex}
    max_age = 600
    policy = enroll_policy(tmp_path, secrets, max_request_age_seconds=max_age)
    if kind == "replay":
        # A request genuinely made with the right secret, but max_age + 60 s ago: its HMAC is
        # valid for its (old) timestamp, as a captured and replayed request's would be.
        base = intercept(node, sqs, queues, enrollment_secret=secrets[node.instance_id])
        body = dict(base.body, timestamp=int(time.time()) - max_age - 60)
        body["identity_proof"] = {
            "type": "enrollment_secret",
            "hmac": enrollment_hmac(
                secrets[node.instance_id],
                body["request_id"],
                body["timestamp"],
                node.instance_id,
                body["profile"],
                body["csr_pem"],
            ),
        }
        publish(sqs, queues.csr, json.dumps(body), base.attrs)
        request_id = base.request_id
    else:
        secret = {
            "wrong": "not-the-secret-" + uuid.uuid4().hex,
            "other-node": secrets[other.instance_id],
            "missing": None,
        }[kind]
        result, proc = node.submit(**({"enrollment_secret": secret} if secret else {}))
        assert_ok(result, proc)
        request_id = result["request_id"]
    audit = tmp_path / "audit.jsonl"
    signed, proc = sign(policy_path=str(policy), audit_log_path=str(audit))
    assert_ok(signed, proc)
    assert (signed["issued"], signed["rejected"], signed["dead_lettered"]) == (0, 1, 0), describe(signed, proc)
    assert_no_certificate_anywhere(sqs, queues)
    (line,) = read_audit(audit)
    assert line["decision"] == "rejected" and line["reason_code"] == code and line["request_id"] == request_id, line

    result, proc, elapsed = timed_fetch(node, wait=True, timeout=FETCH_TIMEOUT)
    assert result.get("failed") is True and code in result["msg"], describe(result, proc)
    assert elapsed < AT_ONCE_SECONDS
    assert not os.path.lexists(node.current)
    for secret in secrets.values():
        assert secret not in proc.stdout + proc.stderr + json.dumps(signed) + audit.read_text()


# ------------------------------------------------------------------------------------------------
# No private key or secret anywhere
# ------------------------------------------------------------------------------------------------


def private_key_needles(path: Path) -> list[str]:
    """Strings that would betray the private key in `path`: the PEM body lines that carry secret
    bytes (EC scalar; RSA d, p, q, CRT values), and those secret bytes in hex and in base64 at
    every alignment (so a re-encoded key is found too, whatever its line breaks)."""
    pem_text = path.read_text(encoding="ascii")
    key = serialization.load_pem_private_key(pem_text.encode(), password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = (key.curve.key_size + 7) // 8
        secrets = [key.private_numbers().private_value.to_bytes(size, "big")]
    elif isinstance(key, rsa.RSAPrivateKey):
        n = key.private_numbers()
        secrets = [v.to_bytes((v.bit_length() + 7) // 8, "big") for v in (n.d, n.p, n.q, n.dmp1, n.dmq1, n.iqmp)]
    else:
        raise AssertionError(f"unexpected key type in {path}")
    needles: list[str] = []
    # PEM body lines that overlap a secret's bytes in the DER.
    lines = [line for line in pem_text.splitlines() if line and not line.startswith("-----")]
    der = base64.b64decode("".join(lines))
    offset = 0
    spans = []
    for s in secrets:
        at = der.find(s)
        assert at >= 0, "secret bytes not found in the key's DER"
        spans.append((at, at + len(s)))
    for line in lines:
        n_bytes = len(base64.b64decode(line))
        if any(a < offset + n_bytes and offset < b for a, b in spans):
            needles.append(line)
        offset += n_bytes
    for s in secrets:
        needles += [s.hex(), s.hex().upper()]
        for shift in range(3):
            enc = base64.b64encode(b"\0" * shift + s).decode("ascii")
            core = enc[4 if shift else 0 : -4]  # drop the groups that depend on neighbours
            needles.append(core)
    return [n for n in needles if len(n) >= 16]


def normalise(text: str) -> str:
    """Texts with line breaks (real or JSON-escaped) and JSON slash escapes removed, so PEM
    bodies and base64 runs are contiguous."""
    return text.replace("\\r", "").replace("\\n", "").replace("\r", "").replace("\n", "").replace("\\/", "/")


def test_no_private_key_or_secret_in_messages_logs_or_results(
    make_node, run_module, sign_args, queues, sqs, ca, tmp_path
):
    aws_secret = "Sentinel-aws-secret-" + uuid.uuid4().hex
    aws = {"access_key": "testing", "secret_key": aws_secret}
    good, refused, tampered = make_node(1), make_node(2), make_node(3)
    secrets = {n.instance_id: f"Sentinel-enroll-{n.n}-{uuid.uuid4().hex}" for n in (good, refused, tampered)}
    policy = enroll_policy(tmp_path, secrets)
    audit = tmp_path / "audit.jsonl"
    texts: list[tuple[str, str]] = []  # (where, text)

    def run(name, args, what):
        result, proc = run_module(name, args)
        texts.append((f"{what} stdout", proc.stdout))
        texts.append((f"{what} stderr", proc.stderr))
        texts.append((f"{what} result", json.dumps(result)))
        return result, proc

    def peek_everything(stage):
        for url, messages in all_messages(sqs, queues).items():
            for m in messages:
                texts.append((f"{stage}: message on {url}", m["Body"]))
                texts.append((f"{stage}: attributes on {url}", json.dumps(m.get("MessageAttributes", {}))))

    def sign_once(what):
        return run("mtls_ca_sign", sign_args(policy_path=str(policy), audit_log_path=str(audit), **aws), what)

    # tampered: a broken CSR (dead-lettered and answered); good: enrolls and renews; refused: the
    # wrong secret.
    base = intercept(tampered, sqs, queues, enrollment_secret=secrets[tampered.instance_id], **aws)
    texts += [("submit tampered stdout", base.proc.stdout), ("submit tampered stderr", base.proc.stderr)]
    texts.append(("intercepted tampered request", json.dumps(base.body)))
    body = dict(base.body, csr_pem=helpers.tamper_csr_signature(base.body["csr_pem"]))
    publish(sqs, queues.csr, json.dumps(body), base.attrs)
    result, proc = run(
        "mtls_csr_submit", good.submit_args(enrollment_secret=secrets[good.instance_id], **aws), "submit good"
    )
    assert_ok(result, proc)
    wrong = "Sentinel-wrong-" + uuid.uuid4().hex
    result, proc = run("mtls_csr_submit", refused.submit_args(enrollment_secret=wrong, **aws), "submit refused")
    assert_ok(result, proc)
    peek_everything("after submit")

    signed, proc = sign_once("sign 1")
    assert_ok(signed, proc)
    assert (signed["issued"], signed["rejected"], signed["dead_lettered"]) == (1, 1, 1), describe(signed, proc)
    peek_everything("after sign 1")

    result, proc = run("mtls_cert_fetch", good.fetch_args(**aws), "fetch good")
    assert_ok(result, proc)
    assert result["status"] == "installed", describe(result, proc)
    result, proc = run("mtls_cert_fetch", refused.fetch_args(**aws), "fetch refused")
    assert result.get("failed") is True and "identity_proof_invalid" in result["msg"], describe(result, proc)
    result, proc = run("mtls_cert_fetch", tampered.fetch_args(**aws), "fetch tampered")
    assert result.get("failed") is True and "csr_signature_invalid" in result["msg"], describe(result, proc)

    # A renewal (so a pending key exists beside the installed one), signed; left unfetched.
    result, proc = run(
        "mtls_csr_submit",
        good.submit_args(enrollment_secret=secrets[good.instance_id], force=True, **aws),
        "renew good",
    )
    assert_ok(result, proc)
    peek_everything("after renewal submit")
    signed, proc = sign_once("sign 2")
    assert_ok(signed, proc)
    assert signed["issued"] == 1, describe(signed, proc)
    peek_everything("at the end")
    texts.append(("audit log", audit.read_text(encoding="utf-8")))
    assert len(read_audit(audit)) == 6  # each of the 2 certificates: signed, then issued

    key_files = {
        "installed key of good": good.current / "privkey.pem",
        "pending key of good": good.pending_key,
        "pending key of refused": refused.pending_key,
        "pending key of tampered": tampered.pending_key,
        "CA intermediate key": ca.intermediate_privatekey_path,
        "CA root key": ca.root_privatekey_path,
    }
    for label, path in key_files.items():
        assert path.is_file(), f"{label}: {path} missing"
    assert (good.current / "privkey.pem").read_bytes() != good.pending_key.read_bytes(), "the renewal reused the key"
    needles = {label: private_key_needles(path) for label, path in key_files.items()}
    for label, path in key_files.items():
        # The search is not vacuous: the key itself, JSON-escaped as in a message body, is found.
        as_message = normalise(json.dumps({"key": path.read_text(encoding="ascii")}))
        assert sum(needle in as_message for needle in needles[label]) >= 3, f"the {label} would not be found"
    plain = {
        "AWS secret_key": aws_secret,
        "wrong enrollment secret": wrong,
        **{f"enrollment secret of {i}": s for i, s in secrets.items()},
    }

    assert len(texts) > 30
    for where, text in texts:
        flat = normalise(text)
        assert "PRIVATE KEY" not in text, f"a private key PEM appears in {where}"
        for label, secret in plain.items():
            assert secret not in text and secret not in flat, f"the {label} appears in {where}"
        for label, items in needles.items():
            for needle in items:
                assert needle not in flat, f"material of the {label} appears in {where}"


# ------------------------------------------------------------------------------------------------
# The audit log
# ------------------------------------------------------------------------------------------------


def test_audit_log_has_one_json_line_per_decision(make_node, sign, queues, sqs, tmp_path, ca):
    issued_node, refused_node, tampered_node = (
        make_node(1),
        make_node(2, sans=["DNS:www.evil.example.com"]),
        make_node(3),
    )
    audit = tmp_path / "audit.jsonl"
    base = intercept(tampered_node, sqs, queues)
    bad_body = json.dumps(dict(base.body, csr_pem=helpers.tamper_csr_signature(base.body["csr_pem"])))
    publish(sqs, queues.csr, bad_body, base.attrs)
    ok, proc = issued_node.submit()
    assert_ok(ok, proc)
    no, proc = refused_node.submit()
    assert_ok(no, proc)
    publish(sqs, queues.csr, "not json at all", {})
    started = dt.datetime.now(dt.UTC).replace(microsecond=0)

    signed, proc = sign(audit_log_path=str(audit))
    assert_ok(signed, proc)
    assert (signed["issued"], signed["rejected"], signed["dead_lettered"]) == (1, 1, 2), describe(signed, proc)
    finished = dt.datetime.now(dt.UTC)
    lines = read_audit(audit)
    assert len(lines) == 5, lines  # the issued request's `signed` line too
    for line in lines:
        assert_audit_line(line)
        t = dt.datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
        assert started <= t <= finished, (started, line["time"], finished)
    by_decision: dict[str, list[dict]] = {}
    for line in lines:
        by_decision.setdefault(line["decision"], []).append(line)
    assert sorted(by_decision) == ["dead_lettered", "issued", "rejected", "signed"], lines
    assert [line["serial"] for line in by_decision["signed"]] == [line["serial"] for line in by_decision["issued"]]

    result, proc = issued_node.fetch()
    assert_ok(result, proc)
    leaf = helpers.load_cert(issued_node.current / "cert.pem")
    (issued,) = by_decision["issued"]
    assert issued["request_id"] == ok["request_id"] and issued["instance_id"] == issued_node.instance_id
    assert issued["sender_id"] == base.sender_id and issued["sender_id"], issued
    assert issued["reason_code"] is None
    assert helpers.serial_int(issued["serial"]) == leaf.serial_number
    assert issued["certificate_sha256"] == hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert issued["csr_sha256"] in csr_digests(ok["csr"]), issued

    (rejected,) = by_decision["rejected"]
    assert rejected["request_id"] == no["request_id"] and rejected["instance_id"] == refused_node.instance_id
    assert rejected["reason_code"] == "san_not_allowed" and rejected["serial"] is None
    assert rejected["certificate_sha256"] is None and rejected["not_after"] is None
    assert rejected["csr_sha256"] in csr_digests(no["csr"]), rejected

    dead = {line["reason_code"]: line for line in by_decision["dead_lettered"]}
    assert sorted(dead) == ["csr_signature_invalid", "message_malformed"], lines
    assert dead["csr_signature_invalid"]["request_id"] == base.request_id
    assert dead["csr_signature_invalid"]["instance_id"] == tampered_node.instance_id
    assert dead["message_malformed"]["request_id"] is None and dead["message_malformed"]["instance_id"] is None
    for line in lines:
        assert line["sender_id"] == base.sender_id, line
    # Last, so every other field is checked first: the logged notAfter is the certificate's.
    logged_not_after = dt.datetime.fromisoformat(issued["not_after"].replace("Z", "+00:00"))
    assert (
        logged_not_after == leaf.not_valid_after_utc
    ), f"the audit not_after {issued['not_after']} is not the certificate's notAfter {leaf.not_valid_after_utc}"
