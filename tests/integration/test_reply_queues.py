"""mtls_reply_queues: reply queues of instances that are gone are deleted, the others kept."""

from __future__ import annotations

from helpers import assert_ok, queues_with_prefix


def make_reply_queues(sqs, queues, ids):
    return {i: sqs.create_queue(QueueName=f"{queues.reply_prefix}{i}")["QueueUrl"] for i in ids}


def test_deletes_only_queues_of_instances_not_kept(run_module, sqs, queues):
    urls = make_reply_queues(sqs, queues, ["i-1", "i-2", "i-3"])
    # A queue of another application with a similar name is never touched.
    other = sqs.create_queue(QueueName=f"{queues.prefix}-other-i-3")["QueueUrl"]
    args = {"keep_instance_ids": ["i-1", "i-2"], "reply_queue_prefix": queues.reply_prefix}

    result, proc = run_module("mtls_reply_queues", args, check=True)
    assert_ok(result, proc)
    assert result["changed"] is True
    assert result["deleted_queue_urls"] == [urls["i-3"]]
    assert urls["i-3"] in queues_with_prefix(sqs, queues.reply_prefix), "check mode deleted a queue"

    result, proc = run_module("mtls_reply_queues", args)
    assert_ok(result, proc)
    assert result["deleted_queue_urls"] == [urls["i-3"]]
    assert result["kept"] == 2
    assert queues_with_prefix(sqs, queues.reply_prefix) == sorted([urls["i-1"], urls["i-2"]])
    assert other in queues_with_prefix(sqs, queues.prefix)
    assert result["sqs_calls"]["DeleteQueue"] == 1

    result, proc = run_module("mtls_reply_queues", args)
    assert_ok(result, proc)
    assert result["changed"] is False
    assert result["deleted_queue_urls"] == []


def test_refuses_to_delete_more_than_max_delete(run_module, sqs, queues):
    make_reply_queues(sqs, queues, ["i-1", "i-2", "i-3"])
    result, _ = run_module(
        "mtls_reply_queues", {"keep_instance_ids": ["i-9"], "reply_queue_prefix": queues.reply_prefix, "max_delete": 2}
    )
    assert result["failed"] is True
    assert "max_delete=2" in result["msg"]
    assert len(result["stale_queue_urls"]) == 3
    assert len(queues_with_prefix(sqs, queues.reply_prefix)) == 3


def test_an_empty_keep_list_deletes_nothing_unless_forced(run_module, sqs, queues):
    """An inventory that failed to load gives []: that must not wipe the fleet's reply queues."""
    urls = make_reply_queues(sqs, queues, ["i-1", "i-2", "i-3"])
    args = {"keep_instance_ids": [], "reply_queue_prefix": queues.reply_prefix}
    for check in (True, False):
        result, _ = run_module("mtls_reply_queues", args, check=check)
        assert result["failed"] is True, result
        assert "keep_instance_ids is empty" in result["msg"] and "force: true" in result["msg"], result["msg"]
        assert sorted(result["stale_queue_urls"]) == sorted(urls.values())
        assert len(queues_with_prefix(sqs, queues.reply_prefix)) == 3, "a queue was deleted"

    result, proc = run_module("mtls_reply_queues", dict(args, force=True))
    assert_ok(result, proc)
    assert sorted(result["deleted_queue_urls"]) == sorted(urls.values())
    assert queues_with_prefix(sqs, queues.reply_prefix) == []


def test_a_short_prefix_is_refused(run_module, queues):
    result, _ = run_module("mtls_reply_queues", {"keep_instance_ids": [], "reply_queue_prefix": "f"})
    assert result["failed"] is True
    assert "reply_queue_prefix" in result["msg"]


def test_remove_instance_ids_deletes_exactly_those_queues(run_module, sqs, queues):
    """A node's state=absent: its own queue goes, looked up by name; nothing else is listed or touched."""
    urls = make_reply_queues(sqs, queues, ["i-1", "i-10", "i-2"])
    args = {"remove_instance_ids": ["i-1", "i-9"], "reply_queue_prefix": queues.reply_prefix}

    result, proc = run_module("mtls_reply_queues", args, check=True)
    assert_ok(result, proc)
    assert (result["changed"], result["deleted_queue_urls"]) == (True, [urls["i-1"]])
    assert len(queues_with_prefix(sqs, queues.reply_prefix)) == 3, "check mode deleted a queue"

    result, proc = run_module("mtls_reply_queues", args)
    assert_ok(result, proc)
    assert result["deleted_queue_urls"] == [urls["i-1"]]
    # i-10 shares the prefix "i-1": only an exact name is deleted.
    assert queues_with_prefix(sqs, queues.reply_prefix) == sorted([urls["i-10"], urls["i-2"]])
    assert "ListQueues" not in result["sqs_calls"]
    assert "1 of the 2 reply queues named" in result["msg"], result["msg"]

    result, proc = run_module("mtls_reply_queues", args)
    assert_ok(result, proc)
    assert (result["changed"], result["deleted_queue_urls"]) == (False, [])


def test_remove_instance_ids_refuses_what_is_not_an_instance_id(run_module, sqs, queues):
    urls = make_reply_queues(sqs, queues, ["i-1"])
    result, _ = run_module(
        "mtls_reply_queues", {"remove_instance_ids": ["i-1", "i-*"], "reply_queue_prefix": queues.reply_prefix}
    )
    assert result["failed"] is True
    assert "'i-*'" in result["msg"] and "nothing was deleted" in result["msg"], result["msg"]
    assert queues_with_prefix(sqs, queues.reply_prefix) == [urls["i-1"]]

    both, _ = run_module(
        "mtls_reply_queues",
        {"remove_instance_ids": ["i-1"], "keep_instance_ids": ["i-1"], "reply_queue_prefix": queues.reply_prefix},
    )
    assert both["failed"] is True and "mutually exclusive" in both["msg"], both["msg"]
    neither, _ = run_module("mtls_reply_queues", {"reply_queue_prefix": queues.reply_prefix})
    assert neither["failed"] is True, neither
    assert "keep_instance_ids" in neither["msg"] and "remove_instance_ids" in neither["msg"], neither["msg"]
