"""Signers (docs/signers.md): the intermediate's key in AWS KMS, or AWS Private CA as the
issuer, against moto's KMS and ACM PCA on the same endpoint as SQS.

moto runs through scripts/moto_server.py, which makes moto's KMS refuse a disabled key
(DisabledException) and sign a MessageType=DIGEST message as a digest, as real KMS does, and
makes moto's Private CA honour the end-entity templates, Validity and the CA's status (see that
file). The binaries reach KMS and ACM PCA through
AWS_ENDPOINT_URL_KMS and AWS_ENDPOINT_URL_ACM_PCA (the module docs' per-service endpoints).

What is checked:
- aws_kms: mtls_ca_init creates the key and its alias (once), writes only public material (no
  private key file under the CA directory: the root key lives in an "offline" directory beside
  it); mtls_ca_sign signs through KMS; every certificate verifies with `openssl verify -purpose
  sslclient` and `-purpose sslserver`; the audit log names the key ARN; KMS calls are counted.
- A disabled or missing KMS key, or one that is not the intermediate's: found before any receive.
  Disabled, or kms:Sign denied (AccessDeniedException injected by a proxy), in mid-drain: the
  drain fails with the contract's message, every affected request stays queued (not deleted, not
  dead-lettered, not answered), is listed in `retries` and audited as `retry`; once the signer
  works again the next drain issues them all.
- A CRL over 4096 bytes (120 revocations) is signed through KMS as a digest and verifies.
- aws_pca: mtls_ca_init certifies and imports a SUBORDINATE Private CA; mtls_ca_sign has it issue
  the certificates; they verify; the audit log names the certificate ARNs; PCA calls are counted.
  A CSR whose subject is more than CN=<instance id> is refused (`subject_mismatch`) before any
  IssueCertificate; an error about one request (MalformedCSRException) is answered `signer_refused`.
- serve mode with aws_kms: a key disabled while the service runs leaves the requests queued, each
  received at most once during the outage; re-enabled, they are signed.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import ipaddress
import json
import re
import signal
import socket
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import helpers
from conftest import CA, Node, ca_paths
from helpers import assert_failed_naming, assert_ok, describe, queue_attributes, tree_snapshot
from service_helpers import Service, SqsProxy, check_pair, key_files, start_serve, write_config

EMPTY = {"visible": 0, "in_flight": 0, "delayed": 0}
REGION = "us-east-1"
UNAVAILABLE = "the signer is unavailable"
STAY_QUEUED = "stay queued"


def total(depth: dict[str, int]) -> int:
    return depth["visible"] + depth["in_flight"] + depth["delayed"]


# ------------------------------------------------------------------------------------------------
# Fixtures: AWS clients, the environment of the binaries, CAs with a KMS key or a Private CA
# ------------------------------------------------------------------------------------------------


def aws_client(service: str, endpoint: str):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(connect_timeout=2, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"}),
    )


@pytest.fixture(scope="session")
def kms(sqs_server):
    """boto3 KMS on the moto server (the same endpoint as SQS)."""
    return aws_client("kms", sqs_server.endpoint)


@pytest.fixture(scope="session")
def acmpca(sqs_server):
    """boto3 ACM PCA on the moto server."""
    return aws_client("acm-pca", sqs_server.endpoint)


@pytest.fixture
def aws_env(module_env, sqs_server) -> dict[str, str]:
    """The binaries' environment: the moto one, with KMS and ACM PCA on the moto endpoint too."""
    return dict(
        module_env,
        AWS_ENDPOINT_URL_KMS=sqs_server.endpoint,
        AWS_ENDPOINT_URL_ACM_PCA=sqs_server.endpoint,
    )


@pytest.fixture
def run_aws(run_module, aws_env):
    """run_aws(name, args, check=False, env=None) -> (result, proc): conftest's run_module with
    KMS and ACM PCA reachable."""

    def run(name: str, args: dict[str, Any], check: bool = False, env: dict[str, str] | None = None, timeout=None):
        return run_module(name, args, check=check, env=aws_env if env is None else env, timeout=timeout)

    return run


@dataclass
class SignerCA:
    """A CA whose intermediate is a KMS key or a Private CA. `ca.dir` is what the CA worker host
    holds; the root key lives in `offline_dir`, outside it (the offline root)."""

    ca: CA
    offline_dir: Path
    signer: str
    kms_key_id: str | None = None  # as given to the modules (an alias)
    kms_key_arn: str | None = None
    pca_arn: str | None = None
    init_result: dict[str, Any] = field(default_factory=dict)

    def init_args(self, **overrides: Any) -> dict[str, Any]:
        args: dict[str, Any] = {
            "root_cert_path": str(self.ca.root_cert_path),
            "root_privatekey_path": str(self.ca.root_privatekey_path),
            "intermediate_cert_path": str(self.ca.intermediate_cert_path),
            "chain_path": str(self.ca.chain_path),
            "signer": self.signer,
        }
        if self.signer == "aws_kms":
            args["kms_key_id"] = self.kms_key_id
        if self.signer == "aws_pca":
            args["certificate_authority_arn"] = self.pca_arn
        args.update(overrides)
        return args

    def signer_args(self) -> dict[str, Any]:
        if self.signer == "aws_kms":
            return {"signer": "aws_kms", "kms_key_id": self.kms_key_id}
        return {"signer": "aws_pca", "certificate_authority_arn": self.pca_arn}


def signer_ca_layout(tmp_path: Path, signer: str, name: str = "ca") -> SignerCA:
    ca_dir, offline = tmp_path / name, tmp_path / f"{name}-offline-root"
    ca_dir.mkdir()
    offline.mkdir(mode=0o700)
    ca = ca_paths(ca_dir)
    ca.root_privatekey_path = offline / "root.key"
    helpers.write_policy(ca.policy_path)
    return SignerCA(ca=ca, offline_dir=offline, signer=signer)


def unique_alias() -> str:
    return f"alias/fleetpki-test-{uuid.uuid4().hex[:12]}"


def create_subordinate_pca(acmpca, common_name: str | None = None) -> str:
    """A SUBORDINATE Private CA in moto, PENDING_CERTIFICATE; returns its ARN."""
    return acmpca.create_certificate_authority(
        CertificateAuthorityConfiguration={
            "KeyAlgorithm": "EC_prime256v1",
            "SigningAlgorithm": "SHA256WITHECDSA",
            "Subject": {
                "CommonName": common_name or f"fleetpki PCA {uuid.uuid4().hex[:8]}",
                "Organization": "fleetpki",
            },
        },
        CertificateAuthorityType="SUBORDINATE",
        IdempotencyToken=uuid.uuid4().hex[:32],
    )["CertificateAuthorityArn"]


@pytest.fixture
def kms_ca(tmp_path, run_aws, kms) -> SignerCA:
    """A CA whose intermediate key is a fresh KMS key (created by mtls_ca_init under a unique alias)."""
    sca = signer_ca_layout(tmp_path, "aws_kms", name="kms-ca")
    sca.kms_key_id = unique_alias()
    result, proc = run_aws("mtls_ca_init", sca.init_args())
    assert_ok(result, proc)
    sca.kms_key_arn = result.get("kms_key_arn") or kms.describe_key(KeyId=sca.kms_key_id)["KeyMetadata"]["Arn"]
    sca.init_result = result
    return sca


@pytest.fixture
def pca_ca(tmp_path, run_aws, acmpca) -> SignerCA:
    """A CA whose intermediate is a moto Private CA certified by our file root (by mtls_ca_init)."""
    sca = signer_ca_layout(tmp_path, "aws_pca", name="pca-ca")
    sca.pca_arn = create_subordinate_pca(acmpca)
    result, proc = run_aws("mtls_ca_init", sca.init_args())
    assert_ok(result, proc)
    sca.init_result = result
    return sca


def make_nodes(sca: SignerCA, queues, run_module, tmp_path: Path, numbers) -> list[Node]:
    """Simulated nodes that pin this CA's root."""
    return [
        Node(
            n=n,
            instance_id=f"i-{n:017x}",
            path=tmp_path / f"node{n}",
            sans=[f"DNS:node{n}.fleet.internal", "IP:127.0.0.1"],
            queues=queues,
            ca=sca.ca,
            run_module=run_module,
        )
        for n in numbers
    ]


def sign_args_for(sca: SignerCA, queues, **overrides: Any) -> dict[str, Any]:
    """mtls_ca_sign options for this test's queues and a KMS or PCA CA: no ownca_privatekey_path."""
    args: dict[str, Any] = {
        "audit_log_path": str(sca.ca.dir / "issuance.jsonl"),
        "csr_queue_url": queues.csr,
        "ownca_path": str(sca.ca.intermediate_cert_path),
        "ca_chain_path": str(sca.ca.chain_path),
        "policy_path": str(sca.ca.policy_path),
        "reply_queue_prefix": queues.reply_prefix,
        "shared_cert_queue_url": queues.shared,
        "wait_time_seconds": 1,
        **sca.signer_args(),
    }
    args.update(overrides)
    return args


