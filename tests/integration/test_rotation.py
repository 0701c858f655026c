"""Rotation without touch, with the real binaries against moto:

- every crash point of the install (FLEETPKI_TEST_CRASH_AT=k): the paths a service reads always
  hold a matching pair, keys stay 0600, and the next run completes the swap;
- the renewal window: a fleet inside it renews on the next round (new serial, new or reused key),
  a fleet outside it changes nothing and sends nothing;
- a worker killed with SIGKILL after k of 10 publishes: after a restart every request is answered
  at least once and every node installs exactly one certificate;
- two workers draining one queue; `mtls_ca_sign serve` as a plain process (audit lines on stdout,
  policy reload, SIGTERM).

Nothing waits on a sleep: every wait polls a condition (queue attributes, a process's output or
exit, a proxy's event) under a deadline.
"""

from __future__ import annotations

import concurrent.futures
import grp
import json
import os
import pwd
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

import helpers
from helpers import assert_ok, describe, queue_attributes
from service_helpers import (
    Service,
    SqsProxy,
    aborted,
    assert_keys_private,
    check_pair,
    key_files,
    public_key_of,
    run_raw,
    sqs_calls_total,
    start_serve,
    write_atomically,
    write_config,
)

CRASH_POINTS = 6  # fleetpki_core::layout::CRASH_POINTS
CRASH_ENV = "FLEETPKI_TEST_CRASH_AT"


def total(depth: dict[str, int]) -> int:
    return depth["visible"] + depth["in_flight"] + depth["delayed"]


def reply_queue_url(sqs, node) -> str:
    return sqs.get_queue_url(QueueName=node.queues.reply_prefix + node.instance_id)["QueueUrl"]


def parallel(fn, items, workers: int = 8):
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def enroll(nodes, sign, fetch_args=None, **submit_args):
    """submit on every node, one drain, fetch on every node; returns {n: fetch result}."""
    for node in nodes:
        assert_ok(*node.submit(**submit_args))
    signed, proc = sign()
    assert_ok(signed, proc)
    assert signed["issued"] == len(nodes), describe(signed, proc)
    fetched = {}
    for node in nodes:
        result, proc = node.fetch(**(fetch_args or {}))
        assert_ok(result, proc)
        assert result["status"] == "installed", describe(result, proc)
        fetched[node.n] = result
    return fetched


@pytest.fixture
def services():
    """Long-running processes of a test; any still running at teardown are killed."""
    started: list[Service] = []
    yield started
    for service in started:
        service.stop()


@pytest.fixture
def proxies(sqs_server):
    made: list[SqsProxy] = []

    def make() -> SqsProxy:
        proxy = SqsProxy(sqs_server.endpoint)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


# ------------------------------------------------------------------------------------------------
# Every crash point of the install
# ------------------------------------------------------------------------------------------------


def file_owner() -> dict[str, str]:
    """The owner/group options the crash tests install with: another user than ours when we
    may chown (root), so "keys keep the configured owner" is tested for real."""
    if os.geteuid() != 0:
        return {}
    for user, group in (("nobody", "nogroup"), ("nobody", "nobody")):
        try:
            pwd.getpwnam(user), grp.getgrnam(group)
            return {"owner": user, "group": group}
        except KeyError:
            continue
    return {}


def renewal_waiting(node, sign, sqs):
    """A node with an installed pair and a forced renewal whose answer waits on its reply queue.
    Returns (old serial, new serial)."""
    first = enroll([node], sign, fetch_args=file_owner(), **file_owner())[node.n]
    old_serial = first["serial"]
    submitted, proc = node.submit(force=True, **file_owner())
    assert_ok(submitted, proc)
    assert submitted["submitted"] is True and submitted["reason"] == "forced", describe(submitted, proc)
    signed, proc = sign()
    assert_ok(signed, proc)
    assert signed["issued"] == 1, describe(signed, proc)
    new_serial = signed["serials"][0]
    assert new_serial != old_serial
    assert queue_attributes(sqs, reply_queue_url(sqs, node))["visible"] == 1
    return old_serial, new_serial


