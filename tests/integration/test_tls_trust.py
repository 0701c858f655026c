"""Whom the modules trust for HTTPS to AWS (docs/aws.md, "HTTPS: which CAs the modules trust"): an SQS endpoint
on loopback behind a TLS server whose certificate comes from a CA of the test's own (a relay in
this process, relay.py, in front of moto), and mtls_csr_submit sending to it through the real binary.

- SSL_CERT_FILE naming a bundle with that CA: the request goes through;
- a bundle without it: refused, error.kind untrusted_certificate and a message that says what to
  do (not "could not be reached"), nothing sent;
- SSL_CERT_DIR naming a directory with that CA (and no SSL_CERT_FILE): the request goes through;
- the trust store is read only for an https:// endpoint: under strace, a run against moto's plain
  http:// endpoint opens neither the bundle nor the directory; the same run through the TLS relay
  opens both.
"""

from __future__ import annotations

import ssl

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import helpers
from relay import Relay

DEBUG_TEXT = ("Some(", "None", "DispatchFailure", "ConnectorError", "Error {", "kind: ")


@pytest.fixture
def https_sqs(tmp_path, sqs_server):
    """(relay, CA certificate PEM): moto behind TLS with a server certificate for 127.0.0.1 from
    a CA of this test's own."""
    root, inter, inter_key = helpers.make_ca()
    server_key = ec.generate_private_key(ec.SECP256R1())
    leaf = helpers.sign_leaf(inter, inter_key, server_key.public_key(), "sqs.test", ["IP:127.0.0.1", "DNS:localhost"])
    chain = tmp_path / "server-chain.pem"
    chain.write_text(helpers.pem(leaf) + helpers.pem(inter), encoding="ascii")
    key = tmp_path / "server-key.pem"
    key.write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key.chmod(0o600)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(chain), str(key))
    relay = Relay("127.0.0.1", 0, int(sqs_server.endpoint.rsplit(":", 1)[1]), tls=context)
    yield relay, helpers.pem(root)
    relay.stop()


def submit_over_https(make_node, sqs_env, queues, relay: Relay, n: int, **trust: str):
    """mtls_csr_submit of node N through the TLS relay, with only the SSL_CERT_* variables given:
    (result, CompletedProcess)."""
    node = make_node(n)
    env = {k: v for k, v in helpers.module_env(sqs_env).items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR", "NIX_SSL_CERT_FILE")}
    endpoint_env, csr_queue_url = through_relay(relay, queues)
    env.update(**endpoint_env, **trust)
    return node.run_module("mtls_csr_submit", node.submit_args(csr_queue_url=csr_queue_url), env=env)


def through_relay(relay: Relay, queues) -> tuple[dict[str, str], str]:
    """(the endpoint variables, the CSR queue's URL) for calls through the TLS relay."""
    endpoint = f"https://127.0.0.1:{relay.port}"
    csr_path = queues.csr.split("://", 1)[1].split("/", 1)[1]
    return {"AWS_ENDPOINT_URL_SQS": endpoint, "AWS_ENDPOINT_URL": endpoint}, f"{endpoint}/{csr_path}"


def csr_depth(sqs, queues) -> int:
    return sum(helpers.queue_attributes(sqs, queues.csr).values())


def test_a_bundle_with_the_endpoints_ca_is_trusted(tmp_path, make_node, sqs_env, sqs, queues, https_sqs):
    relay, ca_pem = https_sqs
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(helpers.pem(helpers.make_ca()[0]) + ca_pem, encoding="ascii")  # another CA, then ours
    result, proc = submit_over_https(make_node, sqs_env, queues, relay, 1, SSL_CERT_FILE=str(bundle))
    helpers.assert_ok(result, proc)
    assert result["submitted"] is True and helpers.sqs_call_count(result, "SendMessage") == 1, result
    assert csr_depth(sqs, queues) == 1


def test_a_bundle_without_it_is_refused_and_nothing_is_sent(tmp_path, make_node, sqs_env, sqs, queues, https_sqs):
    relay, _ = https_sqs
    bundle = tmp_path / "other-bundle.pem"
    bundle.write_text(helpers.pem(helpers.make_ca()[0]), encoding="ascii")
    result, proc = submit_over_https(make_node, sqs_env, queues, relay, 2, SSL_CERT_FILE=str(bundle))
    assert result["failed"] is True, helpers.describe(result, proc)
    assert result["error"]["kind"] == "untrusted_certificate", result["error"]
    msg = result["msg"]
    # What failed, why, and what to do; not "the endpoint could not be reached".
    assert "TLS certificate was refused" in msg and "SSL_CERT_FILE" in msg and "could not be reached" not in msg, msg
    assert len(msg) < 600, f"{len(msg)} characters: {msg}"
    for debug in DEBUG_TEXT:
        assert debug not in msg, f"Rust debug text {debug!r} in {msg!r}"
    assert relay.handshakes_failed >= 1, "the module never tried the endpoint"
    assert csr_depth(sqs, queues) == 0


def test_a_directory_named_by_ssl_cert_dir_is_trusted(tmp_path, make_node, sqs_env, sqs, queues, https_sqs):
    relay, ca_pem = https_sqs
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "test-root.pem").write_text(ca_pem, encoding="ascii")
    result, proc = submit_over_https(make_node, sqs_env, queues, relay, 3, SSL_CERT_DIR=str(certs))
    helpers.assert_ok(result, proc)
    assert result["submitted"] is True, result
    assert csr_depth(sqs, queues) == 1


def opened_paths(make_node, tmp_path, n: int, env: dict[str, str], csr_queue_url: str) -> str:
    """mtls_csr_submit of node N under strace: the trace of every file it opened or looked up."""
    node = make_node(n)
    args_file = helpers.write_args(tmp_path / f"submit-{n}.json", "mtls_csr_submit", node.submit_args(csr_queue_url=csr_queue_url))
    trace = tmp_path / f"trace-{n}"
    result, proc = helpers.run_args_file("mtls_csr_submit", args_file, env=env, strace=("%file", trace))
    helpers.assert_ok(result, proc)
    assert helpers.sqs_call_count(result, "SendMessage") == 1, result
    return trace.read_text()


def test_the_trust_store_is_read_only_for_an_https_endpoint(tmp_path, make_node, sqs_env, queues, https_sqs):
    relay, ca_pem = https_sqs
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(ca_pem, encoding="ascii")
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "test-root.pem").write_text(ca_pem, encoding="ascii")
    trust = {"SSL_CERT_FILE": str(bundle), "SSL_CERT_DIR": str(certs)}

    plain_env = {**helpers.module_env(sqs_env), **trust}
    trace = opened_paths(make_node, tmp_path, 4, plain_env, queues.csr)
    assert str(bundle) not in trace and str(certs) not in trace, f"a run against {queues.csr} read the trust store:\n{trace}"

    endpoint_env, csr_queue_url = through_relay(relay, queues)
    trace = opened_paths(make_node, tmp_path, 5, {**plain_env, **endpoint_env}, csr_queue_url)
    assert str(bundle) in trace and str(certs) in trace, f"the run through {csr_queue_url} did not read the trust store:\n{trace}"
