"""Nodes that heal themselves: a pending request that can no longer be answered (its reply queue
gone) is ended, and the next mtls_csr_submit sends a new one at once (not after resubmit_after); a
certificate valid only later (the node's clock behind) is kept and installed by the first run at
which it is valid; a forced rotation that failed during an outage is retried by the next plain
run; a refused certificate is named in the task's message; `wait: false` with nothing installed
says since when the request is pending. The decisions are unit-tested in Rust
(`fleetpki_core::renewal`, `modules/fleetpki-core/tests/node.rs`); here the real binaries on moto.
"""

from __future__ import annotations

import datetime as dt
import json

from cryptography.hazmat.primitives import serialization

import helpers
from helpers import assert_ok, describe

DEBUG_TEXT = ("Some(", "None", "UnixTime(", "KeyPurposeId(", "{ ")


def assert_words(*texts: str) -> None:
    for text in texts:
        for debug in DEBUG_TEXT:
            assert debug not in text, f"Rust debug text {debug!r} in {text!r}"


def reply_url(sqs, node) -> str:
    return sqs.get_queue_url(QueueName=node.queues.reply_prefix + node.instance_id)["QueueUrl"]


def submitted_minutes_ago(node, minutes: int = 2) -> None:
    """The pending request as it is a while after its submission: a queue missing right after
    CreateQueue is not taken as lost (SQS may not show a new queue at once)."""
    path = node.path / "pending" / "request.json"
    request = json.loads(path.read_text())
    request["submitted_at"] -= minutes * 60
    path.write_text(json.dumps(request))


def answer_from_our_ca(sqs, ca, node, request_id: str, sans: list[str], not_before: dt.datetime | None = None):
    """Puts on the node's reply queue a certificate our intermediate signed for its pending key."""
    inter = helpers.load_cert(ca.intermediate_cert_path)
    inter_key = serialization.load_pem_private_key(ca.intermediate_privatekey_path.read_bytes(), None)
    pending_key = serialization.load_pem_private_key(node.pending_key.read_bytes(), None)
    leaf = helpers.sign_leaf(inter, inter_key, pending_key.public_key(), node.instance_id, sans, not_before=not_before)
    body = helpers.certificate_message(leaf, [inter, helpers.load_cert(ca.root_cert_path)], node.instance_id, request_id)
    helpers.send_json(sqs, reply_url(sqs, node), body, node.instance_id)
    return leaf, body


def test_a_reply_queue_lost_with_the_server_state_is_healed_by_the_next_plain_run(make_node, sign, sqs):
    node = make_node(1)
    submitted, proc = node.submit()
    assert_ok(submitted, proc)
    sqs.delete_queue(QueueUrl=reply_url(sqs, node))  # what a queue server that lost its state shows
    # The queue existed when the request was sent: gone now, the request is sent again at once.
    again, proc = node.submit()
    assert_ok(again, proc)
    assert again["submitted"] is True and again["reason"] == "reply_queue_missing", describe(again, proc)
    assert again["request_id"] != submitted["request_id"]
    assert any("no longer exists" in w for w in again.get("warnings", [])), describe(again, proc)
    assert_words(again["msg"], *again.get("warnings", []))
    signed, proc = sign()
    assert_ok(signed, proc)
    fetched, proc = node.fetch()
    assert_ok(fetched, proc)
    assert fetched["status"] == "installed" and fetched["request_id"] == again["request_id"], describe(fetched, proc)


def test_fetch_ends_a_request_whose_reply_queue_is_gone(make_node, sqs):
    node = make_node(2)
    submitted, proc = node.submit()
    assert_ok(submitted, proc)
    sqs.delete_queue(QueueUrl=reply_url(sqs, node))
    # Just submitted: to the fetch of the same run a missing queue may only be too new to be seen.
    young, proc = node.fetch(wait=False)
    assert_ok(young, proc)
    assert young["status"] == "pending" and any("not visible yet" in w for w in young.get("warnings", [])), describe(young, proc)
    assert node.pending_request["request_id"] == submitted["request_id"]
    submitted_minutes_ago(node)
    fetched, proc = node.fetch(timeout=5)
    assert fetched.get("failed") is True and fetched["status"] == "no_request", describe(fetched, proc)
    assert "no longer exists" in fetched["msg"] and submitted["request_id"] in fetched["msg"], fetched["msg"]
    assert_words(fetched["msg"])
    assert not (node.path / "pending" / "request.json").exists()
    again, proc = node.submit()
    assert_ok(again, proc)
    assert again["submitted"] is True and again["reason"] == "no_certificate", describe(again, proc)