def crash_fetch(node, k, module_env, tmp_path):
    """mtls_cert_fetch with the crash switch at point k: it must abort there."""
    env = dict(module_env, **{CRASH_ENV: str(k)})
    proc = run_raw("mtls_cert_fetch", node.fetch_args(**file_owner()), tmp_path / "args", env)
    stopped = aborted(proc)
    if not stopped:  # a failed JSON is also an acceptable way to stop, never a success
        result = helpers.parse_single_json(proc.stdout, f"crashing fetch (rc {proc.returncode})")
        assert result.get("failed") is True, f"fetch with {CRASH_ENV}={k} did not stop:\n{proc.stdout}\n{proc.stderr}"
    assert (
        f"test crash at point {k}" in proc.stderr
    ), f"fetch did not reach crash point {k}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def serial_hex(cert) -> str:
    return format(cert.serial_number, "x")


def same_serial(a: str, b: str) -> bool:
    return int(a, 16) == int(b, 16)


@pytest.mark.parametrize("k", range(1, CRASH_POINTS + 1))
def test_interrupted_install_never_mismatches_and_the_next_run_completes_it(
    k, make_node, sign, sqs, module_env, tmp_path
):
    node = make_node(1)
    old_serial, new_serial = renewal_waiting(node, sign, sqs)
    old_key = public_key_of(node.current / "privkey.pem")
    reply_url = reply_queue_url(sqs, node)

    crash_fetch(node, k, module_env, tmp_path)

    # What a service reads right after the crash: a matching pair, the old one until the
    # `current` switch (point 5 comes right after it), the new one from then on.
    cert = check_pair(node.current)
    expected = new_serial if k >= 5 else old_serial
    assert same_serial(serial_hex(cert), expected), (
        f"after a crash at point {k}, current/ holds serial {serial_hex(cert)}; expected the "
        f"{'new' if k >= 5 else 'old'} pair {expected}"
    )
    assert_keys_private(node.path, **file_owner())
    if k >= 3:
        # The answer was staged and its message deleted: the next run needs no message.
        assert total(queue_attributes(sqs, reply_url)) == 0, f"the answer is still queued after point {k}"

    # The next run, without the switch, completes the swap.
    result, proc = node.fetch(timeout=60, **file_owner())  # after point 1 the answer reappears after 30 s
    assert_ok(result, proc)
    if k == 6:
        # The request was already cleared: the new pair is in place, nothing left to do.
        assert result["changed"] is False and result["status"] == "unchanged", describe(result, proc)
    else:
        assert result["changed"] is True and result["status"] == "installed", describe(result, proc)
        assert same_serial(result["serial"], new_serial), describe(result, proc)
    if k >= 2:
        # Completed from the staged answer, without SQS.
        assert sqs_calls_total(result) == 0, describe(result, proc)

    cert = check_pair(node.current)
    assert same_serial(serial_hex(cert), new_serial), f"after completing a crash at {k}: serial {serial_hex(cert)}"
    assert public_key_of(node.current / "privkey.pem") != old_key, "the key did not rotate"
    assert_keys_private(node.path, **file_owner())
    pending = node.path / "pending"
    for name in ("request.json", "cert.pem", "chain.pem"):
        assert not (pending / name).exists(), f"pending/{name} is left after completing a crash at {k}"
    # The previous pair is kept for rollback, and it is itself a matching pair.
    versions = {p.name: p for p in (node.path / "versions").iterdir() if not p.name.startswith(".")}
    old_dirs = [p for name, p in versions.items() if same_serial(name, old_serial)]
    assert len(old_dirs) == 1, f"the previous version is not kept: {sorted(versions)}"
    check_pair(old_dirs[0])
    # A later fetch has nothing to do.
    again, proc = node.fetch(wait=False)
    assert_ok(again, proc)
    assert again["changed"] is False, describe(again, proc)


def crash_and_complete(node, k, sign, sqs, module_env, tmp_path):
    renewal_waiting(node, sign, sqs)
    crash_fetch(node, k, module_env, tmp_path)
    assert_ok(*node.fetch(timeout=60, **file_owner()))


