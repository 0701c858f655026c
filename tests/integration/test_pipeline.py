"""The pipeline end to end: mtls_csr_submit -> mtls_ca_sign -> mtls_cert_fetch through a moto SQS server.

What it proves: certificates that `openssl verify` accepts for sslserver and sslclient with
exactly the requested SANs; idempotent second rounds that send nothing; check mode that touches no
file, message or receive count; options validated like AnsibleModule; tampered CSRs dead-lettered;
foreign or mismatched certificates refused by the node; secrets never echoed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

import helpers
from conftest import ca_paths
from helpers import (
    assert_failed_naming,
    assert_ok,
    assert_openssl_verifies,
    describe,
    file_mode,
    queue_attributes,
    sqs_call_count,
    tree_snapshot,
)

EMPTY = {"visible": 0, "in_flight": 0, "delayed": 0}


def enroll(nodes, sign):
    """submit for every node, one signing drain, fetch for every node; returns the results."""
    submitted = {}
    for node in nodes:
        result, proc = node.submit()
        assert_ok(result, proc)
        submitted[node.n] = result
    signed, proc = sign()
    assert_ok(signed, proc)
    fetched = {}
    for node in nodes:
        result, proc = node.fetch()
        assert_ok(result, proc)
        fetched[node.n] = result
    return submitted, signed, fetched


# ------------------------------------------------------------------------------------------------
# Submit -> sign -> fetch
# ------------------------------------------------------------------------------------------------


def test_three_nodes_get_verifiable_mtls_certificates(make_node, sign, queues, sqs, ca):
    nodes = [make_node(n) for n in (1, 2, 3)]

    # Submit: a fresh key (0600) per node, a CSR for exactly its names, one message each.
    submitted = {}
    for node in nodes:
        result, proc = node.submit()
        assert_ok(result, proc)
        assert result["changed"] is True and result["submitted"] is True, describe(result, proc)
        assert isinstance(result["request_id"], str) and result["request_id"], describe(result)
        assert isinstance(result["message_id"], str) and result["message_id"], describe(result)
        assert result["reply_queue_url"].endswith("/" + queues.reply_prefix + node.instance_id), describe(result)
        assert node.pending_key.is_file(), f"no pending key at {node.pending_key}"
        assert file_mode(node.pending_key) == 0o600, oct(file_mode(node.pending_key))
        assert Path(result["privatekey_path"]).resolve() == node.pending_key.resolve(), describe(result)
        assert node.pending_request["request_id"] == result["request_id"]
        csr = x509.load_pem_x509_csr(result["csr"].encode())
        assert csr.is_signature_valid
        assert helpers.common_name(csr) == node.instance_id
        csr_sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sorted(f"DNS:{v}" for v in csr_sans.get_values_for_type(x509.DNSName)) + sorted(
            f"IP:{v}" for v in csr_sans.get_values_for_type(x509.IPAddress)
        ) == sorted(node.sans)
        pending_pub = helpers.load_private_key(node.pending_key).public_key()
        assert helpers.spki_der(csr.public_key()) == helpers.spki_der(pending_pub), "CSR is not for the pending key"
        submitted[node.n] = result
    assert queue_attributes(sqs, queues.csr) == {**EMPTY, "visible": 3}

    # While a request is pending, submitting again changes and sends nothing.
    for node in nodes:
        result, proc = node.submit()
        assert_ok(result, proc)
        assert result["changed"] is False and result["submitted"] is False, describe(result, proc)
        assert sqs_call_count(result, "SendMessage") == 0, describe(result)
    assert queue_attributes(sqs, queues.csr) == {**EMPTY, "visible": 3}

    # Sign: all three issued, the CSR queue drained, nothing dead-lettered.
    signed, proc = sign()
    assert_ok(signed, proc)
    assert signed["changed"] is True, describe(signed, proc)
    assert (signed["issued"], signed["rejected"], signed["dead_lettered"]) == (3, 0, 0), describe(signed, proc)
    assert len(signed["serials"]) == 3 and len(set(signed["serials"])) == 3, describe(signed)
    assert queue_attributes(sqs, queues.csr) == EMPTY
    assert queue_attributes(sqs, queues.dlq) == EMPTY
    assert queue_attributes(sqs, queues.shared) == EMPTY, "per-node replies must not touch the shared queue"
    for node in nodes:
        assert queue_attributes(sqs, submitted[node.n]["reply_queue_url"]) == {**EMPTY, "visible": 1}

    # Fetch: installed through current/, keys 0600, verified, exactly the requested SANs.
    intermediate = helpers.load_cert(ca.intermediate_cert_path)
    now = dt.datetime.now(dt.UTC)
    for node in nodes:
        key_before = node.pending_key.read_bytes()
        result, proc = node.fetch()
        assert_ok(result, proc)
        assert result["changed"] is True and result["status"] == "installed", describe(result, proc)
        assert result["request_id"] == submitted[node.n]["request_id"]
        current = node.current
        assert current.is_symlink(), f"{current} is not a symlink"
        assert current.resolve().parent == (node.path / "versions").resolve()
        for key, name in (
            ("privatekey_path", "privkey.pem"),
            ("certificate_path", "cert.pem"),
            ("chain_path", "chain.pem"),
            ("fullchain_path", "fullchain.pem"),
        ):
            assert Path(result[key]) == current / name, describe(result)
            assert (current / name).is_file()
        assert file_mode(current / "privkey.pem") == 0o600
        for name in ("cert.pem", "chain.pem", "fullchain.pem"):
            assert file_mode(current / name) == 0o644, f"{name}: {oct(file_mode(current / name))}"
        assert (current / "privkey.pem").read_bytes() == key_before, "installed key is not the pending key"

        leaf = helpers.load_cert(current / "cert.pem")
        assert helpers.serial_int(result["serial"]) == leaf.serial_number
        assert helpers.serial_int(current.resolve().name) == leaf.serial_number
        assert leaf.serial_number >= 2**40, "serial does not look random (>= 64 bits of entropy wanted)"
        assert helpers.common_name(leaf) == node.instance_id
        assert leaf.issuer == intermediate.subject
        sans = helpers.cert_sans(leaf)
        assert sorted(sans) == sorted(node.sans) and len(sans) == len(node.sans), f"SANs {sans} != {node.sans}"
        bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and bc.value.ca is False
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
        assert leaf.not_valid_before_utc <= now, "notBefore should be backdated for clock skew"
        assert leaf.not_valid_after_utc <= now + dt.timedelta(days=30, hours=1), "policy caps lifetime at 30 days"
        key = helpers.load_private_key(current / "privkey.pem")
        assert helpers.spki_der(leaf.public_key()) == helpers.spki_der(key.public_key())

        chain = helpers.load_certs(current / "chain.pem")
        assert chain and chain[0] == intermediate, "chain.pem must start with the intermediate"
        assert helpers.load_certs(current / "fullchain.pem") == [leaf, *chain]

        assert_openssl_verifies(current / "cert.pem", ca.root_cert_path, ca.intermediate_cert_path, "sslserver")
        assert_openssl_verifies(current / "cert.pem", ca.root_cert_path, ca.intermediate_cert_path, "sslclient")

        # The certificate message is deleted once installed.
        assert queue_attributes(sqs, submitted[node.n]["reply_queue_url"]) == EMPTY


def test_second_round_changes_and_sends_nothing(make_node, sign, queues, sqs):
    nodes = [make_node(n) for n in (1, 2, 3)]
    enroll(nodes, sign)
    queues_before = queues.snapshot(sqs)
    trees_before = {node.n: tree_snapshot(node.path) for node in nodes}
    targets = {node.n: os.readlink(node.current) for node in nodes}

    for node in nodes:
        result, proc = node.submit()
        assert_ok(result, proc)
        assert result["changed"] is False and result["submitted"] is False, describe(result, proc)
        assert sqs_call_count(result, "SendMessage") == 0, describe(result)

        result, proc = node.fetch()
        assert_ok(result, proc)
        assert result["changed"] is False and result["status"] == "unchanged", describe(result, proc)
        assert sqs_call_count(result, "DeleteMessage") == 0, describe(result)

    signed, proc = sign()
    assert_ok(signed, proc)
    assert signed["changed"] is False and signed["issued"] == 0, describe(signed, proc)

    assert queues.snapshot(sqs) == queues_before, "the second round moved messages"
    for node in nodes:
        assert os.readlink(node.current) == targets[node.n]
        assert tree_snapshot(node.path) == trees_before[node.n], f"the second round wrote under {node.path}"


# ------------------------------------------------------------------------------------------------
# Check mode
# ------------------------------------------------------------------------------------------------


def peek_receive_counts(sqs, url):
    """Receive every message once with visibility 0 (so they stay visible) and return their receive
    counts. Raises them by one: call it only where the test is done with the counts."""
    messages = helpers.receive_all(sqs, url, visibility_timeout=0)
    return [int(m["Attributes"]["ApproximateReceiveCount"]) for m in messages]


def test_check_mode_touches_no_file_message_or_receive_count(make_node, sign, queues, sqs):
    a, b = make_node(1), make_node(2)
    result, proc = a.submit()
    assert_ok(result, proc)
    reply_a = result["reply_queue_url"]

    queues_before = queues.snapshot(sqs)
    tree_a = tree_snapshot(a.path)

    # A fresh node in check mode: would change, but no key, no directory, no message, no queue.
    result, proc = b.submit(check=True)
    assert_ok(result, proc)
    assert result["changed"] is True, describe(result, proc)
    assert not os.path.lexists(b.path), f"check mode created {b.path}: {sorted(tree_snapshot(b.path))}"
    assert queues.snapshot(sqs) == queues_before, "check-mode submit touched the queues"

    # A pending node in check mode: nothing to do.
    result, proc = a.submit(check=True)
    assert_ok(result, proc)
    assert result["changed"] is False, describe(result, proc)

    # The worker in check mode reports the depth without receiving.
    result, proc = sign(check=True)
    assert_ok(result, proc)
    assert result["queue_depth"] == 1, describe(result, proc)
    assert result["changed"] is True, "one CSR waits: it would change\n" + describe(result, proc)
    assert result.get("issued", 0) == 0, describe(result)
    for op in ("ReceiveMessage", "SendMessage", "DeleteMessage"):
        assert sqs_call_count(result, op) == 0, f"{op} in check mode\n{describe(result)}"
    assert queues.snapshot(sqs) == queues_before, "check-mode signing touched the queues"

    # Fetch in check mode: a has nothing yet, b has no request.
    result, proc = a.fetch(check=True)
    assert_ok(result, proc)
    assert result["changed"] is False and result["status"] == "pending", describe(result, proc)
    result, proc = b.fetch(check=True)
    assert_ok(result, proc)
    assert result["changed"] is False and result["status"] == "no_request", describe(result, proc)
    assert not os.path.lexists(b.path)

    assert queues.snapshot(sqs) == queues_before
    assert tree_snapshot(a.path) == tree_a, "check mode wrote under the pending node's path"
    # Nobody received the CSR yet: this peek is its first receive.
    assert peek_receive_counts(sqs, queues.csr) == [1]

    # Now a certificate waits for a; fetch in check mode reports it would install, installs nothing.
    signed, proc = sign()
    assert_ok(signed, proc)
    assert signed["issued"] == 1, describe(signed, proc)
    queues_before = queues.snapshot(sqs)
    result, proc = a.fetch(check=True)
    assert_ok(result, proc)
    assert result["changed"] is True, "a certificate waits: it would change\n" + describe(result, proc)
    assert sqs_call_count(result, "ReceiveMessage") == 0, describe(result)
    assert not os.path.lexists(a.current), "check mode installed a certificate"
    assert tree_snapshot(a.path) == tree_a
    assert queues.snapshot(sqs) == queues_before
    assert peek_receive_counts(sqs, reply_a) == [1], "check-mode fetch received the certificate message"

    # And the real run still works afterwards.
    result, proc = a.fetch()
    assert_ok(result, proc)
    assert result["status"] == "installed", describe(result, proc)


def test_diff_mode_returns_before_and_after(make_node):
    node = make_node(1)
    result, proc = node.submit(check=True, diff=True)
    assert_ok(result, proc)
    assert isinstance(result.get("diff"), dict), describe(result, proc)
    assert "before" in result["diff"] and "after" in result["diff"], describe(result)
    result, proc = node.submit(check=True, diff=False)
    assert_ok(result, proc)
    assert "diff" not in result, "diff returned without diff mode\n" + describe(result)


# ------------------------------------------------------------------------------------------------
# Options and args files
# ------------------------------------------------------------------------------------------------


def minimal_args(name, tmp_path, queues, ca):
    """Valid options for each module, pointing at paths that must stay untouched."""
    d = tmp_path / "untouched"
    if name == "mtls_csr_submit":
        return {"instance_id": "i-00000000000000009", "path": str(d / "node"), "csr_queue_url": queues.csr}
    if name == "mtls_cert_fetch":
        return {"instance_id": "i-00000000000000009", "path": str(d / "node"), "ca_path": str(ca.root_cert_path)}
    if name == "mtls_ca_sign":
        return {
            "csr_queue_url": queues.csr,
            "ownca_path": str(ca.intermediate_cert_path),
            "ownca_privatekey_path": str(ca.intermediate_privatekey_path),
            "ca_chain_path": str(ca.chain_path),
            "policy_path": str(ca.policy_path),
            "reply_queue_prefix": queues.reply_prefix,
            "audit_log_path": str(d / "issuance.jsonl"),
        }
    if name == "mtls_ca_init":
        new = ca_paths(d / "ca")
        return new.init_args()
    raise AssertionError(name)


BAD_OPTIONS = [
    # (module, changes to the minimal args, option the message must name)
    ("mtls_csr_submit", {"bogus_option": 1}, "bogus_option"),
    ("mtls_cert_fetch", {"bogus_option": "x"}, "bogus_option"),
    ("mtls_ca_sign", {"bogus_option": True}, "bogus_option"),
    ("mtls_ca_init", {"bogus_option": None}, "bogus_option"),
    ("mtls_cert_fetch", {"wait": "maybe"}, "wait"),
    ("mtls_csr_submit", {"size": "big"}, "size"),
    ("mtls_csr_submit", {"force": "perhaps"}, "force"),
    ("mtls_ca_sign", {"batch_size": "ten"}, "batch_size"),
    ("mtls_ca_sign", {"batch_size": 11}, "batch_size"),
    ("mtls_csr_submit", {"subject_alt_name": {"DNS": "x.fleet.internal"}}, "subject_alt_name"),
    ("mtls_csr_submit", {"instance_id": None}, "instance_id"),
    ("mtls_cert_fetch", {"instance_id": None}, "instance_id"),
    ("mtls_ca_sign", {"csr_queue_url": None}, "csr_queue_url"),
    ("mtls_ca_sign", {"audit_log_path": None}, "audit_log_path"),  # nothing signed unrecorded
    ("mtls_ca_init", {"chain_path": None}, "chain_path"),
    ("mtls_csr_submit", {"type": "DSA"}, "type"),
    ("mtls_csr_submit", {"curve": "secp521r1"}, "curve"),
    ("mtls_cert_fetch", {"reply_mode": "broadcast"}, "reply_mode"),
    ("mtls_ca_sign", {"policy": {"identity_proof": "none"}}, "policy_path"),  # mutually exclusive
    ("mtls_ca_sign", {"policy_path": None}, "policy"),  # one of the two is required
]


@pytest.mark.parametrize(
    "name,changes,option", BAD_OPTIONS, ids=[f"{n}-{json.dumps(c, sort_keys=True)}" for n, c, _ in BAD_OPTIONS]
)
def test_bad_options_fail_naming_the_option(name, changes, option, run_module, tmp_path, queues, ca, sqs):
    args = minimal_args(name, tmp_path, queues, ca)
    for key, value in changes.items():
        if value is None and key != "bogus_option":
            args.pop(key, None)  # None marks "leave the option out"
        else:
            args[key] = value
    before = queues.snapshot(sqs)
    result, _proc = run_module(name, args)
    assert_failed_naming(result, option)
    assert not os.path.lexists(tmp_path / "untouched"), "a module that refused its options wrote files"
    assert queues.snapshot(sqs) == before


@pytest.mark.parametrize("name", helpers.MODULES)
@pytest.mark.parametrize(
    "content", ["this is { not json", "", "[1, 2, 3]", '{"instance_id": '], ids=["text", "empty", "list", "truncated"]
)
def test_non_json_args_file_fails_as_json(name, content, tmp_path, module_env):
    args_file = tmp_path / "args"
    args_file.write_text(content, encoding="utf-8")
    result, proc = helpers.run_args_file(name, args_file, env=module_env)
    assert result.get("failed") is True and isinstance(result.get("msg"), str) and result["msg"], describe(result, proc)
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("name", helpers.MODULES)
def test_dash_reads_the_arguments_from_stdin(name, tmp_path, module_env):
    """`<binary> -` (the collection's module cache runs binaries so): the options come from stdin,
    are validated like an args file's, and a bad stdin fails as JSON."""
    binary = str(helpers.binary_path(name))
    for stdin, expected in (
        (json.dumps({"bogus_option": 1, "_ansible_check_mode": True}) + "\n", "bogus_option"),
        ("this is { not json\n", "not a JSON object"),
    ):
        proc = subprocess.run([binary, "-"], input=stdin, capture_output=True, text=True, env=module_env, cwd=tmp_path, timeout=60)
        result = helpers.parse_single_json(proc.stdout, f"{name} - (rc {proc.returncode}, stderr: {proc.stderr[-2000:]})")
        assert result.get("failed") is True and expected in result.get("msg", ""), describe(result, proc)
    assert not any(tmp_path.iterdir()), "a module that refused its options wrote files"


@pytest.mark.parametrize("name", helpers.MODULES)
def test_missing_args_file_fails_as_json(name, tmp_path, module_env):
    result, proc = helpers.run_args_file(name, tmp_path / "does-not-exist", env=module_env)
    assert result.get("failed") is True and result.get("msg"), describe(result, proc)


def test_secrets_are_never_echoed(make_node, run_module, queues, sqs):
    secret = f"Sentinel-secret-{uuid.uuid4().hex}"
    enrollment = f"Sentinel-enroll-{uuid.uuid4().hex}"
    node = make_node(1)

    # Success: the secret key is used (moto accepts any) and never printed.
    result, proc = node.submit(access_key="testing", secret_key=secret, enrollment_secret=enrollment)
    assert_ok(result, proc)
    for text in (proc.stdout, proc.stderr):
        assert secret not in text and enrollment not in text

    # Failure in option validation, with the secrets among the options.
    result, proc = run_module(
        "mtls_csr_submit",
        node.submit_args(aws_secret_access_key=secret, enrollment_secret=enrollment, bogus_option=1),
    )
    assert_failed_naming(result, "bogus_option")
    for text in (proc.stdout, proc.stderr):
        assert secret not in text and enrollment not in text

    # Failure talking to SQS (nothing listens on port 9 of loopback).
    other = make_node(2)
    result, proc = other.submit(endpoint_url="http://127.0.0.1:9", secret_key=secret, access_key="testing")
    assert result.get("failed") is True, describe(result, proc)
    for text in (proc.stdout, proc.stderr):
        assert secret not in text


# ------------------------------------------------------------------------------------------------
# Hostile input to the worker
# ------------------------------------------------------------------------------------------------


def test_tampered_csr_is_dead_lettered_not_signed(make_node, sign, queues, sqs):
    good = make_node(1)
    result, proc = good.submit()
    assert_ok(result, proc)

    victim = "i-0000000000000000f"
    csr_pem = helpers.tamper_csr_signature(helpers.make_csr_pem(victim, ["DNS:node15.fleet.internal", "IP:127.0.0.1"]))
    body = json.dumps(helpers.csr_message(victim, csr_pem))
    helpers.send_json(sqs, queues.csr, body, instance_id=victim)
    assert queue_attributes(sqs, queues.csr)["visible"] == 2

    signed, proc = sign()
    assert_ok(signed, proc)
    assert signed["issued"] == 1 and signed["dead_lettered"] == 1, describe(signed, proc)
    assert queue_attributes(sqs, queues.csr) == EMPTY

    dead = helpers.receive_all(sqs, queues.dlq)
    assert len(dead) == 1, dead
    assert dead[0]["Body"] == body, "the DLQ must hold the original body byte for byte"
    attrs = dead[0].get("MessageAttributes", {})
    assert attrs.get("FleetpkiReason", {}).get("StringValue"), f"no FleetpkiReason attribute: {attrs}"
    assert attrs.get("InstanceId", {}).get("StringValue") == victim, attrs

    # No certificate went anywhere for the tampered request.
    assert queue_attributes(sqs, queues.shared) == EMPTY
    for url in helpers.queues_with_prefix(sqs, queues.reply_prefix):
        for message in helpers.receive_all(sqs, url, visibility_timeout=0):
            reply = json.loads(message["Body"])
            assert not (reply.get("kind") == "certificate" and reply.get("instance_id") == victim), reply


# ------------------------------------------------------------------------------------------------
# Hostile input to the node
# ------------------------------------------------------------------------------------------------


def put_certificate(sqs, node, submitted, leaf, chain):
    request_id = node.pending_request["request_id"]
    assert request_id == submitted["request_id"]
    body = helpers.certificate_message(leaf, chain, node.instance_id, request_id)
    helpers.send_json(sqs, submitted["reply_queue_url"], body, instance_id=node.instance_id)


def assert_refused(node, result, proc):
    assert result.get("status") != "installed", describe(result, proc)
    assert not os.path.lexists(node.current), f"a refused certificate was installed: {os.listdir(node.path)}"
    versions = node.path / "versions"
    assert not versions.exists() or not any(versions.iterdir()), f"files under {versions}"
    assert node.pending_key.is_file(), "the pending key must survive a refused certificate"


def test_certificate_made_by_the_test_helper_with_our_ca_is_installed(make_node, sqs, ca):
    """Positive control for the refusal tests below: the same message builder, our intermediate and
    the node's own key give a certificate the node installs."""
    node = make_node(1)
    submitted, proc = node.submit()
    assert_ok(submitted, proc)
    inter = helpers.load_cert(ca.intermediate_cert_path)
    inter_key = helpers.load_private_key(ca.intermediate_privatekey_path)
    pub = helpers.load_private_key(node.pending_key).public_key()
    leaf = helpers.sign_leaf(inter, inter_key, pub, node.instance_id, node.sans)
    put_certificate(sqs, node, submitted, leaf, [inter, helpers.load_cert(ca.root_cert_path)])

    result, proc = node.fetch()
    assert_ok(result, proc)
    assert result["status"] == "installed", describe(result, proc)
    assert helpers.load_cert(node.current / "cert.pem") == leaf


@pytest.mark.parametrize("chain_kind", ["foreign-chain", "foreign-intermediate-our-root"])
def test_certificate_from_foreign_ca_with_our_dn_is_refused(chain_kind, make_node, sign, sqs, ca):
    node = make_node(1)
    submitted, proc = node.submit()
    assert_ok(submitted, proc)

    our_root = helpers.load_cert(ca.root_cert_path)
    our_inter = helpers.load_cert(ca.intermediate_cert_path)
    f_root, f_inter, f_inter_key = helpers.make_ca(our_root.subject, our_inter.subject)
    assert f_inter.subject == our_inter.subject and f_root.subject == our_root.subject
    pub = helpers.load_private_key(node.pending_key).public_key()
    leaf = helpers.sign_leaf(f_inter, f_inter_key, pub, node.instance_id, node.sans)
    chain = [f_inter, f_root] if chain_kind == "foreign-chain" else [f_inter, our_root]
    put_certificate(sqs, node, submitted, leaf, chain)

    result, proc = node.fetch(timeout=5)
    assert_refused(node, result, proc)

    # The node still takes its real certificate afterwards.
    signed, proc = sign()
    assert_ok(signed, proc)
    assert signed["issued"] == 1, describe(signed, proc)
    result, proc = node.fetch()
    assert_ok(result, proc)
    assert result["status"] == "installed", describe(result, proc)
    assert helpers.load_cert(node.current / "cert.pem").issuer == our_inter.subject
    assert helpers.load_cert(node.current / "cert.pem") != leaf


def test_certificate_for_another_key_is_refused(make_node, sqs, ca):
    node = make_node(1)
    submitted, proc = node.submit()
    assert_ok(submitted, proc)
    inter = helpers.load_cert(ca.intermediate_cert_path)
    inter_key = helpers.load_private_key(ca.intermediate_privatekey_path)
    other_key = ec.generate_private_key(ec.SECP256R1())
    leaf = helpers.sign_leaf(inter, inter_key, other_key.public_key(), node.instance_id, node.sans)
    put_certificate(sqs, node, submitted, leaf, [inter, helpers.load_cert(ca.root_cert_path)])

    result, proc = node.fetch(timeout=5)
    assert_refused(node, result, proc)


# ------------------------------------------------------------------------------------------------
# CA creation
# ------------------------------------------------------------------------------------------------


def test_ca_init_is_idempotent_and_check_mode_writes_nothing(run_module, tmp_path):
    new = ca_paths(tmp_path / "ca")

    result, proc = run_module("mtls_ca_init", new.init_args(), check=True)
    assert_ok(result, proc)
    assert result["changed"] is True, describe(result, proc)
    assert not os.path.lexists(new.dir), "check mode created the CA directory"

    result, proc = run_module("mtls_ca_init", new.init_args())
    assert_ok(result, proc)
    assert result["changed"] is True and result["root_created"] is True and result["intermediate_created"] is True
    assert file_mode(new.root_privatekey_path) == 0o600
    assert file_mode(new.intermediate_privatekey_path) == 0o600
    assert_openssl_verifies(new.intermediate_cert_path, new.root_cert_path, new.intermediate_cert_path, "any")
    inter = helpers.load_cert(new.intermediate_cert_path)
    bc = inter.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is True and bc.path_length == 0
    assert helpers.load_certs(new.chain_path) == [inter, helpers.load_cert(new.root_cert_path)]
    assert helpers.serial_int(result["intermediate_serial"]) == inter.serial_number

    snapshot = tree_snapshot(new.dir)
    result, proc = run_module("mtls_ca_init", new.init_args())
    assert_ok(result, proc)
    assert result["changed"] is False, describe(result, proc)
    # The root key is not needed once the intermediate exists (it can live off the worker host).
    args = new.init_args()
    del args["root_privatekey_path"]
    result, proc = run_module("mtls_ca_init", args)
    assert_ok(result, proc)
    assert result["changed"] is False, describe(result, proc)
    assert tree_snapshot(new.dir) == snapshot


def test_session_ca_keys_are_private(ca):
    assert file_mode(ca.root_privatekey_path) == 0o600
    assert file_mode(ca.intermediate_privatekey_path) == 0o600
    assert_openssl_verifies(ca.intermediate_cert_path, ca.root_cert_path, ca.intermediate_cert_path, "any")


def test_a_request_with_no_subject_alternative_name_warns_when_it_is_sent(make_node):
    """An empty subject_alt_name is what a typo in the variable that feeds it gives: the node is
    told, once, when the request goes out (the CA may allow it: the certificate names the id only)."""
    NO_NAMES = "names no subject alternative name"
    bare = make_node(1, sans=[])
    for check in (True, False):
        result, proc = bare.submit(check=check)
        assert_ok(result, proc)
        assert result["submitted"] is not check, result
        warnings = [w for w in result.get("warnings", []) if NO_NAMES in w]
        assert len(warnings) == 1 and bare.instance_id in warnings[0] and "Set subject_alt_name" in warnings[0], result
    # Pending: nothing is sent, nothing to say again.
    again, proc = bare.submit()
    assert_ok(again, proc)
    assert not [w for w in again.get("warnings", []) if NO_NAMES in w], again

    named, proc = make_node(2).submit()
    assert_ok(named, proc)
    assert not [w for w in named.get("warnings", []) if NO_NAMES in w], named


def test_diff_shows_the_request_and_the_certificates_fields_before_and_after(make_node, sign):
    """--diff as community.crypto's x509_certificate shows it: fields, not PEM."""
    node = make_node(3)
    submitted, proc = node.submit(diff=True)
    assert_ok(submitted, proc)
    assert submitted["diff"]["before"] is None, submitted
    assert submitted["diff"]["after"] == {
        "subject_alt_name": node.sans,
        "certificate_profile": "mtls",
        "private_key": "new ECDSA P-256",
    }, submitted
    assert_ok(*sign())
    installed, proc = node.fetch(diff=True)
    assert_ok(installed, proc)
    after = installed["diff"]["after"]
    assert installed["diff"]["before"] is None, installed
    assert after["serial_number"] == installed["serial"] and after["not_after"] == installed["not_after"], installed
    assert after["subject_alt_name"] == node.sans, installed
    fingerprint = after["public_key_fingerprint_sha256"]
    assert len(fingerprint) == 95 and fingerprint.count(":") == 31, fingerprint

    # A forced rotation: the request replaces the installed certificate, then the new one it.
    rotated, proc = node.submit(diff=True, force=True)
    assert_ok(rotated, proc)
    assert rotated["diff"]["before"]["serial_number"] == installed["serial"], rotated
    assert_ok(*sign())
    second, proc = node.fetch(diff=True)
    assert_ok(second, proc)
    assert second["diff"]["before"] == after, second
    assert second["diff"]["after"]["serial_number"] == second["serial"] != installed["serial"], second
    assert second["diff"]["after"]["public_key_fingerprint_sha256"] != fingerprint, "the key was not rotated"