def test_a_refused_certificate_is_named_in_the_task_message_not_only_in_warnings(make_node, sqs, ca):
    """A certificate the node refuses is set aside (a message anyone who can write to the reply
    queue could send must not end the request), and the task's own message names its code."""
    node = make_node(3)
    submitted, proc = node.submit()
    assert_ok(submitted, proc)
    _, body = answer_from_our_ca(sqs, ca, node, submitted["request_id"], ["DNS:other.fleet.internal"])
    fetched, proc = node.fetch(wait=False)
    assert_ok(fetched, proc)
    assert fetched["status"] == "pending", describe(fetched, proc)
    assert "certificate_names_mismatch" in fetched["msg"] and "no usable answer" in fetched["msg"], fetched["msg"]
    assert_words(fetched["msg"])
    helpers.send_json(sqs, reply_url(sqs, node), body, node.instance_id)
    waited, proc = node.fetch(timeout=2)
    assert waited.get("failed") is True, describe(waited, proc)
    assert "certificate_names_mismatch" in waited["msg"] and "is the CA worker running" not in waited["msg"], waited["msg"]


def test_a_certificate_early_for_the_node_clock_is_kept_and_installed_once_valid(make_node, sqs, ca):
    node = make_node(4)
    submitted, proc = node.submit()
    assert_ok(submitted, proc)
    valid_from = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=4)
    early, _ = answer_from_our_ca(sqs, ca, node, submitted["request_id"], node.sans, not_before=valid_from)

    fetched, proc = node.fetch(wait=False)
    assert_ok(fetched, proc)
    assert fetched["status"] == "pending", describe(fetched, proc)
    assert "certificate_not_yet_valid" in fetched["msg"] and "kept" in fetched["msg"], fetched["msg"]
    assert "s after this node's clock" in fetched["msg"], fetched["msg"]
    assert_words(fetched["msg"])
    assert not node.current.exists()
    assert helpers.queue_attributes(sqs, reply_url(sqs, node))["visible"] == 0, "the answer stayed in the queue"
    # Still pending: the next plain submit does not replace the request.
    again, proc = node.submit()
    assert_ok(again, proc)
    assert again["submitted"] is False and again["reason"] == "request_pending", describe(again, proc)

    # A waiting run installs it once the node's clock reaches notBefore, without a new answer.
    fetched, proc = node.fetch(timeout=10)
    assert_ok(fetched, proc)
    # Compared as numbers: the module writes whole bytes (a leading 0 when the top nibble is 0).
    assert fetched["status"] == "installed" and int(fetched["serial"], 16) == early.serial_number, describe(fetched, proc)


def test_a_forced_rotation_that_failed_is_retried_by_the_next_plain_run(make_node, sign, sqs):
    node = make_node(5)
    assert_ok(*node.submit())
    assert_ok(*sign())
    fetched, proc = node.fetch()
    assert fetched["status"] == "installed", describe(fetched, proc)

    down, proc = node.submit(force=True, endpoint_url="http://127.0.0.1:9")  # nothing listens there
    assert down.get("failed") is True, describe(down, proc)
    assert_words(down["msg"])
    plain, proc = node.submit()
    assert_ok(plain, proc)
    assert plain["submitted"] is True and plain["reason"] == "forced_retry", describe(plain, proc)
    assert any("forced by an earlier run" in w for w in plain.get("warnings", [])), describe(plain, proc)
    after, proc = node.submit()
    assert_ok(after, proc)
    assert after["reason"] == "request_pending", describe(after, proc)


def test_wait_false_with_nothing_installed_says_since_when_it_is_pending(make_node):
    node = make_node(6)
    submitted, proc = node.submit()
    assert_ok(submitted, proc)
    fetched, proc = node.fetch(wait=False)
    assert_ok(fetched, proc)
    assert fetched["status"] == "pending", describe(fetched, proc)
    pending_since = dt.datetime.fromtimestamp(node.pending_request["submitted_at"], dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    warnings = fetched.get("warnings") or []
    assert any(submitted["request_id"] in w and pending_since in w for w in warnings), json.dumps(fetched)