class AnsweringProxy(SqsProxy):
    """SqsProxy (service_helpers) that can also answer a call itself instead of forwarding it:
    `answer(operation, params)` returns None (forward, with `hook` and `after_hook` as usual) or
    (HTTP status, JSON body), sent back as an AWS JSON-protocol answer. An error answer is
    `(400, {"__type": "AccessDeniedException", "message": "..."})`."""

    def __init__(self, upstream: str):
        super().__init__(upstream)
        self.answer = None
        proxy = self
        forwarding = self.server.RequestHandlerClass

        class Handler(forwarding):
            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                operation, params = proxy._parse(self.headers, body, self.path)
                answer = proxy.answer(operation, params) if proxy.answer else None
                if answer is None:
                    # Forward: the base handler reads the body again; the connection's own
                    # stream is put back for the next request on it (keep-alive).
                    stream, self.rfile = self.rfile, io.BytesIO(body)
                    try:
                        return forwarding._handle(self)
                    finally:
                        self.rfile = stream
                with proxy._lock:
                    proxy.calls.append((operation, params))
                status, payload = answer
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/x-amz-json-1.1")
                    self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    self.close_connection = True

            do_POST = _handle
            do_GET = _handle

        self.server.RequestHandlerClass = Handler


# ------------------------------------------------------------------------------------------------
# Small checks
# ------------------------------------------------------------------------------------------------


def call_count(result: dict[str, Any], key: str, operation: str) -> int:
    """Count of an operation in result[key] (kms_calls / acmpca_calls), "Sign" or "sign"."""
    calls = result.get(key)
    assert isinstance(calls, dict), f"{key} missing or not a dict:\n{describe(result)}"
    norm = operation.replace("_", "").lower()
    return sum(int(v) for k, v in calls.items() if k.replace("_", "").lower() == norm)


def assert_calls_total(result: dict[str, Any], key: str) -> None:
    calls = result.get(key)
    assert isinstance(calls, dict) and "total" in calls, f"{key} has no total:\n{describe(result)}"
    others = sum(int(v) for k, v in calls.items() if k != "total")
    assert calls["total"] == others, f"{key}: total {calls['total']} is not the sum {others} of {calls}"


