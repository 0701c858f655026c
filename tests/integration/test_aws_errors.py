"""AWS failures as amazon.aws reports them: a short `msg` that names the cause and the fix, the
service's code and message (or the SDK's error chain) apart in `error`, told apart by the typed
kind of the error (never by its text). Each against moto: no credentials at all, a queue URL of
another region (nothing is created), the server down, access denied (an IAM user without a
policy, on a moto server that enforces IAM: INITIAL_NO_AUTH_ACTION_COUNT), throttling (the server
throttles the node's calls: scripts/moto_server.py, FLEETPKI_MOTO_THROTTLE)."""

from __future__ import annotations

import socket

import pytest

import helpers
from sqs_fixtures import OwnMotoServer

DEBUG_TEXT = ("Some(", "None", "DispatchFailure", "ConnectorError", "Error {", "{ ", "kind: ")
SHORT = 400  # characters: a message for a person, not the SDK's dump


def assert_reads_well(result: dict) -> None:
    msg = result["msg"]
    assert len(msg) < SHORT, f"{len(msg)} characters: {msg}"
    for debug in DEBUG_TEXT:
        assert debug not in msg, f"Rust debug text {debug!r} in {msg!r}"


@pytest.fixture
def closed_endpoint():
    """A loopback address nothing listens on: bound (so nothing else takes it) but not listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_no_credentials_at_all(make_node, sqs_env):
    node = make_node(1)
    env = helpers.module_env({k: v for k, v in sqs_env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
    result, proc = node.run_module("mtls_csr_submit", node.submit_args(), env=env)
    assert result["failed"] is True, helpers.describe(result, proc)
    assert result["error"]["kind"] == "no_credentials", result
    assert "no AWS credentials were found" in result["msg"] and "instance profile" in result["msg"], result["msg"]
    assert "network" not in result["msg"] and "endpoint" not in result["msg"], result["msg"]
    assert_reads_well(result)
    # The SDK's account of every provider it tried is kept, apart from the message.
    assert len(result["error"]["message"]) > len("no credentials"), result["error"]


def test_a_queue_url_of_another_region_is_refused_before_anything_is_created(make_node, sqs, queues):
    node = make_node(2)
    aws_url = f"https://sqs.eu-west-1.amazonaws.com/123456789012/{queues.prefix}-csr"
    result, proc = node.submit(csr_queue_url=aws_url)  # region us-east-1 and moto's endpoint_url
    assert result["failed"] is True, helpers.describe(result, proc)
    assert result["error"]["kind"] == "region_mismatch", result
    assert "is in region eu-west-1" in result["msg"] and "us-east-1" in result["msg"] and "set region: eu-west-1" in result["msg"], result["msg"]
    assert_reads_well(result)
    assert result["sqs_calls"]["total"] == 0, result["sqs_calls"]
    assert helpers.queues_with_prefix(sqs, queues.reply_prefix) == [], "a reply queue was created in the wrong region"


def test_the_server_down(make_node, sqs_env, sign_args, closed_endpoint):
    node = make_node(3)
    submitted, proc = node.submit()
    helpers.assert_ok(submitted, proc)
    down = helpers.module_env(dict(sqs_env, AWS_ENDPOINT_URL_SQS=closed_endpoint))
    messages = {}
    for module, args in [
        ("mtls_csr_submit", node.submit_args(force=True)),
        ("mtls_cert_fetch", node.fetch_args(timeout=2)),
        ("mtls_reply_queues", {"keep_instance_ids": [node.instance_id], "reply_queue_prefix": node.queues.reply_prefix}),
    ]:
        result, proc = node.run_module(module, args, env=down)
        assert result["failed"] is True, helpers.describe(result, proc)
        assert result["error"]["kind"] == "unreachable", (module, result)
        assert "the endpoint could not be reached" in result["msg"] and "endpoint_url" in result["msg"], result["msg"]
        assert_reads_well(result)
        messages[module] = result["msg"]
    assert len(set(messages.values())) == len(messages), "the modules' messages do not name their own call"
    result, proc = node.run_module("mtls_ca_sign", sign_args(), env=down)
    assert result["failed"] is True, helpers.describe(result, proc)
    assert result["error"]["kind"] == "unreachable", result
    assert_reads_well(result)
    # The pending request survives an outage (nothing was lost for the next run).
    assert node.pending_request["request_id"] == submitted["request_id"]


def own_server(run_dir, server_env: dict[str, str]):
    """A moto server of the test's own with `server_env`, stopped by PID at the end."""
    server = OwnMotoServer(run_dir, server_env=server_env)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def iam_enforcing_sqs(tmp_path):
    """A moto server that enforces IAM after its first 3 calls: the readiness probe (ListQueues),
    CreateUser and CreateAccessKey of a user with no policy at all."""
    yield from own_server(tmp_path / "iam-sqs", {"INITIAL_NO_AUTH_ACTION_COUNT": "3"})


def test_access_denied(make_node, iam_enforcing_sqs):
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=iam_enforcing_sqs.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    iam.create_user(UserName="node-without-policy")
    key = iam.create_access_key(UserName="node-without-policy")["AccessKey"]
    node = make_node(4)
    env = helpers.module_env(
        dict(
            iam_enforcing_sqs.env,
            AWS_ACCESS_KEY_ID=key["AccessKeyId"],
            AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"],
        )
    )
    csr_url = f"{iam_enforcing_sqs.endpoint}/123456789012/fleetpki-csr"
    result, proc = node.run_module("mtls_csr_submit", node.submit_args(csr_queue_url=csr_url), env=env)
    assert result["failed"] is True, helpers.describe(result, proc)
    assert result["error"]["kind"] == "access_denied", result
    assert result["error"]["code"] == "AccessDenied", result
    assert "access denied" in result["msg"] and "node-without-policy" in result["msg"] and "IAM policy" in result["msg"], result["msg"]
    assert_reads_well(result)


@pytest.fixture
def throttling_sqs(tmp_path):
    """A moto server that throttles every call a node's submit makes (not the readiness probe)."""
    yield from own_server(
        tmp_path / "throttling-sqs", {"FLEETPKI_MOTO_THROTTLE": "GetQueueUrl,CreateQueue,GetQueueAttributes,SendMessage"}
    )


def test_throttling(make_node, throttling_sqs):
    node = make_node(5)
    env = helpers.module_env(throttling_sqs.env)
    csr_url = f"{throttling_sqs.endpoint}/123456789012/fleetpki-csr"
    result, proc = node.run_module("mtls_csr_submit", node.submit_args(csr_queue_url=csr_url), env=env)
    assert result["failed"] is True, helpers.describe(result, proc)
    assert result["error"]["kind"] == "throttling", result
    assert result["error"]["code"] == "ThrottlingException", result
    assert "throttled" in result["msg"] and "run again later" in result["msg"].lower(), result["msg"]
    assert_reads_well(result)
