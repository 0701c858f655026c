#!/usr/bin/env python3
"""Small SQS admin tool for the local (moto) server and the tests.

Run with the project's venv (boto3):  .venv/bin/python scripts/sqs_admin.py COMMAND ...

The endpoint comes from --endpoint-url, else AWS_ENDPOINT_URL_SQS, else AWS_ENDPOINT_URL; region and
credentials from the usual AWS_* variables (defaults: us-east-1, dummy "testing" credentials, which is
all moto wants).

Commands:
  wait [--timeout S] [--pid PID]  poll ListQueues until the server answers (exit 1 on timeout or if
                                  PID died first)
  create-default                  create fleetpki-csr-dlq, fleetpki-csr (redrive to the DLQ,
                                  maxReceiveCount 5) and fleetpki-certs-shared; print KEY=URL lines
  create-set PREFIX               the same set under PREFIX (PREFIX-csr, PREFIX-csr-dlq,
                                  PREFIX-certs-shared); print JSON
  list                            queue URLs, one a line
  depth URL...                    visible / in flight / delayed counts (GetQueueAttributes only:
                                  never receives, so receive counts are untouched)
  purge URL                       PurgeQueue
  delete URL...                   DeleteQueue

The functions are also imported by tests/integration/helpers.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

DEFAULT_REGION = "us-east-1"
MAX_RECEIVE_COUNT = 5

# Names of the default queues (docs/development.md, "Local SQS").
CSR_QUEUE = "fleetpki-csr"
CSR_DLQ = "fleetpki-csr-dlq"
SHARED_CERT_QUEUE = "fleetpki-certs-shared"

DEPTH_ATTRIBUTES = [
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
]


def endpoint_from_env() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_SQS") or os.environ.get("AWS_ENDPOINT_URL")


def make_client(endpoint_url: str | None = None, region: str | None = None, retries: int = 3):
    """A boto3 SQS client for the local server (dummy credentials unless the env has some)."""
    import boto3
    from botocore.config import Config

    endpoint_url = endpoint_url or endpoint_from_env()
    if not endpoint_url:
        raise SystemExit("sqs_admin: no endpoint (set AWS_ENDPOINT_URL_SQS or pass --endpoint-url)")
    return boto3.client(
        "sqs",
        endpoint_url=endpoint_url,
        region_name=region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        config=Config(
            connect_timeout=2,
            read_timeout=30,
            retries={"max_attempts": retries, "mode": "standard"},
        ),
    )


def queue_arn(client, url: str) -> str:
    return client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def create_queue_set(
    client,
    csr_name: str,
    dlq_name: str,
    shared_name: str,
    max_receive_count: int = MAX_RECEIVE_COUNT,
) -> dict[str, str]:
    """Create (idempotently) a CSR queue with its DLQ and redrive policy, plus a shared cert queue.

    The shared certificate queue has no redrive policy: nodes in seed-compatibility mode receive
    each other's messages, which must not dead-letter them (docs/aws.md, the queue table).
    """
    dlq_url = client.create_queue(QueueName=dlq_name)["QueueUrl"]
    redrive = json.dumps({"deadLetterTargetArn": queue_arn(client, dlq_url), "maxReceiveCount": str(max_receive_count)})
    csr_url = client.create_queue(QueueName=csr_name, Attributes={"RedrivePolicy": redrive})["QueueUrl"]
    shared_url = client.create_queue(QueueName=shared_name)["QueueUrl"]
    return {"csr_queue_url": csr_url, "csr_dlq_url": dlq_url, "shared_cert_queue_url": shared_url}


def create_default(client) -> dict[str, str]:
    return create_queue_set(client, CSR_QUEUE, CSR_DLQ, SHARED_CERT_QUEUE)


def create_prefixed(client, prefix: str) -> dict[str, str]:
    return create_queue_set(client, f"{prefix}-csr", f"{prefix}-csr-dlq", f"{prefix}-certs-shared")


def queue_depth(client, url: str) -> dict[str, int]:
    """Message counts from GetQueueAttributes (never ReceiveMessage, which raises receive counts)."""
    attrs = client.get_queue_attributes(QueueUrl=url, AttributeNames=DEPTH_ATTRIBUTES)["Attributes"]
    return {
        "visible": int(attrs.get("ApproximateNumberOfMessages", 0)),
        "in_flight": int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
        "delayed": int(attrs.get("ApproximateNumberOfMessagesDelayed", 0)),
    }


def wait_until_up(endpoint_url: str | None, timeout: float, pid: int | None) -> bool:
    """Poll ListQueues every 0.1 s until the server answers, it dies (pid), or the timeout passes."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = make_client(endpoint_url, retries=1)
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if pid is not None and not _alive(pid):
            print(f"sqs_admin: server process {pid} exited before answering", file=sys.stderr)
            return False
        try:
            client.list_queues()
            return True
        except (BotoCoreError, ClientError) as exc:
            last = str(exc)
        time.sleep(0.1)
    print(f"sqs_admin: no answer within {timeout:g}s (last error: {last})", file=sys.stderr)
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child is not alive for our purpose.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint-url", default=None)
    parser.add_argument("--region", default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    p_wait = sub.add_parser("wait")
    p_wait.add_argument("--timeout", type=float, default=15.0)
    p_wait.add_argument("--pid", type=int, default=None)
    sub.add_parser("create-default")
    p_set = sub.add_parser("create-set")
    p_set.add_argument("prefix")
    sub.add_parser("list")
    p_depth = sub.add_parser("depth")
    p_depth.add_argument("urls", nargs="+")
    p_purge = sub.add_parser("purge")
    p_purge.add_argument("url")
    p_delete = sub.add_parser("delete")
    p_delete.add_argument("urls", nargs="+")
    args = parser.parse_args(argv)

    if args.command == "wait":
        return 0 if wait_until_up(args.endpoint_url, args.timeout, args.pid) else 1

    client = make_client(args.endpoint_url, args.region)
    if args.command == "create-default":
        urls = create_default(client)
        print(f"FLEETPKI_CSR_QUEUE_URL={urls['csr_queue_url']}")
        print(f"FLEETPKI_CSR_DLQ_URL={urls['csr_dlq_url']}")
        print(f"FLEETPKI_SHARED_CERT_QUEUE_URL={urls['shared_cert_queue_url']}")
    elif args.command == "create-set":
        print(json.dumps(create_prefixed(client, args.prefix), indent=2))
    elif args.command == "list":
        for url in client.list_queues().get("QueueUrls", []):
            print(url)
    elif args.command == "depth":
        for url in args.urls:
            d = queue_depth(client, url)
            print(f"{url} visible={d['visible']} in_flight={d['in_flight']} delayed={d['delayed']}")
    elif args.command == "purge":
        client.purge_queue(QueueUrl=args.url)
    elif args.command == "delete":
        for url in args.urls:
            client.delete_queue(QueueUrl=url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