def read_audit(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            value = json.loads(line)
            assert isinstance(value, dict), line
            out.append(value)
    return out


def assert_no_private_key_under(directory: Path) -> None:
    found = key_files(directory)
    assert not found, f"private key file(s) under the CA directory {directory}: {found}"
    named = [p for p in directory.rglob("*") if p.is_file() and p.suffix == ".key"]
    assert not named, f"*.key file(s) under the CA directory {directory}: {named}"


def spki(public_key) -> bytes:
    return helpers.spki_der(public_key)


def verify_signature(issuer_cert: x509.Certificate, cert: x509.Certificate) -> None:
    """cert's signature verifies with issuer_cert's public key (raises otherwise)."""
    cert.verify_directly_issued_by(issuer_cert)


def assert_node_installed_and_verifies(
    node: Node, sca: SignerCA, fetched: dict[str, Any], proc=None
) -> x509.Certificate:
    assert fetched.get("status") == "installed", describe(fetched, proc)
    leaf = check_pair(node.current)
    intermediate = helpers.load_cert(sca.ca.intermediate_cert_path)
    assert leaf.issuer == intermediate.subject, (leaf.issuer, intermediate.subject)
    verify_signature(intermediate, leaf)
    assert sorted(helpers.cert_sans(leaf)) == sorted(node.sans), helpers.cert_sans(leaf)
    assert helpers.common_name(leaf) == node.instance_id
    for purpose in ("sslclient", "sslserver"):
        # -CAfile root -untrusted chain: the chain file the CA publishes, and the one the node got.
        helpers.assert_openssl_verifies(node.current / "cert.pem", sca.ca.root_cert_path, sca.ca.chain_path, purpose)
        helpers.assert_openssl_verifies(
            node.current / "cert.pem", sca.ca.root_cert_path, node.current / "chain.pem", purpose
        )
    return leaf


def submit_all(nodes: list[Node], **overrides: Any) -> dict[int, dict[str, Any]]:
    out = {}
    for node in nodes:
        result, proc = node.submit(**overrides)
        assert_ok(result, proc)
        assert result["submitted"] is True, describe(result, proc)
        out[node.n] = result
    return out


def fetch_all(nodes: list[Node], sca: SignerCA, **overrides: Any) -> dict[int, x509.Certificate]:
    leaves = {}
    for node in nodes:
        result, proc = node.fetch(**overrides)
        assert_ok(result, proc)
        leaves[node.n] = assert_node_installed_and_verifies(node, sca, result, proc)
    return leaves


def assert_signer_unavailable(result: dict[str, Any], proc, code: str, count: int) -> None:
    """The contract's failure: `the signer is unavailable: <Code>: <message>; N request(s) stay queued ...`."""
    assert result.get("failed") is True, f"expected the drain to fail:\n{describe(result, proc)}"
    msg = result.get("msg") or ""
    assert UNAVAILABLE in msg, f"msg lacks {UNAVAILABLE!r}: {msg!r}"
    assert code in msg, f"msg lacks the error code {code!r}: {msg!r}"
    assert STAY_QUEUED in msg, f"msg lacks {STAY_QUEUED!r}: {msg!r}"
    assert f"{count} request(s) {STAY_QUEUED}" in msg, f"msg does not say {count} request(s) stay queued: {msg!r}"


def node_signed_in(params: dict[str, Any], nodes: list[Node]) -> Node | None:
    """The node whose certificate a KMS Sign request (as the proxy sees it) is for: its instance
    id is in the TBSCertificate; None for anything else (the probe Sign before a drain)."""
    try:
        message = base64.b64decode(params.get("Message") or "")
    except ValueError:
        return None
    return next((node for node in nodes if node.instance_id.encode() in message), None)


def assert_unavailable_up_front(result: dict[str, Any], proc, code: str, signer: str) -> None:
    """The signer failed its check before the drain took any request: the task fails with the
    contract's words and empty counts, and no receive count rose (nothing was received)."""
    assert result.get("failed") is True, describe(result, proc)
    msg = result.get("msg") or ""
    assert UNAVAILABLE in msg and code in msg, msg
    assert "no request was taken from the queue" in msg, msg
    # No doubled full stop where AWS's message (ending in ".") meets ours ("alias/..." is fine).
    assert not re.search(r"(?<!\.)\.\.(?!\.)", msg), f"a doubled full stop in {msg!r}"
    assert result.get("issued") == 0 and result.get("dead_lettered") == 0, describe(result)
    assert result.get("serials") == [] and result.get("retries") == [], describe(result)
    assert result.get("signer") == signer and result["sqs_calls"]["total"] == 0, describe(result)


def assert_retries_are(
    result: dict[str, Any], submitted: dict[int, dict[str, Any]], nodes: list[Node], code: str
) -> None:
    retries = result.get("retries")
    assert isinstance(retries, list), f"retries missing or not a list:\n{describe(result)}"
    for entry in retries:
        missing = [k for k in ("message_id", "instance_id", "request_id", "reason") if k not in entry]
        assert not missing, f"retries entry lacks {missing}: {entry}"
        assert code in (entry["reason"] or ""), f"retries entry's reason does not name {code}: {entry}"
    expected = {submitted[node.n]["request_id"]: node.instance_id for node in nodes}
    got = {entry["request_id"]: entry["instance_id"] for entry in retries}
    assert got == expected, f"retries {retries} are not the affected requests {expected}"
    messages = {entry["message_id"] for entry in retries}
    assert messages == {submitted[node.n]["message_id"] for node in nodes}, retries
    assert result.get("left_for_retry") == len(nodes), describe(result)


def assert_untouched_and_unanswered(sqs, queues, submitted, nodes: list[Node], queued: int) -> None:
    """The affected requests are all still in the CSR queue and visible at once (made visible
    again, not left in flight), nothing is dead-lettered, nothing answered for them."""
    assert queue_attributes(sqs, queues.csr) == {**EMPTY, "visible": queued}, queue_attributes(sqs, queues.csr)
    assert queue_attributes(sqs, queues.dlq) == EMPTY, "a request was dead-lettered"
    assert queue_attributes(sqs, queues.shared) == EMPTY
    for node in nodes:
        assert queue_attributes(sqs, submitted[node.n]["reply_queue_url"]) == EMPTY, f"{node.instance_id} was answered"


def assert_retry_audit(lines, submitted, nodes, code: str, key_ref: str | None) -> None:
    retry = [line for line in lines if line.get("decision") == "retry"]
    by_request = {}
    for line in retry:
        by_request.setdefault(line.get("request_id"), []).append(line)
    expected = {submitted[node.n]["request_id"] for node in nodes}
    assert set(by_request) == expected, f"retry audit lines {retry} are not for the requests {expected}"
    for line in retry:
        assert line.get("reason_code") == "signer_unavailable", line
        assert code in (line.get("reason") or ""), line
        assert line.get("serial") is None and line.get("certificate_sha256") is None, line
        if key_ref is not None:
            assert line.get("signer") == "aws_kms" and line.get("signer_ref") == key_ref, line


# ------------------------------------------------------------------------------------------------
# aws_kms: CA creation
# ------------------------------------------------------------------------------------------------


def test_kms_ca_init_creates_the_key_once_and_writes_no_private_key(tmp_path, run_aws, kms):
    sca = signer_ca_layout(tmp_path, "aws_kms")
    sca.kms_key_id = unique_alias()
    keys_before = {k["KeyId"] for k in kms.list_keys()["Keys"]}

    result, proc = run_aws("mtls_ca_init", sca.init_args())
    assert_ok(result, proc)
    assert result["changed"] is True, describe(result, proc)
    assert result.get("signer") == "aws_kms", describe(result)
    assert result.get("kms_key_created") is True, describe(result)

    # The key: created by the module, under the alias, ECC_NIST_P256 SIGN_VERIFY, and the one returned.
    meta = kms.describe_key(KeyId=sca.kms_key_id)["KeyMetadata"]
    assert result.get("kms_key_arn") == meta["Arn"], describe(result)
    assert meta["KeyUsage"] == "SIGN_VERIFY", meta
    assert meta.get("KeySpec", meta.get("CustomerMasterKeySpec")) == "ECC_NIST_P256", meta
    new_keys = {k["KeyId"] for k in kms.list_keys()["Keys"]} - keys_before
    assert new_keys == {meta["KeyId"]}, f"expected exactly one new KMS key, got {new_keys}"

    # Only public material on the CA host; the root key only in the offline directory.
    ca = sca.ca
    for path in (ca.root_cert_path, ca.intermediate_cert_path, ca.chain_path):
        assert path.is_file(), f"mtls_ca_init did not write {path}"
    assert not ca.intermediate_privatekey_path.exists(), "an intermediate key file was written"
    assert_no_private_key_under(ca.dir)
    assert ca.root_privatekey_path.is_file() and key_files(sca.offline_dir) == [ca.root_privatekey_path]

    # The intermediate's public key is the KMS key's, it is a CA certified by the root, and the chain
    # is intermediate then root.
    root = helpers.load_cert(ca.root_cert_path)
    intermediate = helpers.load_cert(ca.intermediate_cert_path)
    kms_public = kms.get_public_key(KeyId=sca.kms_key_id)["PublicKey"]
    assert spki(intermediate.public_key()) == kms_public, "the intermediate certificate is not for the KMS key"
    assert intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    verify_signature(root, intermediate)
    assert helpers.load_certs(ca.chain_path) == [intermediate, root], "chain.pem is not intermediate, root"

    # KMS calls counted: the key and alias created, the CSR (or certificate) signed through KMS.
    for op in ("CreateKey", "CreateAlias", "Sign"):
        assert call_count(result, "kms_calls", op) >= 1, f"no {op} counted:\n{describe(result)}"
    assert call_count(result, "kms_calls", "CreateKey") == 1, describe(result)
    assert_calls_total(result, "kms_calls")

    # Second run: nothing changes, no second key, no file touched.
    ca_tree, offline_tree = tree_snapshot(ca.dir), tree_snapshot(sca.offline_dir)
    keys_after_first = {k["KeyId"] for k in kms.list_keys()["Keys"]}
    again, proc = run_aws("mtls_ca_init", sca.init_args())
    assert_ok(again, proc)
    assert again["changed"] is False, describe(again, proc)
    assert again.get("kms_key_created") is False, describe(again)
    assert again.get("kms_key_arn") == meta["Arn"], describe(again)
    assert call_count(again, "kms_calls", "CreateKey") == 0 and call_count(again, "kms_calls", "CreateAlias") == 0
    assert {k["KeyId"] for k in kms.list_keys()["Keys"]} == keys_after_first, "the second run created a key"
    assert kms.describe_key(KeyId=sca.kms_key_id)["KeyMetadata"]["Arn"] == meta["Arn"], "the alias moved"
    assert tree_snapshot(ca.dir) == ca_tree, "the second run wrote under the CA directory"
    assert tree_snapshot(sca.offline_dir) == offline_tree, "the second run wrote under the offline root directory"


def test_kms_ca_init_check_mode_creates_nothing(tmp_path, run_aws, kms):
    sca = signer_ca_layout(tmp_path, "aws_kms")
    sca.kms_key_id = unique_alias()
    keys_before = {k["KeyId"] for k in kms.list_keys()["Keys"]}
    ca_tree, offline_tree = tree_snapshot(sca.ca.dir), tree_snapshot(sca.offline_dir)

    result, proc = run_aws("mtls_ca_init", sca.init_args(), check=True)
    assert_ok(result, proc)
    assert result["changed"] is True, describe(result, proc)
    assert result.get("kms_key_created") is True, f"check mode should say a key would be created:\n{describe(result)}"
    assert {k["KeyId"] for k in kms.list_keys()["Keys"]} == keys_before, "check mode created a KMS key"
    aliases = [a["AliasName"] for a in kms.list_aliases()["Aliases"]]
    assert sca.kms_key_id not in aliases, "check mode created the alias"
    assert tree_snapshot(sca.ca.dir) == ca_tree and tree_snapshot(sca.offline_dir) == offline_tree, "check mode wrote"


def test_kms_ca_init_adopts_an_existing_key_by_arn(tmp_path, run_aws, kms):
    meta = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY", Description="fleetpki test")["KeyMetadata"]
    sca = signer_ca_layout(tmp_path, "aws_kms")
    sca.kms_key_id = meta["Arn"]
    keys_before = {k["KeyId"] for k in kms.list_keys()["Keys"]}

    result, proc = run_aws("mtls_ca_init", sca.init_args())
    assert_ok(result, proc)
    assert result.get("kms_key_created") is False and result.get("kms_key_arn") == meta["Arn"], describe(result)
    assert {k["KeyId"] for k in kms.list_keys()["Keys"]} == keys_before, "a key was created for an existing key ARN"
    intermediate = helpers.load_cert(sca.ca.intermediate_cert_path)
    assert spki(intermediate.public_key()) == kms.get_public_key(KeyId=meta["KeyId"])["PublicKey"]
    assert_no_private_key_under(sca.ca.dir)


def test_kms_ca_init_refuses_a_key_arn_that_does_not_exist(tmp_path, run_aws, kms):
    missing = f"arn:aws:kms:{REGION}:123456789012:key/{uuid.uuid4()}"
    sca = signer_ca_layout(tmp_path, "aws_kms")
    sca.kms_key_id = missing
    keys_before = {k["KeyId"] for k in kms.list_keys()["Keys"]}
    result, proc = run_aws("mtls_ca_init", sca.init_args())
    assert result.get("failed") is True, describe(result, proc)
    msg = result.get("msg") or ""
    assert "NotFoundException" in msg or missing in msg, f"msg does not say the key is missing: {msg!r}"
    # As amazon.aws reports it: the service's code and words apart, in `error`.
    assert result["error"]["code"] == "NotFoundException" and result["error"]["operation"] == "GetPublicKey", result
    assert {k["KeyId"] for k in kms.list_keys()["Keys"]} == keys_before, "a key was created for a key ARN"
    assert not sca.ca.intermediate_cert_path.exists(), "an intermediate certificate was written"


def test_kms_unreachable_says_so_briefly_with_the_detail_apart(tmp_path, run_aws, aws_env):
    """KMS out of reach: a short message naming the cause and the fix; the SDK's chain in `error`."""
    sca = signer_ca_layout(tmp_path, "aws_kms")
    sca.kms_key_id = unique_alias()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        env = dict(aws_env, AWS_ENDPOINT_URL_KMS=f"http://127.0.0.1:{closed.getsockname()[1]}")
        result, proc = run_aws("mtls_ca_init", sca.init_args(), env=env)
    assert result.get("failed") is True, describe(result, proc)
    msg = result["msg"]
    assert msg.startswith(f"KMS GetPublicKey on {sca.kms_key_id} failed: the endpoint could not be reached"), msg
    assert "Check endpoint_url" in msg and len(msg) < 400, msg
    for debug in ("Some(", "DispatchFailure", "ConnectorError", "{ "):
        assert debug not in msg, f"Rust debug text {debug!r} in {msg!r}"
    assert (result["error"]["kind"], result["error"]["code"], result["error"]["operation"]) == (
        "unreachable",
        None,
        "GetPublicKey",
    ), result
    assert result["error"]["message"], result
    assert not sca.ca.intermediate_cert_path.exists(), "an intermediate certificate was written"


# ------------------------------------------------------------------------------------------------
# aws_kms: signing
# ------------------------------------------------------------------------------------------------


def test_kms_signs_verifiable_certificates_and_audits_the_key_arn(kms_ca, queues, sqs, run_aws, run_module, tmp_path):
    nodes = make_nodes(kms_ca, queues, run_module, tmp_path, (1, 2, 3))
    submitted = submit_all(nodes)
    audit = tmp_path / "audit.jsonl"

    signed, proc = run_aws("mtls_ca_sign", sign_args_for(kms_ca, queues, audit_log_path=str(audit)))
    assert_ok(signed, proc)
    assert (signed["issued"], signed["rejected"], signed["dead_lettered"]) == (3, 0, 0), describe(signed, proc)
    assert signed.get("signer") == "aws_kms", describe(signed)
    assert signed.get("left_for_retry") == 0 and signed.get("retries") == [], describe(signed)
    assert call_count(signed, "kms_calls", "Sign") >= 3, f"fewer Sign calls than certificates:\n{describe(signed)}"
    assert_calls_total(signed, "kms_calls")
    assert "acmpca_calls" not in signed, describe(signed)
    assert queue_attributes(sqs, queues.csr) == EMPTY and queue_attributes(sqs, queues.dlq) == EMPTY

    leaves = fetch_all(nodes, kms_ca)
    assert {format(leaf.serial_number, "x") for leaf in leaves.values()} == {
        format(helpers.serial_int(s), "x") for s in signed["serials"]
    }
    now = dt.datetime.now(dt.UTC)
    for node in nodes:
        leaf = leaves[node.n]
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
        assert leaf.not_valid_before_utc <= now, "notBefore should be backdated"
        assert leaf.not_valid_after_utc <= now + dt.timedelta(days=30, hours=1), "policy caps lifetime at 30 days"

    # One audit line per certificate, naming the signer and the KMS key ARN.
    lines = read_audit(audit)
    issued = [line for line in lines if line.get("decision") == "issued"]
    assert {line["request_id"] for line in issued} == {r["request_id"] for r in submitted.values()}, lines
    for line in issued:
        assert line.get("signer") == "aws_kms", line
        assert line.get("signer_ref") == kms_ca.kms_key_arn, f"audit signer_ref is not the key ARN: {line}"

    # Still no private key on the CA host.
    assert_no_private_key_under(kms_ca.ca.dir)


@pytest.mark.parametrize("key_id_form", ["alias_arn", "key_id"])
def test_kms_key_named_in_other_forms_signs(key_id_form, kms_ca, queues, sqs, run_aws, run_module, tmp_path, kms):
    """kms_key_id may be a key id, key ARN, alias name or alias ARN (the alias name is used elsewhere)."""
    meta = kms.describe_key(KeyId=kms_ca.kms_key_id)["KeyMetadata"]
    key_id = {
        "alias_arn": f"arn:aws:kms:{REGION}:123456789012:{kms_ca.kms_key_id}",
        "key_id": meta["KeyId"],
    }[key_id_form]
    (node,) = make_nodes(kms_ca, queues, run_module, tmp_path, (1,))
    submit_all([node])
    audit = tmp_path / "audit.jsonl"
    signed, proc = run_aws("mtls_ca_sign", sign_args_for(kms_ca, queues, kms_key_id=key_id, audit_log_path=str(audit)))
    assert_ok(signed, proc)
    assert signed["issued"] == 1, describe(signed, proc)
    fetch_all([node], kms_ca)
    (line,) = [entry for entry in read_audit(audit) if entry.get("decision") == "issued"]
    assert line.get("signer_ref") == meta["Arn"], f"signer_ref should be the key ARN whatever form named it: {line}"


def test_kms_p384_key_signs_verifiable_certificates(tmp_path, run_aws, kms, queues, sqs, run_module):
    sca = signer_ca_layout(tmp_path, "aws_kms")
    sca.kms_key_id = unique_alias()
    result, proc = run_aws("mtls_ca_init", sca.init_args(kms_key_spec="ECC_NIST_P384"))
    assert_ok(result, proc)
    meta = kms.describe_key(KeyId=sca.kms_key_id)["KeyMetadata"]
    assert meta.get("KeySpec", meta.get("CustomerMasterKeySpec")) == "ECC_NIST_P384", meta
    intermediate = helpers.load_cert(sca.ca.intermediate_cert_path)
    assert isinstance(intermediate.public_key(), ec.EllipticCurvePublicKey)
    assert intermediate.public_key().curve.name == "secp384r1"

    nodes = make_nodes(sca, queues, run_module, tmp_path, (1, 2))
    submit_all(nodes)
    signed, proc = run_aws("mtls_ca_sign", sign_args_for(sca, queues))
    assert_ok(signed, proc)
    assert signed["issued"] == 2, describe(signed, proc)
    for leaf in fetch_all(nodes, sca).values():
        assert isinstance(leaf.signature_hash_algorithm, hashes.SHA384), leaf.signature_algorithm_oid


# ------------------------------------------------------------------------------------------------
# aws_kms: a disabled or missing key loses nothing
# ------------------------------------------------------------------------------------------------


def test_disabled_kms_key_leaves_requests_queued_until_it_is_enabled(
    kms_ca, queues, sqs, run_aws, run_module, tmp_path, kms
):
    first, *later = make_nodes(kms_ca, queues, run_module, tmp_path, (1, 2, 3, 4))
    audit = tmp_path / "audit.jsonl"
    args = sign_args_for(kms_ca, queues, audit_log_path=str(audit))

    # Issue some while the key works.
    submit_all([first])
    signed, proc = run_aws("mtls_ca_sign", args)
    assert_ok(signed, proc)
    assert signed["issued"] == 1, describe(signed, proc)
    fetch_all([first], kms_ca)

    # Disable the key; more requests arrive; the drain finds the key disabled before it takes
    # any request (so no receive count rises) and fails, keeping them all.
    kms.disable_key(KeyId=kms_ca.kms_key_arn)
    submitted = submit_all(later)
    result, proc = run_aws("mtls_ca_sign", args)
    assert_unavailable_up_front(result, proc, "DisabledException", "aws_kms")
    assert (result["error"]["code"], result["error"]["operation"]) == ("DisabledException", "GetPublicKey"), result
    assert_untouched_and_unanswered(sqs, queues, submitted, later, queued=len(later))
    assert not [line for line in read_audit(audit) if line.get("decision") == "retry"], "nothing was received"
    for node in later:  # the nodes wait: nothing to install yet, no error
        fetched, proc = node.fetch(wait=False)
        assert_ok(fetched, proc)
        assert fetched.get("status") != "installed" and not node.current.exists(), describe(fetched, proc)

    # Enable it: the next drain issues every one of them, and every node installs.
    kms.enable_key(KeyId=kms_ca.kms_key_arn)
    signed, proc = run_aws("mtls_ca_sign", args)
    assert_ok(signed, proc)
    assert (signed["issued"], signed["dead_lettered"], signed["left_for_retry"]) == (3, 0, 0), describe(signed, proc)
    assert signed.get("retries") == [], describe(signed)
    assert queue_attributes(sqs, queues.csr) == EMPTY and queue_attributes(sqs, queues.dlq) == EMPTY
    fetch_all(later, kms_ca)
    issued = [line for line in read_audit(audit) if line.get("decision") == "issued"]
    assert len(issued) == 4 and all(line.get("signer_ref") == kms_ca.kms_key_arn for line in issued), issued


def test_kms_key_disabled_mid_drain_every_request_gets_an_outcome(
    kms_ca, queues, sqs, run_aws, run_module, tmp_path, kms, aws_env, sqs_server
):
    """The key is disabled while a drain is signing: KMS calls pass through a proxy that lets the
    first certificate's Sign through, disables the key once it is answered, and holds any other
    certificate's Sign until then. Every request is either issued (and answered) or left queued
    with its reason; none is lost, dead-lettered or answered twice."""
    nodes = make_nodes(kms_ca, queues, run_module, tmp_path, (1, 2, 3, 4))
    submitted = submit_all(nodes)
    audit = tmp_path / "audit.jsonl"

    proxy = SqsProxy(sqs_server.endpoint)
    state = {"first": None, "signs": []}
    disabled = threading.Event()
    lock = threading.Lock()

    def hook(operation, params):
        if operation != "Sign":
            return None
        node = node_signed_in(params, nodes)
        if node is None:
            return None  # not a certificate (a probe of the key): pass
        with lock:
            state["signs"].append(node.instance_id)
            if state["first"] is None:
                state["first"] = node.instance_id
                return None
        disabled.wait(timeout=30)
        return None

    def after_hook(operation, params):
        if operation == "Sign":
            node = node_signed_in(params, nodes)
            if node is not None and node.instance_id == state["first"] and not disabled.is_set():
                try:
                    kms.disable_key(KeyId=kms_ca.kms_key_arn)
                except Exception as exc:  # noqa: BLE001 - reported below; never leave the module hanging
                    state["error"] = exc
                finally:
                    disabled.set()

    proxy.hook, proxy.after_hook = hook, after_hook
    try:
        result, proc = run_aws(
            "mtls_ca_sign",
            sign_args_for(kms_ca, queues, audit_log_path=str(audit)),
            env=dict(aws_env, AWS_ENDPOINT_URL_KMS=proxy.url),
        )
    finally:
        proxy.close()
    assert state["first"] is not None, (
        "no KMS Sign over a certificate of the test's nodes passed the proxy (is Sign sent with "
        f"MessageType RAW?): {proxy.operations()}\n{describe(result, proc)}"
    )
    assert disabled.is_set() and "error" not in state, f"the key was not disabled: {state}\n{describe(result, proc)}"

    issued_node = next(node for node in nodes if node.instance_id == state["first"])
    affected = [node for node in nodes if node is not issued_node]
    assert_signer_unavailable(result, proc, "DisabledException", len(affected))
    assert result.get("issued") == 1 and len(result.get("serials") or []) == 1, describe(result)
    assert result.get("dead_lettered") == 0, describe(result)
    assert_retries_are(result, submitted, affected, "DisabledException")
    assert_untouched_and_unanswered(sqs, queues, submitted, affected, queued=len(affected))
    # The one signed before the key went away was published and can be installed.
    assert queue_attributes(sqs, submitted[issued_node.n]["reply_queue_url"]) == {**EMPTY, "visible": 1}
    fetch_all([issued_node], kms_ca)
    lines = read_audit(audit)
    assert_retry_audit(lines, submitted, affected, "DisabledException", kms_ca.kms_key_arn)
    assert [entry["request_id"] for entry in lines if entry.get("decision") == "issued"] == [submitted[issued_node.n]["request_id"]]

    kms.enable_key(KeyId=kms_ca.kms_key_arn)
    signed, proc = run_aws("mtls_ca_sign", sign_args_for(kms_ca, queues, audit_log_path=str(audit)))
    assert_ok(signed, proc)
    assert (signed["issued"], signed["left_for_retry"]) == (len(affected), 0), describe(signed, proc)
    fetch_all(affected, kms_ca)
    assert queue_attributes(sqs, queues.csr) == EMPTY and queue_attributes(sqs, queues.dlq) == EMPTY


def test_kms_sign_access_denied_mid_drain_leaves_the_request_queued(
    kms_ca, queues, sqs, run_aws, run_module, tmp_path, aws_env, sqs_server
):
    """kms:Sign denied in mid-drain (a policy change, an SCP): KMS calls pass through a proxy that
    lets the first certificate's Sign through, answers the next certificate's Sign with
    AccessDeniedException (HTTP 400) and holds any other certificate's Sign until that answer is
    sent. The denied request, and any other the drain does not sign after it, stays queued (not
    dead-lettered, not answered) and is listed in `retries`; the next drain signs them all."""
    nodes = make_nodes(kms_ca, queues, run_module, tmp_path, (1, 2, 3, 4))
    submitted = submit_all(nodes)
    audit = tmp_path / "audit.jsonl"
    denial = (
        "User: arn:aws:sts::123456789012:assumed-role/CaWorkerRole/worker is not authorized to perform: "
        f"kms:Sign on resource: {kms_ca.kms_key_arn} because no identity-based policy allows the kms:Sign action"
    )

    proxy = AnsweringProxy(sqs_server.endpoint)
    state: dict[str, Any] = {"first": None, "denied": None}
    answered = threading.Event()
    lock = threading.Lock()

    def answer(operation, params):
        if operation != "Sign":
            return None
        node = node_signed_in(params, nodes)
        if node is None:
            return None  # not a certificate (the probe Sign before the drain): pass
        with lock:
            if state["first"] in (None, node.instance_id):
                state["first"] = node.instance_id
                return None
            if state["denied"] in (None, node.instance_id):
                state["denied"] = node.instance_id
                answered.set()  # set before the answer is written: the others go on after it
                return 400, {"__type": "AccessDeniedException", "message": denial}
        answered.wait(timeout=30)
        return None

    proxy.answer = answer
    try:
        result, proc = run_aws(
            "mtls_ca_sign",
            sign_args_for(kms_ca, queues, audit_log_path=str(audit)),
            env=dict(aws_env, AWS_ENDPOINT_URL_KMS=proxy.url),
        )
    finally:
        proxy.close()
    assert (
        state["first"] is not None and state["denied"] is not None
    ), f"no two certificates' Sign passed the proxy: {state} {proxy.operations()}\n{describe(result, proc)}"

    # Every request has one outcome: issued (and answered), or left queued with the reason.
    retries = result.get("retries")
    assert isinstance(retries, list), describe(result, proc)
    by_id = {node.instance_id: node for node in nodes}
    retried = [by_id[entry["instance_id"]] for entry in retries]
    issued = [node for node in nodes if node not in retried]
    denied = by_id[state["denied"]]
    assert denied in retried, f"the request whose Sign was denied is not in retries: {retries}"
    assert by_id[state["first"]] in issued, f"the request signed before the denial was not issued: {retries}"
    assert_signer_unavailable(result, proc, "AccessDeniedException", len(retried))
    assert result.get("issued") == len(issued) and len(result.get("serials") or []) == len(issued), describe(result)
    assert result.get("dead_lettered") == 0 and result.get("rejected") == 0, describe(result)
    assert_retries_are(result, submitted, retried, "AccessDeniedException")
    assert_untouched_and_unanswered(sqs, queues, submitted, retried, queued=len(retried))
    for node in issued:
        assert queue_attributes(sqs, submitted[node.n]["reply_queue_url"]) == {**EMPTY, "visible": 1}
    fetch_all(issued, kms_ca)
    lines = read_audit(audit)
    assert_retry_audit(lines, submitted, retried, "AccessDeniedException", kms_ca.kms_key_arn)
    assert sorted(entry["request_id"] for entry in lines if entry.get("decision") == "issued") == sorted(
        submitted[node.n]["request_id"] for node in issued
    ), lines
    assert call_count(result, "kms_calls", "Sign") >= 2, describe(result)
    assert_calls_total(result, "kms_calls")

    # Allowed again (no proxy): the next drain signs what waited.
    signed, proc = run_aws("mtls_ca_sign", sign_args_for(kms_ca, queues, audit_log_path=str(audit)))
    assert_ok(signed, proc)
    assert (signed["issued"], signed["left_for_retry"], signed["dead_lettered"]) == (len(retried), 0, 0), describe(
        signed, proc
    )
    fetch_all(retried, kms_ca)
    assert queue_attributes(sqs, queues.csr) == EMPTY and queue_attributes(sqs, queues.dlq) == EMPTY


@pytest.mark.parametrize("form", ["alias", "key_arn"])
def test_missing_kms_key_fails_clearly_and_loses_nothing(form, kms_ca, queues, sqs, run_aws, run_module, tmp_path):
    missing = {
        "alias": f"alias/fleetpki-missing-{uuid.uuid4().hex[:10]}",
        "key_arn": f"arn:aws:kms:{REGION}:123456789012:key/{uuid.uuid4()}",
    }[form]
    nodes = make_nodes(kms_ca, queues, run_module, tmp_path, (1, 2))
    submitted = submit_all(nodes)
    audit = tmp_path / "audit.jsonl"

    result, proc = run_aws("mtls_ca_sign", sign_args_for(kms_ca, queues, kms_key_id=missing, audit_log_path=str(audit)))
    # Found by the check before the drain (GetPublicKey): `the signer is unavailable: the KMS key
    # <key> does not exist: ...; no request was taken from the queue ...`, empty counts, no SQS call.
    assert_unavailable_up_front(result, proc, "does not exist", "aws_kms")
    msg = result["msg"]
    assert missing.split("/", 1)[1] in msg, f"msg does not name the missing key {missing}: {msg!r}"
    assert helpers.sqs_call_count(result, "ReceiveMessage") == 0, describe(result)
    # Nothing lost: the requests are all in the queue and visible, nothing dead-lettered or answered,
    # and nothing was received (no audit line at all; this peek is each message's first receive).
    assert_untouched_and_unanswered(sqs, queues, submitted, nodes, queued=len(nodes))
    assert read_audit(audit) == [], "the drain wrote audit lines: it took a request"
    peek = helpers.receive_all(sqs, queues.csr, visibility_timeout=0)
    counts = {m["MessageId"]: int(m["Attributes"]["ApproximateReceiveCount"]) for m in peek}
    assert sorted(counts.values()) == [1] * len(nodes), f"received before this peek: {counts}"

    # With the right key the same requests are issued.
    signed, proc = run_aws("mtls_ca_sign", sign_args_for(kms_ca, queues))
    assert_ok(signed, proc)
    assert signed["issued"] == 2, describe(signed, proc)
    fetch_all(nodes, kms_ca)


def test_kms_key_that_is_not_the_intermediates_issues_nothing(kms_ca, queues, sqs, run_aws, run_module, tmp_path, kms):
    """Another (working) KMS key than the one ownca_path certifies: no certificate may be published
    (it would not verify); the requests stay queued."""
    other = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    nodes = make_nodes(kms_ca, queues, run_module, tmp_path, (1, 2))
    submitted = submit_all(nodes)
    result, proc = run_aws("mtls_ca_sign", sign_args_for(kms_ca, queues, kms_key_id=other))
    assert result.get("failed") is True, f"signed with a key ownca_path does not certify:\n{describe(result, proc)}"
    # Found before the drain (GetPublicKey against ownca_path's public key): the message says the
    # key is not the certificate's, naming both, and no SQS call was made.
    msg = result.get("msg") or ""
    assert "does not belong to the CA certificate" in msg, f"msg does not say the key is another: {msg!r}"
    assert (
        other in msg and str(kms_ca.ca.intermediate_cert_path) in msg
    ), f"msg does not name the key and certificate: {msg!r}"
    assert result.get("sqs_calls", {}).get("total") == 0, f"SQS was called:\n{describe(result, proc)}"
    assert not result.get("issued") and not result.get("serials"), describe(result)
    assert_untouched_and_unanswered(sqs, queues, submitted, nodes, queued=len(nodes))


# ------------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, option",
    [
        ("kms_with_key_file", "ownca_privatekey_path"),
        ("kms_without_key_id", "kms_key_id"),
        ("pca_without_arn", "certificate_authority_arn"),
        ("pca_with_key_file", "ownca_privatekey_path"),
        ("file_without_key_file", "ownca_privatekey_path"),
        ("unknown_signer", "signer"),
    ],
)
def test_sign_signer_options_are_validated(case, option, kms_ca, queues, sqs, run_aws, run_module, tmp_path):
    (node,) = make_nodes(kms_ca, queues, run_module, tmp_path, (1,))
    submit_all([node])
    before = queue_attributes(sqs, queues.csr)
    base = sign_args_for(kms_ca, queues)
    base.pop("kms_key_id")
    key_file = str(kms_ca.ca.dir / "intermediate.key")
    args = {
        "kms_with_key_file": dict(base, signer="aws_kms", kms_key_id=kms_ca.kms_key_id, ownca_privatekey_path=key_file),
        "kms_without_key_id": dict(base, signer="aws_kms"),
        "pca_without_arn": dict(base, signer="aws_pca"),
        "pca_with_key_file": dict(
            base,
            signer="aws_pca",
            certificate_authority_arn="arn:aws:acm-pca:us-east-1:123456789012:"
            "certificate-authority/11111111-2222-3333-4444-555555555555",
            ownca_privatekey_path=key_file,
        ),
        "file_without_key_file": dict(base, signer="file"),
        "unknown_signer": dict(base, signer="hsm"),
    }[case]
    result, _proc = run_aws("mtls_ca_sign", args)
    assert_failed_naming(result, option)
    assert queue_attributes(sqs, queues.csr) == before, "a refused task touched the queue"


