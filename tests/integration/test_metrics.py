"""Metrics and alerts, read by the tools that read them in production: the shipped rules pass
`promtool check rules` and `promtool test rules`; a real Prometheus scrapes `mtls_ca_sign serve`
and two nodes' node_exporters (textfile collector) after a drain that issued, refused and
dead-lettered, and fires the shipped alerts for a node past its renewal time and a node whose
certificate has expired."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from observability import (
    PROMTOOL,
    RULES,
    RULES_TEST,
    firing_alerts,
    query,
    start_node_exporter,
    start_prometheus,
    tool,
    wait_targets_up,
)

import helpers
from helpers import assert_ok, describe
from service_helpers import run_raw, start_serve, write_config


@pytest.fixture
def servers():
    """Processes a test starts; all stopped (by PID) at teardown."""
    started = []
    yield started
    for process in started:
        process.stop()


def test_shipped_rules_pass_promtool_check_and_unit_tests():
    checked = subprocess.run([tool(PROMTOOL), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 10 rules found" in checked.stdout, checked.stdout
    tested = subprocess.run(
        [tool(PROMTOOL), "test", "rules", RULES_TEST.name], cwd=RULES_TEST.parent, capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Every alert of the rules file is exercised by a test case that expects it to fire.
    alerts = {line.split(":", 1)[1].strip() for line in RULES.read_text().splitlines() if "- alert:" in line}
    tests_text = RULES_TEST.read_text()
    for alert in alerts:
        assert f"alertname: {alert}\n        exp_alerts:\n          - exp_labels" in tests_text, f"{alert} never expected to fire"


def crl_pem(issuer_cert_path: Path, issuer_key_path: Path, next_update: dt.datetime) -> str:
    issuer = x509.load_pem_x509_certificate(issuer_cert_path.read_bytes())
    key = serialization.load_pem_private_key(issuer_key_path.read_bytes(), password=None)
    now = dt.datetime.now(dt.UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(next_update)
        .add_extension(x509.CRLNumber(1), critical=False)
        .sign(key, hashes.SHA256())
    )
    return crl.public_bytes(serialization.Encoding.PEM).decode()


def install_expired_pair(node, ca) -> x509.Certificate:
    """A node whose certificate expired and was never renewed: its layout as an install leaves
    it (current -> versions/<serial>), written here because no CA issues an expired certificate."""
    issuer = helpers.load_cert(ca.intermediate_cert_path)
    issuer_key = serialization.load_pem_private_key(ca.intermediate_privatekey_path.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = helpers.sign_leaf(
        issuer, issuer_key, key.public_key(), node.instance_id, node.sans, days=-2, not_before=now - dt.timedelta(days=32)
    )
    version = node.path / "versions" / f"{cert.serial_number:x}"
    version.mkdir(parents=True)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (version / "privkey.pem").write_bytes(key_pem)
    os.chmod(version / "privkey.pem", 0o600)
    chain = helpers.pem(issuer)
    (version / "cert.pem").write_text(helpers.pem(cert))
    (version / "chain.pem").write_text(chain)
    (version / "fullchain.pem").write_text(helpers.pem(cert) + chain)
    os.symlink(f"versions/{cert.serial_number:x}", node.path / "current")
    return cert


def samples(base: str, promql: str) -> dict[str, float]:
    """{label set as text: value} of an instant query."""
    out = {}
    for series in query(base, promql):
        labels = {k: v for k, v in series["metric"].items() if k not in ("__name__", "instance", "job")}
        out[json.dumps(labels, sort_keys=True)] = float(series["value"][1])
    return out


def one(base: str, promql: str) -> float:
    found = samples(base, promql)
    assert len(found) == 1, f"{promql}: expected one series, got {found}"
    return next(iter(found.values()))


def test_prometheus_scrapes_the_worker_and_nodes_and_fires_the_shipped_alerts(
    make_node, sign_args, queues, sqs, ca, module_env, tmp_path, servers
):
    started_at = dt.datetime.now(dt.UTC).timestamp()
    # The CRL bundle the ca_worker role keeps: the intermediate's, then the root's.
    intermediate_next = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=7)
    root_next = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=365)
    crl_path = tmp_path / "crl.pem"
    crl_path.write_text(
        crl_pem(ca.intermediate_cert_path, ca.intermediate_privatekey_path, intermediate_next)
        + crl_pem(ca.root_cert_path, ca.root_privatekey_path, root_next)
    )

    # The requests: one the policy allows, one it refuses, one forged (dead-lettered).
    overdue = make_node(1)
    refused = make_node(2, sans=["DNS:evil.example.com"])
    expired = make_node(3)
    textfiles = {n.instance_id: tmp_path / f"textfile-{n.n}" for n in (overdue, expired)}
    for d in textfiles.values():
        d.mkdir()
    # A one-day certificate renewed two days before its end: past its renewal time at once.
    assert_ok(*overdue.submit(lifetime_days=1, renew_before="2d", metrics_textfile=str(textfiles[overdue.instance_id] / "fleetpki.prom")))
    assert_ok(*refused.submit())
    forged = helpers.csr_message("i-00000000000000063", helpers.tamper_csr_signature(helpers.make_csr_pem("i-00000000000000063", [])))
    helpers.send_json(sqs, queues.csr, forged, instance_id="i-00000000000000063")

    metrics_port = helpers.free_port()
    config = write_config(
        tmp_path / "serve.json",
        sign_args(
            metrics_listen=f"127.0.0.1:{metrics_port}",
            metrics_queue_poll_interval=1,
            crl_path=str(crl_path),
            dead_letter_queue_url=queues.dlq,
        ),
    )
    worker = start_serve(config, module_env)
    servers.append(worker)
    worker.wait_for_stderr(f"serving metrics on http://127.0.0.1:{metrics_port}/metrics", timeout=30)
    worker.wait_for(
        lambda: {line["decision"] for line in worker.audit_lines()} >= {"issued", "rejected", "dead_lettered"},
        timeout=60,
        what="an issuance, a refusal and a dead letter in the record",
    )

    fetched, proc = overdue.fetch(metrics_textfile=str(textfiles[overdue.instance_id] / "fleetpki.prom"))
    assert_ok(fetched, proc)
    assert fetched["status"] == "installed", describe(fetched, proc)
    install_expired_pair(expired, ca)
    result, proc = expired.fetch(metrics_textfile=str(textfiles[expired.instance_id] / "fleetpki.prom"))
    assert_ok(result, proc)
    assert result["status"] == "unchanged", describe(result, proc)
    # The refused node learns of its refusal: the task fails, the layout keeps it.
    result, proc = refused.fetch()
    assert result.get("failed") and result["status"] == "refused", describe(result, proc)
    state = json.loads((refused.path / "state.json").read_text())
    assert state["last_result"] == "refused" and state["last_refusal"]["reason_code"] == "san_not_allowed", state

    exporters = {}
    for instance_id, directory in textfiles.items():
        process, address = start_node_exporter(directory, tmp_path)
        servers.append(process)
        exporters[instance_id] = address
    prometheus, base = start_prometheus(
        tmp_path / "prometheus",
        {"fleetpki-ca": [f"127.0.0.1:{metrics_port}"], "node": list(exporters.values())},
        [RULES],
    )
    servers.append(prometheus)

    # Every target up, then the worker's series with the values of this drain.
    wait_targets_up(base, 3, prometheus)
    helpers.wait_for(
        lambda: samples(base, 'fleetpki_ca_queue_messages{queue="dead_letter",state="visible"}') == {
            json.dumps({"queue": "dead_letter", "state": "visible"}): 1.0
        },
        timeout=60,
        interval=0.5,
        what="the dead-letter queue depth polled and scraped",
    )
    requests = samples(base, "fleetpki_ca_requests_total")
    assert requests == {
        json.dumps({"outcome": "issued"}): 1.0,  # an empty label is no label to Prometheus
        json.dumps({"outcome": "rejected", "reason": "san_not_allowed"}): 1.0,
        json.dumps({"outcome": "dead_lettered", "reason": "csr_signature_invalid"}): 1.0,
    }, requests
    assert one(base, "fleetpki_ca_sign_duration_seconds_count") == 1
    assert one(base, "fleetpki_ca_request_duration_seconds_count") == 3
    assert one(base, 'fleetpki_ca_queue_messages{queue="csr",state="visible"}') == 0
    assert one(base, 'fleetpki_ca_sqs_calls_total{action="GetQueueAttributes"}') >= 2
    assert one(base, 'fleetpki_ca_sqs_calls_total{action="ReceiveMessage"}') >= 1
    assert one(base, "fleetpki_ca_signer_up") == 1
    assert one(base, "fleetpki_ca_signer_errors_total") == 0
    intermediate = helpers.load_cert(ca.intermediate_cert_path)
    root = helpers.load_cert(ca.root_cert_path)
    assert samples(base, "fleetpki_ca_certificate_expiration_timestamp_seconds") == {
        json.dumps({"ca": "intermediate"}): intermediate.not_valid_after_utc.timestamp(),
        json.dumps({"ca": "root"}): root.not_valid_after_utc.timestamp(),
    }
    assert samples(base, "fleetpki_ca_crl_next_update_timestamp_seconds") == {
        json.dumps({"ca": "intermediate"}): intermediate_next.timestamp(),
        json.dumps({"ca": "root"}): root_next.timestamp(),
    }
    assert one(base, "fleetpki_ca_last_drain_success_timestamp_seconds") >= int(started_at)
    build = query(base, "fleetpki_ca_build_info")
    assert len(build) == 1 and build[0]["value"][1] == "1", build
    assert build[0]["metric"]["signer"] == "file" and re.fullmatch(r"\d+\.\d+\.\d+", build[0]["metric"]["version"]), build

    # The nodes' series, each from its own node_exporter.
    by_instance = {
        s["metric"]["instance"]: float(s["value"][1]) for s in query(base, "fleetpki_node_certificate_expiration_timestamp_seconds")
    }
    overdue_cert = helpers.load_cert(overdue.current / "cert.pem")
    expired_cert = helpers.load_cert(expired.current / "cert.pem")
    assert by_instance == {
        exporters[overdue.instance_id]: overdue_cert.not_valid_after_utc.timestamp(),
        exporters[expired.instance_id]: expired_cert.not_valid_after_utc.timestamp(),
    }, by_instance
    renewal = query(base, "fleetpki_node_certificate_renewal_timestamp_seconds")
    assert [s["metric"]["instance"] for s in renewal] == [exporters[overdue.instance_id]], renewal
    renewal_at = float(renewal[0]["value"][1])
    assert renewal_at < overdue_cert.not_valid_after_utc.timestamp() - 2 * 86400 + 1, "renew_before 2d not applied"
    results = {s["metric"]["instance"]: s["metric"]["result"] for s in query(base, "fleetpki_node_last_result_info")}
    # The expired node's fetch had nothing to fetch: no result recorded, no series.
    assert results == {exporters[overdue.instance_id]: "installed"}, results

    # The shipped alerts fire: the overdue node, the expired node, the dead letter.
    def fired() -> set[tuple[str, str]]:
        return {(a["labels"]["alertname"], a["labels"].get("instance", "")) for a in firing_alerts(base)}

    expected = {
        ("FleetpkiCertificateRenewalOverdue", exporters[overdue.instance_id]),
        ("FleetpkiCertificateExpired", exporters[expired.instance_id]),
        ("FleetpkiDeadLetterQueueNotEmpty", f"127.0.0.1:{metrics_port}"),
    }
    helpers.wait_for(lambda: expected <= fired(), timeout=60, interval=0.5, what=f"alerts {expected} firing")
    # Nothing fires that this fleet does not warrant (the fresh CA, the CRLs a week away).
    unexpected = {name for name, _ in fired()} - {name for name, _ in expected} - {"FleetpkiCertificateExpiringSoon"}
    assert not unexpected, unexpected
    # The one-day certificate expires within 7 days too: that alert is right to fire.
    assert ("FleetpkiCertificateExpiringSoon", exporters[overdue.instance_id]) in fired()


def test_metrics_listen_must_be_an_address_and_warns_off_loopback(sign_args, module_env, tmp_path, servers):
    bad = write_config(tmp_path / "bad.json", sign_args(metrics_listen="localhost"))
    service = start_serve(bad, module_env)
    servers.append(service)
    assert service.wait_exit(timeout=30) == 1, service.describe()
    assert any("metrics_listen" in line and "is not an IP address and port" in line for line in service.stderr), service.describe()

    port = helpers.free_port()
    wide = write_config(tmp_path / "wide.json", sign_args(metrics_listen=f"0.0.0.0:{port}"))
    service = start_serve(wide, module_env)
    servers.append(service)
    service.wait_for_stderr(f"serving metrics on http://0.0.0.0:{port}/metrics", timeout=30)
    assert any("warning: metrics_listen 0.0.0.0" in line and "not a loopback address" in line for line in service.stderr)


def test_one_shot_drain_writes_the_textfile_and_warns_about_metrics_listen(make_node, sign, tmp_path, module_env):
    node = make_node(1)
    assert_ok(*node.submit())
    textfile = tmp_path / "ca.prom"
    result, proc = sign(metrics_textfile=str(textfile), metrics_listen="127.0.0.1:9469")
    assert_ok(result, proc)
    assert result["issued"] == 1
    assert any("metrics_listen is used by the long-running worker" in w for w in result.get("warnings", [])), describe(result, proc)
    text = textfile.read_text()
    assert oct(textfile.stat().st_mode & 0o777) == "0o644"
    assert 'fleetpki_ca_requests_total{outcome="issued",reason=""} 1' in text, text
    assert 'fleetpki_ca_queue_messages{queue="csr",state="visible"} 0' in text, text
    assert "fleetpki_ca_last_drain_success_timestamp_seconds " in text
    # Check mode writes nothing.
    textfile.unlink()
    result, proc = sign(check=True, metrics_textfile=str(textfile))
    assert_ok(result, proc)
    assert not textfile.exists()
    # A textfile that cannot be written is a warning; the drain stands.
    assert_ok(*make_node(2).submit())
    result, proc = sign(metrics_textfile=str(tmp_path / "missing-dir" / "ca.prom"))
    assert_ok(result, proc)
    assert result["issued"] == 1
    assert any("the metrics were not written to" in w and "missing-dir" in w for w in result["warnings"]), describe(result, proc)


def test_node_textfile_is_written_atomically_and_only_outside_check_mode(make_node, sign, tmp_path):
    node = make_node(1)
    textfile = tmp_path / "node.prom"
    assert_ok(*node.submit(check=True, metrics_textfile=str(textfile)))
    assert not textfile.exists()
    assert_ok(*node.submit(metrics_textfile=str(textfile)))
    text = textfile.read_text()
    # A request waits; nothing is installed yet, so no certificate series.
    assert "fleetpki_node_request_pending_since_timestamp_seconds " in text, text
    assert "fleetpki_node_certificate_expiration_timestamp_seconds" not in text, text
    assert_ok(*sign())
    fetched, proc = node.fetch(metrics_textfile=str(textfile))
    assert_ok(fetched, proc)
    text = textfile.read_text()
    cert = helpers.load_cert(node.current / "cert.pem")
    assert f"fleetpki_node_certificate_expiration_timestamp_seconds {cert.not_valid_after_utc.timestamp():.1f}" in text, text
    assert 'fleetpki_node_last_result_info{result="installed",reason=""} 1' in text, text
    assert "fleetpki_node_request_pending_since_timestamp_seconds" not in text, text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".node.prom") or p.name.endswith(".tmp")] == []


def test_raw_run_with_unwritable_node_textfile_still_installs(make_node, sign, tmp_path, module_env):
    node = make_node(1)
    assert_ok(*node.submit())
    assert_ok(*sign())
    proc = run_raw("mtls_cert_fetch", node.fetch_args(metrics_textfile=str(tmp_path / "nope" / "x.prom")), tmp_path / "args", module_env)
    result = helpers.parse_single_json(proc.stdout)
    assert result.get("failed") is not True and result["status"] == "installed", describe(result)
    assert any("metrics_textfile" in w for w in result["warnings"]), describe(result)


def test_cert_info_reports_certificate_pending_request_and_refusal(make_node, sign, run_module, tmp_path):
    node = make_node(1)
    refused = make_node(2, sans=["DNS:evil.example.com"])
    assert_ok(*node.submit(renew_before="10d"))
    assert_ok(*refused.submit())

    info, proc = run_module("mtls_cert_info", {"path": str(node.path)})
    assert_ok(info, proc)
    assert info["changed"] is False
    assert info["certificate"] is None and info["last_result"] is None, describe(info, proc)
    pending = info["pending_request"]
    assert pending["request_id"] == node.pending_request["request_id"]
    assert pending["subject_alt_name"] == sorted(node.sans) and pending["age_seconds"] >= 0
    assert info["instance_id"] == node.instance_id, "the instance id is the pending request's"

    assert_ok(*sign())
    assert_ok(*node.fetch())
    result, proc = refused.fetch()
    assert result["status"] == "refused", describe(result, proc)

    before = helpers.tree_snapshot(node.path)
    info, proc = run_module("mtls_cert_info", {"path": str(node.path), "instance_id": node.instance_id})
    assert_ok(info, proc)
    checked, proc = run_module("mtls_cert_info", {"path": str(node.path), "instance_id": node.instance_id}, check=True)
    assert_ok(checked, proc)
    assert helpers.tree_snapshot(node.path) == before, "mtls_cert_info changed the layout"
    cert = helpers.load_cert(node.current / "cert.pem")
    c = info["certificate"]
    assert helpers.serial_int(c["serial_number"]) == cert.serial_number
    assert c["subject_alt_name"] == helpers.cert_sans(cert)
    assert c["not_after"] == helpers.rfc3339(cert.not_valid_after_utc)
    assert c["public_key_type"] == "ECDSA secp256r1"
    assert c["expired"] is False and c["renewal_overdue"] is False
    assert c["days_left"] in (29, 30), c
    # renew_before 10d, less up to 10 % of the lifetime of jitter.
    due = dt.datetime.strptime(c["renewal_due"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    latest = cert.not_valid_after_utc - dt.timedelta(days=10)
    assert latest - dt.timedelta(days=3) <= due <= latest, (due, latest)
    assert info["pending_request"] is None and info["last_result"] == "installed" and info["last_result_at"]
    assert {k: v for k, v in checked.items() if k != "invocation"} == {k: v for k, v in info.items() if k != "invocation"}

    info, proc = run_module("mtls_cert_info", {"path": str(refused.path)})
    assert_ok(info, proc)
    assert info["certificate"] is None and info["pending_request"] is None
    assert info["last_result"] == "refused"
    assert info["last_refusal"]["reason_code"] == "san_not_allowed" and "evil.example.com" in info["last_refusal"]["message"]

    missing, proc = run_module("mtls_cert_info", {"path": str(tmp_path / "never-enrolled")})
    assert missing.get("failed") and "does not exist" in missing["msg"], describe(missing, proc)
    bad, proc = run_module("mtls_cert_info", {"path": str(node.path), "instance_id": "../etc"})
    helpers.assert_failed_naming(bad, "instance_id")