# Point 1 comes before anything is written: a crash there is a plain fetch that never happened,
# so these two start at point 2.
@pytest.mark.parametrize("k", range(2, CRASH_POINTS + 1))
def test_after_an_interrupted_install_no_stray_key_copy_is_left(k, make_node, sign, sqs, module_env, tmp_path):
    """Once the swap is completed, private keys are only in the versions kept (current and
    previous): no staging directory or pending key holds a copy nobody will ever prune."""
    node = make_node(1)
    crash_and_complete(node, k, sign, sqs, module_env, tmp_path)
    stray = sorted(
        p.relative_to(node.path).as_posix()
        for p in key_files(node.path)
        if p.parent.parent != node.path / "versions" or p.parent.name.startswith(".")
    )
    assert (
        not stray
    ), f"after completing a crash at point {k}, private key copies are left outside the versions: {stray}"


@pytest.mark.parametrize("k", range(2, CRASH_POINTS + 1))
def test_after_an_interrupted_install_the_next_renewal_rotates_the_key(k, make_node, sign, sqs, module_env, tmp_path):
    """The round after a crash-and-complete behaves like any other: key_rotation=rotate requests
    a certificate for a key never used before."""
    node = make_node(1)
    crash_and_complete(node, k, sign, sqs, module_env, tmp_path)
    live_key = public_key_of(node.current / "privkey.pem")
    submitted, proc = node.submit(force=True)
    assert_ok(submitted, proc)
    rotated = public_key_of(node.pending_key) != live_key
    assert rotated, (
        f"after a crash at point {k}, the next renewal (key_rotation=rotate) requests a certificate "
        f"for the key that is already live: pending/privkey.pem was left behind and reused"
    )
    assert_ok(*sign())
    result, proc = node.fetch()
    assert_ok(result, proc)
    assert result["status"] == "installed", describe(result, proc)
    check_pair(node.current)
    assert public_key_of(node.current / "privkey.pem") != live_key


# ------------------------------------------------------------------------------------------------
# The renewal window
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key_rotation", ["rotate", "reuse"])
def test_fleet_inside_the_renewal_window_renews_on_the_next_round(key_rotation, make_node, sign, sqs, queues, ca):
    nodes = [make_node(n) for n in (1, 2, 3)]
    first = enroll(nodes, sign, lifetime_days=1)
    before = {}
    for node in nodes:
        cert = check_pair(node.current)
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert lifetime.total_seconds() <= 2 * 86400, f"{node.instance_id}: asked for 1 day, got {lifetime}"
        before[node.n] = (first[node.n]["serial"], public_key_of(node.current / "privkey.pem"))

    # One day of lifetime, renew 2 days before the end: inside the window at once.
    for node in nodes:
        result, proc = node.submit(renew_before="2d", lifetime_days=1, key_rotation=key_rotation)
        assert_ok(result, proc)
        assert result["reason"] == "inside_renewal_window", describe(result, proc)
        assert result["changed"] is True and result["submitted"] is True, describe(result, proc)
        assert result["seconds_left"] <= 86400 + 600, describe(result, proc)
    signed, proc = sign()
    assert_ok(signed, proc)
    assert signed["issued"] == 3, describe(signed, proc)
    for node in nodes:
        result, proc = node.fetch()
        assert_ok(result, proc)
        assert result["changed"] is True and result["status"] == "installed", describe(result, proc)
        old_serial, old_key = before[node.n]
        assert not same_serial(result["serial"], old_serial), describe(result, proc)
        cert = check_pair(node.current)
        assert same_serial(serial_hex(cert), result["serial"])
        new_key = public_key_of(node.current / "privkey.pem")
        if key_rotation == "rotate":
            assert new_key != old_key, f"{node.instance_id}: key_rotation=rotate kept the key"
        else:
            assert new_key == old_key, f"{node.instance_id}: key_rotation=reuse changed the key"
        assert_keys_private(node.path)
        helpers.assert_openssl_verifies(
            node.current / "cert.pem", ca.root_cert_path, ca.intermediate_cert_path, "sslclient"
        )
        # The handler runs once: a second fetch changes nothing.
        again, proc = node.fetch(wait=False)
        assert_ok(again, proc)
        assert again["changed"] is False, describe(again, proc)
    assert total(queue_attributes(sqs, queues.csr)) == 0
    assert total(queue_attributes(sqs, queues.dlq)) == 0