@pytest.mark.parametrize(
    "case, option",
    [
        ("kms_without_key_id", "kms_key_id"),
        ("pca_without_arn", "certificate_authority_arn"),
        ("file_without_key", "intermediate_privatekey_path"),
    ],
)
def test_init_signer_options_are_validated(case, option, tmp_path, run_aws):
    sca = signer_ca_layout(tmp_path, "file")
    args = sca.init_args()
    args["signer"] = {"kms_without_key_id": "aws_kms", "pca_without_arn": "aws_pca", "file_without_key": "file"}[case]
    result, _proc = run_aws("mtls_ca_init", args)
    assert_failed_naming(result, option)
    assert not sca.ca.intermediate_cert_path.exists()


# ------------------------------------------------------------------------------------------------
# aws_pca
# ------------------------------------------------------------------------------------------------


def test_pca_ca_init_certifies_and_imports_the_private_ca_once(tmp_path, run_aws, acmpca):
    sca = signer_ca_layout(tmp_path, "aws_pca")
    sca.pca_arn = create_subordinate_pca(acmpca)
    described = acmpca.describe_certificate_authority(CertificateAuthorityArn=sca.pca_arn)["CertificateAuthority"]
    assert described["Status"] == "PENDING_CERTIFICATE", described
    pca_csr = x509.load_pem_x509_csr(
        acmpca.get_certificate_authority_csr(CertificateAuthorityArn=sca.pca_arn)["Csr"].encode()
    )

    result, proc = run_aws("mtls_ca_init", sca.init_args())
    assert_ok(result, proc)
    assert result["changed"] is True, describe(result, proc)
    assert result.get("signer") == "aws_pca", describe(result)
    assert result.get("certificate_authority_arn") == sca.pca_arn, describe(result)
    for op in ("GetCertificateAuthorityCsr", "ImportCertificateAuthorityCertificate"):
        assert call_count(result, "acmpca_calls", op) == 1, f"{op} not counted once:\n{describe(result)}"
    assert_calls_total(result, "acmpca_calls")

    # The Private CA is ACTIVE with the certificate our root made from its CSR.
    described = acmpca.describe_certificate_authority(CertificateAuthorityArn=sca.pca_arn)["CertificateAuthority"]
    assert described["Status"] == "ACTIVE", described
    ca = sca.ca
    root = helpers.load_cert(ca.root_cert_path)
    intermediate = helpers.load_cert(ca.intermediate_cert_path)
    imported = x509.load_pem_x509_certificate(
        acmpca.get_certificate_authority_certificate(CertificateAuthorityArn=sca.pca_arn)["Certificate"].encode()
    )
    assert imported == intermediate, "intermediate_cert_path is not the certificate imported into the Private CA"
    assert spki(intermediate.public_key()) == spki(pca_csr.public_key()), "not the Private CA's key"
    # The Private CA names itself (the issuer of what it issues) by its CSR's subject.
    assert intermediate.subject == pca_csr.subject, (intermediate.subject, pca_csr.subject)
    assert intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    verify_signature(root, intermediate)
    assert helpers.load_certs(ca.chain_path) == [intermediate, root]
    assert_no_private_key_under(ca.dir)

    # Second run (ACTIVE now; the pca_arn alias): the certificate is fetched and chains to the root.
    tree = tree_snapshot(ca.dir)
    args = sca.init_args()
    args["pca_arn"] = args.pop("certificate_authority_arn")
    again, proc = run_aws("mtls_ca_init", args)
    assert_ok(again, proc)
    assert again["changed"] is False, describe(again, proc)
    assert call_count(again, "acmpca_calls", "ImportCertificateAuthorityCertificate") == 0, describe(again)
    assert tree_snapshot(ca.dir) == tree, "the second run wrote under the CA directory"