def test_fleet_outside_the_renewal_window_changes_nothing_and_sends_nothing(make_node, sign, sqs, queues):
    nodes = [make_node(n) for n in (1, 2, 3)]
    enroll(nodes, sign)  # 30-day certificates (the policy's default)
    csr_before = queue_attributes(sqs, queues.csr)
    snapshot = queues.snapshot(sqs)
    trees = {node.n: helpers.tree_snapshot(node.path) for node in nodes}
    for node in nodes:
        result, proc = node.submit(renew_before="1h")
        assert_ok(result, proc)
        assert result["changed"] is False and result["submitted"] is False, describe(result, proc)
        assert result["reason"] == "valid", describe(result, proc)
        assert sqs_calls_total(result) == 0, describe(result, proc)
        assert result["seconds_left"] > 29 * 86400, describe(result, proc)
        fetched, proc = node.fetch(wait=False)
        assert_ok(fetched, proc)
        assert fetched["changed"] is False and fetched["status"] == "unchanged", describe(fetched, proc)
        assert sqs_calls_total(fetched) == 0, describe(fetched, proc)
    assert queue_attributes(sqs, queues.csr) == csr_before
    assert queues.snapshot(sqs) == snapshot
    for node in nodes:
        tree = helpers.tree_snapshot(node.path)
        # Only the lock file's presence is allowed to differ (it is created by the first run).
        assert {k: v for k, v in tree.items() if k not in (".", ".lock")} == {
            k: v for k, v in trees[node.n].items() if k not in (".", ".lock")
        }, f"{node.instance_id}: files changed outside the renewal window"


# ------------------------------------------------------------------------------------------------
# A worker killed with SIGKILL after k of 10 publishes
# ------------------------------------------------------------------------------------------------


def reply_depths(sqs, nodes) -> dict[int, int]:
    return {node.n: total(queue_attributes(sqs, reply_queue_url(sqs, node))) for node in nodes}


def drain_until_empty(sign, sqs, queues, deadline_s: float = 60.0, **overrides):
    """Run the worker until the CSR queue is empty, in flight included (a killed worker's
    message comes back after its visibility timeout). Each run long-polls for 1 s."""
    results = []
    deadline = time.monotonic() + deadline_s
    while total(queue_attributes(sqs, queues.csr)) > 0:
        assert (
            time.monotonic() < deadline
        ), f"the CSR queue did not drain within {deadline_s}s: {queue_attributes(sqs, queues.csr)}"
        result, proc = sign(**overrides)
        assert_ok(result, proc)
        results.append(result)
    return results