def test_pca_issues_verifiable_certificates_and_audits_their_arns(
    pca_ca, queues, sqs, run_aws, run_module, tmp_path, acmpca
):
    nodes = make_nodes(pca_ca, queues, run_module, tmp_path, (1, 2, 3))
    submitted = submit_all(nodes)
    audit = tmp_path / "audit.jsonl"

    signed, proc = run_aws("mtls_ca_sign", sign_args_for(pca_ca, queues, audit_log_path=str(audit)))
    assert_ok(signed, proc)
    assert (signed["issued"], signed["rejected"], signed["dead_lettered"]) == (3, 0, 0), describe(signed, proc)
    assert signed.get("signer") == "aws_pca", describe(signed)
    assert call_count(signed, "acmpca_calls", "IssueCertificate") == 3, describe(signed)
    assert call_count(signed, "acmpca_calls", "GetCertificate") >= 3, describe(signed)
    assert_calls_total(signed, "acmpca_calls")
    assert "kms_calls" not in signed, describe(signed)
    assert queue_attributes(sqs, queues.csr) == EMPTY and queue_attributes(sqs, queues.dlq) == EMPTY

    leaves = fetch_all(nodes, pca_ca)
    # The serials are the ones Private CA chose.
    assert {leaf.serial_number for leaf in leaves.values()} == {helpers.serial_int(s) for s in signed["serials"]}
    now = dt.datetime.now(dt.UTC)
    for leaf in leaves.values():
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
        assert leaf.not_valid_before_utc <= now
        assert leaf.not_valid_after_utc <= now + dt.timedelta(days=30, hours=1), "Validity not from the policy"

    # The audit log names each certificate's ARN, and that ARN is the installed certificate.
    issued = [line for line in read_audit(audit) if line.get("decision") == "issued"]
    assert {line["request_id"] for line in issued} == {r["request_id"] for r in submitted.values()}, issued
    by_serial = {leaf.serial_number: leaf for leaf in leaves.values()}
    for line in issued:
        assert line.get("signer") == "aws_pca", line
        ref = line.get("signer_ref") or ""
        assert ref.startswith(
            pca_ca.pca_arn + "/certificate/"
        ), f"signer_ref is not a certificate ARN of the CA: {line}"
        got = acmpca.get_certificate(CertificateAuthorityArn=pca_ca.pca_arn, CertificateArn=ref)["Certificate"]
        cert = x509.load_pem_x509_certificate(got.encode())
        assert by_serial.get(cert.serial_number) == cert, f"{ref} is not an installed certificate"
        assert helpers.serial_int(line["serial"]) == cert.serial_number, line


def test_pca_profiles_choose_the_templates(pca_ca, queues, sqs, run_aws, run_module, tmp_path):
    """client / server profiles get the client-only / server-only EKU (their default templates)."""
    client, server = make_nodes(pca_ca, queues, run_module, tmp_path, (1, 2))
    assert_ok(*client.submit(certificate_profile="client"))
    assert_ok(*server.submit(certificate_profile="server"))
    signed, proc = run_aws("mtls_ca_sign", sign_args_for(pca_ca, queues))
    assert_ok(signed, proc)
    assert signed["issued"] == 2, describe(signed, proc)
    for node, purpose, other, want in (
        (client, "sslclient", "sslserver", ExtendedKeyUsageOID.CLIENT_AUTH),
        (server, "sslserver", "sslclient", ExtendedKeyUsageOID.SERVER_AUTH),
    ):
        result, proc = node.fetch()
        assert_ok(result, proc)
        assert result["status"] == "installed", describe(result, proc)
        leaf = check_pair(node.current)
        assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [want]
        helpers.assert_openssl_verifies(
            node.current / "cert.pem", pca_ca.ca.root_cert_path, pca_ca.ca.chain_path, purpose
        )
        refused = helpers.openssl_verify(
            node.current / "cert.pem", pca_ca.ca.root_cert_path, pca_ca.ca.chain_path, other
        )
        assert refused.returncode != 0, f"{node.instance_id}'s {want._name} certificate passes -purpose {other}"