def audit_issued(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [line for line in map(json.loads, path.read_text().splitlines()) if line["decision"] == "issued"]


KILL_BEFORE_PUBLISH = list(range(10))
KILL_BEFORE_DELETE = [1, 5, 10]


@pytest.mark.parametrize(
    "k,moment",
    [(k, "before_publish") for k in KILL_BEFORE_PUBLISH] + [(k, "before_delete") for k in KILL_BEFORE_DELETE],
)
def test_worker_killed_after_k_publishes_every_request_is_answered_and_installed_once(
    k, moment, make_node, sign, sign_args, sqs, queues, proxies, module_env, tmp_path
):
    """before_publish: SIGKILL as the worker is about to publish answer k+1 (k answered and
    deleted, one received and in flight). before_delete: SIGKILL after answer k was published,
    before its CSR is deleted (that request is answered twice)."""
    nodes = [make_node(n) for n in range(1, 11)]
    submitted = parallel(lambda node: node.submit(), nodes)
    for result, proc in submitted:
        assert_ok(result, proc)
    request_ids = {node.n: result["request_id"] for node, (result, _) in zip(nodes, submitted, strict=True)}
    assert total(queue_attributes(sqs, queues.csr)) == 10

    proxy = proxies()
    worker: dict[str, subprocess.Popen] = {}
    published = []
    killed = threading.Event()
    reply_marker = f"/{queues.reply_prefix}"

    def kill():
        # Everything the worker sends from here on is dropped, retries included.
        killed.set()
        worker["proc"].send_signal(signal.SIGKILL)  # our own child, by its Popen

    def hook(operation, params):
        if killed.is_set():
            return "drop"
        if operation == "SendMessage" and reply_marker in params.get("QueueUrl", "") and moment == "before_publish" and len(published) == k:
            kill()
            return "drop"
        if operation in ("DeleteMessageBatch", "DeleteMessage") and moment == "before_delete" and len(published) == k:
            kill()
            return "drop"
        return None

    def after(operation, params):
        if operation == "SendMessage" and reply_marker in params.get("QueueUrl", ""):
            published.append(params["QueueUrl"])

    proxy.hook, proxy.after_hook = hook, after
    audit = tmp_path / "audit.jsonl"
    # One request at a time, so "k answered" is one moment (a worker with several batches in flight
    # is killed at random in test_issuance_record.py).
    args = sign_args(batch_size=1, concurrency=1, visibility_timeout=2, audit_log_path=str(audit))
    env = dict(module_env, AWS_ENDPOINT_URL_SQS=proxy.url)
    args_file = helpers.write_args(tmp_path / "sign-killed.json", "mtls_ca_sign", args)
    started = time.monotonic()
    worker["proc"] = subprocess.Popen(
        [str(helpers.binary_path("mtls_ca_sign")), str(args_file)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=str(tmp_path),
    )
    try:
        out, err = worker["proc"].communicate(timeout=60)
    except subprocess.TimeoutExpired:
        worker["proc"].kill()
        raise AssertionError("the worker was not killed within 60 s") from None
    assert killed.is_set(), f"the worker finished without reaching the kill point (k={k}, {moment}):\n{out}\n{err}"
    assert worker["proc"].returncode == -signal.SIGKILL
    kill_time = time.monotonic() - started

    # Exactly k answers are on the reply queues at the moment of the kill.
    depths = reply_depths(sqs, nodes)
    assert sum(depths.values()) == k == len(published), f"k={k} {moment}: reply queues hold {depths}"
    csr = queue_attributes(sqs, queues.csr)
    expected_left = 10 - k + (1 if moment == "before_delete" else 0)
    assert total(csr) == expected_left, f"CSR queue after the kill: {csr}, expected {expected_left} left"

    # Restart the worker (straight to moto) until the CSR queue is empty, in flight included.
    drain_until_empty(sign, sqs, queues, batch_size=1, visibility_timeout=2, audit_log_path=str(audit))
    depths = reply_depths(sqs, nodes)
    assert all(d >= 1 for d in depths.values()), f"some request is not answered: {depths}"
    answered = {line["request_id"] for line in audit_issued(audit)}
    assert answered >= set(request_ids.values()), f"requests not answered: {set(request_ids.values()) - answered}"
    assert sum(depths.values()) == 10 + (1 if moment == "before_delete" else 0), depths
    assert total(queue_attributes(sqs, queues.dlq)) == 0

    fetched = parallel(lambda node: node.fetch(), nodes)
    serials = set()
    for node, (result, proc) in zip(nodes, fetched, strict=True):
        assert_ok(result, proc)
        assert result["status"] == "installed" and result["request_id"] == request_ids[node.n], describe(result, proc)
        versions = [p for p in (node.path / "versions").iterdir() if not p.name.startswith(".")]
        assert len(versions) == 1, f"{node.instance_id} installed {len(versions)} certificates"
        cert = check_pair(node.current)
        serials.add(cert.serial_number)
        again, proc = node.fetch(wait=False)
        assert_ok(again, proc)
        assert again["changed"] is False, describe(again, proc)
    assert len(serials) == 10

    # A duplicate answer left on a queue is discarded by that node's next request.
    duplicates = [node for node in nodes if total(queue_attributes(sqs, reply_queue_url(sqs, node))) > 0]
    assert len(duplicates) == (1 if moment == "before_delete" else 0)
    for node in duplicates:
        # (The first fetch received both answers; the unused one is hidden for the fetch's
        # visibility timeout, then discarded by the first fetch that sees it.)
        assert_ok(*node.submit(force=True))
        signed, proc = sign()
        assert_ok(signed, proc)
        result, proc = node.fetch()
        assert_ok(result, proc)
        assert result["status"] == "installed" and same_serial(result["serial"], signed["serials"][0]), describe(
            result, proc
        )
        check_pair(node.current)
    print(f"k={k} {moment}: killed after {kill_time:.2f}s")


# ------------------------------------------------------------------------------------------------
# The worker as a service: `mtls_ca_sign serve CONFIG.json`
# ------------------------------------------------------------------------------------------------


def serve_config(tmp_path: Path, name: str, sign_args, **overrides) -> Path:
    return write_config(tmp_path / f"{name}.json", sign_args(**overrides))


def test_two_workers_drain_one_queue(make_node, sign_args, sqs, queues, module_env, tmp_path, services):
    workers = []
    for name in ("worker-a", "worker-b"):
        service = start_serve(serve_config(tmp_path, name, sign_args, batch_size=5), module_env)
        services.append(service)
        workers.append(service)
    for service in workers:
        service.wait_for_stderr("serving ", timeout=30)

    nodes = [make_node(n) for n in range(1, 21)]
    submitted = parallel(lambda node: node.submit(), nodes)
    for result, proc in submitted:
        assert_ok(result, proc)
    fetched = parallel(lambda node: node.fetch(timeout=60), nodes)
    serials = []
    for node, (result, proc) in zip(nodes, fetched, strict=True):
        assert_ok(result, proc)
        assert result["status"] == "installed", describe(result, proc)
        serials.append(check_pair(node.current).serial_number)
    assert len(set(serials)) == 20, "two nodes got the same serial"

    issued = [line for service in workers for line in service.audit_lines() if line["decision"] == "issued"]
    assert {line["request_id"] for line in issued} == {r["request_id"] for r, _ in submitted}
    assert len({line["serial"] for line in issued}) == len(issued), "the two workers issued a serial twice"
    per_worker = [sum(line["decision"] == "issued" for line in s.audit_lines()) for s in workers]
    print(f"issued per worker: {per_worker}")

    for service in workers:
        service.signal(signal.SIGTERM)
    for service in workers:
        rc = service.wait_exit(timeout=30)
        assert rc == 0, service.describe()
        assert any("stopping" in line for line in service.stderr), service.describe()
    assert total(queue_attributes(sqs, queues.csr)) == 0
    assert total(queue_attributes(sqs, queues.dlq)) == 0


def test_serve_as_a_plain_process_answers_audits_reloads_policy_and_stops_on_sigterm(
    make_node, sign_args, sqs, queues, ca, module_env, tmp_path, services
):
    allowed, removed = make_node(1), make_node(2)
    policy_path = tmp_path / "policy.json"

    def policy_for(nodes):
        return {
            "identity_proof": "none",
            "instances": [
                {
                    "instance_id": node.instance_id,
                    "dns_names": [node.sans[0].split(":", 1)[1]],
                    "ip_addresses": ["127.0.0.1"],
                }
                for node in nodes
            ],
        }

    policy_path.write_text(json.dumps(policy_for([allowed, removed])), encoding="utf-8")
    config = serve_config(tmp_path, "serve", sign_args, policy_path=str(policy_path))
    service = start_serve(config, module_env)
    services.append(service)
    service.wait_for_stderr("serving ", timeout=30)

    # Requests submitted while it runs are answered.
    for node in (allowed, removed):
        assert_ok(*node.submit())
        result, proc = node.fetch(timeout=60)
        assert_ok(result, proc)
        assert result["status"] == "installed", describe(result, proc)
        check_pair(node.current)
    # Each certificate: `signed` (before it was sent), then `issued`.
    lines = service.wait_for(lambda: len(service.audit_lines()) >= 4 and service.audit_lines(), 10, "four audit lines")
    assert [line["decision"] for line in lines] == ["signed", "issued", "signed", "issued"], lines
    lines = [line for line in lines if line["decision"] == "issued"]
    assert {line["instance_id"] for line in lines} == {allowed.instance_id, removed.instance_id}
    for line in lines:
        assert "csr_sha256" in line and line["serial"], line

    # Remove an instance from the policy. The reload happens between batches, so a request of
    # the instance still allowed ends the long poll in progress; the reload is then logged.
    write_atomically(policy_path, json.dumps(policy_for([allowed])))
    assert_ok(*allowed.submit(force=True))
    service.wait_for_stderr("policy reloaded", timeout=30)
    assert_ok(*allowed.fetch(timeout=60))

    result, proc = removed.submit(force=True)
    assert_ok(result, proc)
    refused, proc = removed.fetch(timeout=60)
    assert refused.get("failed") is True, describe(refused, proc)
    assert "instance_not_allowed" in refused["msg"], describe(refused, proc)
    line = service.wait_for(
        lambda: next((entry for entry in service.audit_lines() if entry["decision"] == "rejected"), None),
        10,
        "the rejection's audit line",
    )
    assert line["reason_code"] == "instance_not_allowed" and line["instance_id"] == removed.instance_id, line
    # The removed node keeps its installed pair.
    check_pair(removed.current)

    # A broken policy file keeps the last good one.
    write_atomically(policy_path, "{ not json")
    assert_ok(*allowed.submit(force=True))
    service.wait_for_stderr("policy not reloaded", timeout=30)
    result, proc = allowed.fetch(timeout=60)
    assert_ok(result, proc)
    assert result["status"] == "installed", describe(result, proc)

    service.signal(signal.SIGTERM)
    assert service.wait_exit(timeout=30) == 0, service.describe()
    assert any("stopping" in line for line in service.stderr), service.describe()
    for line in service.stdout:
        if line.strip():
            json.loads(line)  # stdout holds audit JSON lines only


def test_sigterm_during_a_batch_finishes_the_batch(
    make_node, sign_args, sqs, queues, module_env, tmp_path, services, proxies
):
    """SIGTERM while an answer is being published: the worker finishes that batch (the answer
    published and the CSR deleted) before it exits 0. The proxy holds the publish until the test
    has sent SIGTERM and given the worker up to 3 s to (wrongly) exit."""
    node = make_node(1)
    proxy = proxies()
    holding = threading.Event()
    release = threading.Event()
    reply_marker = f"/{queues.reply_prefix}"

    def hook(operation, params):
        if operation == "SendMessage" and reply_marker in params.get("QueueUrl", ""):
            holding.set()
            release.wait(timeout=60)
        return None

    proxy.hook = hook
    config = serve_config(tmp_path, "serve", sign_args)
    service = start_serve(config, dict(module_env, AWS_ENDPOINT_URL_SQS=proxy.url))
    services.append(service)
    service.wait_for_stderr("serving ", timeout=30)
    submitted, proc = node.submit()
    assert_ok(submitted, proc)
    assert holding.wait(timeout=30), "the worker never published"

    service.signal(signal.SIGTERM)
    exited_early = False
    try:
        service.proc.wait(timeout=3)
        exited_early = True
    except Exception:  # noqa: BLE001 - still running, as it should while its publish is in flight
        pass
    release.set()
    rc = service.wait_exit(timeout=30)
    csr_left = queue_attributes(sqs, queues.csr)
    audit = [line for line in service.audit_lines() if line.get("request_id") == submitted["request_id"]]
    assert not exited_early, (
        "SIGTERM during a batch: the worker exited while its answer was still being published "
        f"(the batch was abandoned, not finished); CSR queue afterwards: {csr_left}, audit lines "
        f"for the request: {audit}\n{service.describe()}"
    )
    assert rc == 0, service.describe()
    assert total(csr_left) == 0, f"the CSR of the batch in hand was not deleted: {csr_left}"
    assert [line["decision"] for line in audit] == ["signed", "issued"], audit