def node_csr_with_subject(node: Node, subject: x509.Name) -> str:
    """A CSR for the node's names under another subject, with a fresh P-256 key."""
    general = []
    for san in node.sans:
        kind, value = san.split(":", 1)
        general.append(x509.DNSName(value) if kind == "DNS" else x509.IPAddress(ipaddress.ip_address(value)))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.SubjectAlternativeName(general), critical=False)
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def replace_queued_csr(sqs, queues, node: Node, csr_pem: str) -> dict[str, Any]:
    """Takes the node's wire-v1 request off the CSR queue (receive + delete) and sends it back with
    csr_pem replaced, the same body otherwise and the same InstanceId attribute (as the hostile
    tests do). Returns the new body."""
    messages = helpers.receive_all(sqs, queues.csr, visibility_timeout=60)
    (message,) = [m for m in messages if json.loads(m["Body"]).get("instance_id") == node.instance_id]
    for m in messages:
        if m is not message:  # someone else's: visible again at once
            sqs.change_message_visibility(QueueUrl=queues.csr, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
    sqs.delete_message(QueueUrl=queues.csr, ReceiptHandle=message["ReceiptHandle"])
    body = json.loads(message["Body"])
    assert body["version"] == 1, body
    attrs = {k: v["StringValue"] for k, v in message.get("MessageAttributes", {}).items()}
    body["csr_pem"] = csr_pem
    sqs.send_message(
        QueueUrl=queues.csr,
        MessageBody=json.dumps(body),
        MessageAttributes={k: {"DataType": "String", "StringValue": v} for k, v in attrs.items()},
    )
    return body


def test_pca_refuses_a_csr_whose_subject_is_more_than_the_instance_id(
    pca_ca, queues, sqs, run_aws, run_module, tmp_path
):
    """Private CA copies the CSR's subject into the certificate, so with aws_pca the subject must be
    exactly CN=<instance id>: a CSR for CN=<instance id>, O=admins is refused with
    `subject_mismatch` on the node's reply queue (not dead-lettered, not issued) before any
    IssueCertificate; a plain CSR beside it is issued."""
    greedy, plain = make_nodes(pca_ca, queues, run_module, tmp_path, (1, 2))
    submitted = submit_all([greedy])
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, greedy.instance_id),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "admins"),
        ]
    )
    body = replace_queued_csr(sqs, queues, greedy, node_csr_with_subject(greedy, subject))
    submitted.update(submit_all([plain]))
    assert queue_attributes(sqs, queues.csr) == {**EMPTY, "visible": 2}
    audit = tmp_path / "audit.jsonl"

    signed, proc = run_aws("mtls_ca_sign", sign_args_for(pca_ca, queues, audit_log_path=str(audit)))
    assert_ok(signed, proc)
    assert (signed["issued"], signed["rejected"], signed["dead_lettered"]) == (1, 1, 0), describe(signed, proc)
    assert signed.get("left_for_retry") == 0 and signed.get("retries") == [], describe(signed)
    # One IssueCertificate: the plain request's. The refused one never reached Private CA.
    assert call_count(signed, "acmpca_calls", "IssueCertificate") == 1, describe(signed)
    assert_calls_total(signed, "acmpca_calls")
    assert queue_attributes(sqs, queues.csr) == EMPTY and queue_attributes(sqs, queues.dlq) == EMPTY
    assert queue_attributes(sqs, queues.shared) == EMPTY

    # The refusal is answered on the node's reply queue.
    reply_url = submitted[greedy.n]["reply_queue_url"]
    (message,) = helpers.receive_all(sqs, reply_url, visibility_timeout=0)
    reply = json.loads(message["Body"])
    assert reply.get("kind") == "rejection" and "certificate_pem" not in reply, reply
    assert reply["request_id"] == body["request_id"] and reply["instance_id"] == greedy.instance_id, reply
    assert reply["reason_code"] == "subject_mismatch", reply
    lines = read_audit(audit)
    (refused,) = [line for line in lines if line.get("request_id") == body["request_id"]]
    assert refused["decision"] == "rejected" and refused["reason_code"] == "subject_mismatch", refused
    assert refused.get("serial") is None and refused.get("certificate_sha256") is None, refused
    result, proc = greedy.fetch(wait=True, timeout=30)
    assert result.get("failed") is True and "subject_mismatch" in (result.get("msg") or ""), describe(result, proc)
    assert not greedy.current.exists(), "a refused request led to an installed certificate"

    # The plain CSR (subject CN=<instance id> alone) beside it was issued.
    leaf = fetch_all([plain], pca_ca)[plain.n]
    assert leaf.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, plain.instance_id)]), leaf.subject


def test_pca_refusing_one_request_answers_it_signer_refused(
    pca_ca, queues, sqs, run_aws, run_module, tmp_path, aws_env, sqs_server
):
    """An error about one request (Private CA answers its IssueCertificate with
    MalformedCSRException, injected by a proxy) is not an outage: the request is answered to its
    node as a rejection with reason code `signer_refused` and deleted, not retried and not
    dead-lettered; the drain goes on and issues the other request."""
    refused, plain = make_nodes(pca_ca, queues, run_module, tmp_path, (1, 2))
    submitted = submit_all([refused, plain])
    audit = tmp_path / "audit.jsonl"

    proxy = AnsweringProxy(sqs_server.endpoint)
    seen: list[str] = []

    def answer(operation, params):
        if operation != "IssueCertificate":
            return None
        try:
            csr = x509.load_pem_x509_csr(base64.b64decode(params.get("Csr") or ""))
        except ValueError:
            return None
        cn = helpers.common_name(csr)
        seen.append(cn)
        if cn != refused.instance_id:
            return None
        return 400, {"__type": "MalformedCSRException", "message": "The certificate signing request is invalid."}

    proxy.answer = answer
    try:
        signed, proc = run_aws(
            "mtls_ca_sign",
            sign_args_for(pca_ca, queues, audit_log_path=str(audit)),
            env=dict(aws_env, AWS_ENDPOINT_URL_ACM_PCA=proxy.url),
        )
    finally:
        proxy.close()
    assert (
        refused.instance_id in seen
    ), f"the refused node's IssueCertificate never came: {seen}\n{describe(signed, proc)}"
    assert_ok(signed, proc)
    assert (signed["issued"], signed["rejected"], signed["dead_lettered"]) == (1, 1, 0), describe(signed, proc)
    assert signed.get("left_for_retry") == 0 and signed.get("retries") == [], describe(signed)
    assert queue_attributes(sqs, queues.csr) == EMPTY and queue_attributes(sqs, queues.dlq) == EMPTY

    (message,) = helpers.receive_all(sqs, submitted[refused.n]["reply_queue_url"], visibility_timeout=0)
    reply = json.loads(message["Body"])
    assert reply.get("kind") == "rejection" and reply["reason_code"] == "signer_refused", reply
    assert reply["request_id"] == submitted[refused.n]["request_id"], reply
    assert "MalformedCSRException" in reply.get("message", ""), reply
    # Recorded before the IssueCertificate call (`requested`, with its idempotency token), then refused.
    requested, line = [entry for entry in read_audit(audit) if entry.get("request_id") == submitted[refused.n]["request_id"]]
    assert requested["decision"] == "requested" and requested["idempotency_token"], requested
    assert line["decision"] == "rejected" and line["reason_code"] == "signer_refused", line
    result, proc = refused.fetch(wait=True, timeout=30)
    assert result.get("failed") is True and "signer_refused" in (result.get("msg") or ""), describe(result, proc)
    assert not refused.current.exists()
    fetch_all([plain], pca_ca)


def test_pca_not_active_leaves_requests_queued_until_it_is(pca_ca, queues, sqs, run_aws, run_module, tmp_path, acmpca):
    nodes = make_nodes(pca_ca, queues, run_module, tmp_path, (1, 2))
    submitted = submit_all(nodes)
    audit = tmp_path / "audit.jsonl"
    args = sign_args_for(pca_ca, queues, audit_log_path=str(audit))

    acmpca.update_certificate_authority(CertificateAuthorityArn=pca_ca.pca_arn, Status="DISABLED")
    result, proc = run_aws("mtls_ca_sign", args)
    assert_unavailable_up_front(result, proc, "InvalidStateException", "aws_pca")
    assert_untouched_and_unanswered(sqs, queues, submitted, nodes, queued=len(nodes))
    assert not [line for line in read_audit(audit) if line.get("decision") == "retry"], "nothing was received"

    acmpca.update_certificate_authority(CertificateAuthorityArn=pca_ca.pca_arn, Status="ACTIVE")
    signed, proc = run_aws("mtls_ca_sign", args)
    assert_ok(signed, proc)
    assert (signed["issued"], signed["left_for_retry"]) == (2, 0), describe(signed, proc)
    fetch_all(nodes, pca_ca)


def test_pca_that_does_not_exist_fails_clearly_and_loses_nothing(pca_ca, queues, sqs, run_aws, run_module, tmp_path):
    missing = pca_ca.pca_arn.rsplit("/", 1)[0] + f"/{uuid.uuid4()}"
    nodes = make_nodes(pca_ca, queues, run_module, tmp_path, (1, 2))
    submitted = submit_all(nodes)
    result, proc = run_aws("mtls_ca_sign", sign_args_for(pca_ca, queues, certificate_authority_arn=missing))
    assert result.get("failed") is True, describe(result, proc)
    assert "ResourceNotFoundException" in (result.get("msg") or ""), describe(result, proc)
    assert not result.get("issued"), describe(result)
    assert_untouched_and_unanswered(sqs, queues, submitted, nodes, queued=len(nodes))


# ------------------------------------------------------------------------------------------------
# mtls_ca_revoke with the KMS key
# ------------------------------------------------------------------------------------------------


def test_kms_revoke_signs_the_crl_through_kms_and_pca_is_refused(
    kms_ca, pca_ca, queues, sqs, run_aws, run_module, tmp_path
):
    (node,) = make_nodes(kms_ca, queues, run_module, tmp_path, (1,))
    submit_all([node])
    assert_ok(*run_aws("mtls_ca_sign", sign_args_for(kms_ca, queues)))
    leaf = fetch_all([node], kms_ca)[1]
    crl_dir = tmp_path / "crl"
    crl_dir.mkdir()
    args = {
        "ownca_path": str(kms_ca.ca.intermediate_cert_path),
        "ca_chain_path": str(kms_ca.ca.chain_path),
        "crl_path": str(crl_dir / "crl.pem"),
        "revocations_path": str(crl_dir / "revocations.json"),
        "serials": [format(leaf.serial_number, "x")],
        "signer": "aws_kms",
        "kms_key_id": kms_ca.kms_key_id,
    }
    result, proc = run_aws("mtls_ca_revoke", args)
    assert_ok(result, proc)
    assert result["changed"] is True, describe(result, proc)
    crl = x509.load_pem_x509_crl((crl_dir / "crl.pem").read_bytes())
    intermediate = helpers.load_cert(kms_ca.ca.intermediate_cert_path)
    assert crl.issuer == intermediate.subject and crl.is_signature_valid(intermediate.public_key())
    assert {entry.serial_number for entry in crl} == {leaf.serial_number}
    assert_no_private_key_under(kms_ca.ca.dir)

    pca_args = dict(
        args,
        signer="aws_pca",
        ownca_path=str(pca_ca.ca.intermediate_cert_path),
        ca_chain_path=str(pca_ca.ca.chain_path),
        crl_path=str(crl_dir / "pca-crl.pem"),
        revocations_path=str(crl_dir / "pca-revocations.json"),
    )
    pca_args.pop("kms_key_id")
    refused, proc = run_aws("mtls_ca_revoke", pca_args)
    assert refused.get("failed") is True and "aws_pca" in (refused.get("msg") or ""), describe(refused, proc)
    assert not (crl_dir / "pca-crl.pem").exists()

    # A KMS key that is gone: the CRL is not touched, and KMS's answer is in `error`.
    before = (crl_dir / "crl.pem").read_bytes()
    missing_key = dict(args, kms_key_id=f"arn:aws:kms:{REGION}:123456789012:key/{uuid.uuid4()}", serials=["0abc"])
    gone, proc = run_aws("mtls_ca_revoke", missing_key)
    assert gone.get("failed") is True and "does not exist" in gone["msg"], describe(gone, proc)
    assert (gone["error"]["kind"], gone["error"]["code"]) == ("not_found", "NotFoundException"), gone
    assert (crl_dir / "crl.pem").read_bytes() == before


def test_kms_crl_with_many_revocations_is_signed_through_a_digest(kms_ca, run_aws, tmp_path):
    """A CRL whose to-be-signed part is over 4096 bytes (KMS's limit for a RAW message): 120 made-up
    serials revoked with aws_kms. It is signed as a digest (MessageType DIGEST) and verifies with
    openssl against the intermediate, listing all 120."""
    serials = sorted({x509.random_serial_number() for _ in range(120)})
    assert len(serials) == 120
    crl_dir = tmp_path / "crl"
    crl_dir.mkdir()
    crl_path = crl_dir / "crl.pem"
    args = {
        "ownca_path": str(kms_ca.ca.intermediate_cert_path),
        "ca_chain_path": str(kms_ca.ca.chain_path),
        "crl_path": str(crl_path),
        "revocations_path": str(crl_dir / "revocations.json"),
        "serials": [format(serial, "x") for serial in serials],
        "reason": "key_compromise",
        "signer": "aws_kms",
        "kms_key_id": kms_ca.kms_key_id,
    }
    result, proc = run_aws("mtls_ca_revoke", args)
    assert_ok(result, proc)
    assert result["changed"] is True, describe(result, proc)
    assert call_count(result, "kms_calls", "Sign") >= 1, describe(result)
    assert_calls_total(result, "kms_calls")

    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    assert (
        len(crl.tbs_certlist_bytes) > 4096
    ), f"the CRL's TBS is {len(crl.tbs_certlist_bytes)} bytes: not over KMS's RAW limit"
    intermediate = helpers.load_cert(kms_ca.ca.intermediate_cert_path)
    assert crl.issuer == intermediate.subject and crl.is_signature_valid(intermediate.public_key())
    assert sorted(entry.serial_number for entry in crl) == serials
    # openssl: the signature verifies against the chain (the intermediate), and it lists 120 entries.
    verified = subprocess.run(
        ["openssl", "crl", "-in", str(crl_path), "-CAfile", str(kms_ca.ca.chain_path), "-noout"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert verified.returncode == 0 and "verify OK" in verified.stdout + verified.stderr, verified
    text = subprocess.run(
        ["openssl", "crl", "-in", str(crl_path), "-noout", "-text"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert text.count("Serial Number:") == 120, text[:2000]
    assert_no_private_key_under(kms_ca.ca.dir)


# ------------------------------------------------------------------------------------------------
# serve mode with aws_kms
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def services():
    started: list[Service] = []
    yield started
    for service in started:
        service.stop()


def test_serve_keeps_requests_queued_while_the_kms_key_is_disabled(
    kms_ca, queues, sqs, run_module, tmp_path, kms, aws_env, services
):
    first, second, third = make_nodes(kms_ca, queues, run_module, tmp_path, (1, 2, 3))
    config = write_config(tmp_path / "serve.json", sign_args_for(kms_ca, queues))
    service = start_serve(config, aws_env)
    services.append(service)
    service.wait_for_stderr("serving ", timeout=30)

    # Working key: answered while it runs.
    submit_all([first])
    fetched, proc = first.fetch(timeout=60)
    assert_ok(fetched, proc)
    assert_node_installed_and_verifies(first, kms_ca, fetched, proc)

    # Disabled: new requests stay queued (not dead-lettered, not answered).
    kms.disable_key(KeyId=kms_ca.kms_key_arn)
    submitted = submit_all([second, third])
    retry_of_second = lambda: [  # noqa: E731
        line
        for line in service.audit_lines()
        if line.get("decision") == "retry" and line.get("request_id") == submitted[second.n]["request_id"]
    ]
    service.wait_for(retry_of_second, 30, "a retry audit line for the request signed while the key is disabled")
    # Three failed probes (1, 2, 4 s apart): a worker that kept receiving meanwhile would show it.
    service.wait_for_stderr("signer still unavailable", timeout=60, count=3)
    assert total(queue_attributes(sqs, queues.csr)) == 2, queue_attributes(sqs, queues.csr)
    assert queue_attributes(sqs, queues.dlq) == EMPTY, "a request was dead-lettered during the outage"
    for node in (second, third):
        assert queue_attributes(sqs, submitted[node.n]["reply_queue_url"]) == EMPTY
    retries: dict[str, int] = {}
    for line in service.audit_lines():
        if line.get("decision") == "retry":
            retries[line.get("request_id")] = retries.get(line.get("request_id"), 0) + 1
            assert line.get("reason_code") == "signer_unavailable" and "DisabledException" in line.get(
                "reason", ""
            ), line
    assert all(n == 1 for n in retries.values()), f"a request was received more than once during the outage: {retries}"
    # Receive counts: at most one receive by the worker during the outage (+1 for this peek).
    peek = helpers.receive_all(sqs, queues.csr, visibility_timeout=0)
    counts = {m["MessageId"]: int(m["Attributes"]["ApproximateReceiveCount"]) for m in peek}
    assert counts and all(c <= 2 for c in counts.values()), f"receive counts during the outage: {counts}"

    # Enabled again: the service resumes and signs both.
    kms.enable_key(KeyId=kms_ca.kms_key_arn)
    for node in (second, third):
        fetched, proc = node.fetch(timeout=90)
        assert_ok(fetched, proc)
        assert_node_installed_and_verifies(node, kms_ca, fetched, proc)
    assert queue_attributes(sqs, queues.dlq) == EMPTY
    issued = [line for line in service.audit_lines() if line.get("decision") == "issued"]
    assert {line["request_id"] for line in issued} >= {r["request_id"] for r in submitted.values()}
    assert all(line.get("signer_ref") == kms_ca.kms_key_arn for line in issued), issued

    service.signal(signal.SIGTERM)
    assert service.wait_exit(timeout=30) == 0, service.describe()


def test_serve_started_with_the_kms_key_disabled_waits_for_it_without_receiving(
    kms_ca, queues, sqs, run_module, tmp_path, kms, aws_env, services
):
    """A service (re)started while the key is disabled retries the key, not the queue: no request
    is received until the key signs, then the waiting ones are signed."""
    (node,) = make_nodes(kms_ca, queues, run_module, tmp_path, (1,))
    submitted = submit_all([node])
    kms.disable_key(KeyId=kms_ca.kms_key_arn)
    config = write_config(tmp_path / "serve.json", sign_args_for(kms_ca, queues))
    service = start_serve(config, aws_env)
    services.append(service)
    service.wait_for_stderr("signer unavailable at start", timeout=30)
    service.wait_for_stderr("signer unavailable at start", timeout=60, count=3)  # three tries, 1 and 2 s apart
    assert service.proc.poll() is None, f"the service exited instead of waiting for the key\n{service.describe()}"
    peek = helpers.receive_all(sqs, queues.csr, visibility_timeout=0)
    assert [int(m["Attributes"]["ApproximateReceiveCount"]) for m in peek] == [1], "received while the key was disabled"

    kms.enable_key(KeyId=kms_ca.kms_key_arn)
    service.wait_for_stderr("serving ", timeout=90)
    fetched, proc = node.fetch(timeout=90)
    assert_ok(fetched, proc)
    assert_node_installed_and_verifies(node, kms_ca, fetched, proc)
    issued = {line.get("request_id") for line in service.audit_lines() if line.get("decision") == "issued"}
    assert submitted[node.n]["request_id"] in issued, issued
    service.signal(signal.SIGTERM)
    assert service.wait_exit(timeout=30) == 0, service.describe()
