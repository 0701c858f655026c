"""mtls_client checks, when asked, that the service presents the certificate it just installed
(mtls_client_verify_endpoint).

The site playbook of the installed collection enrols one node (make_fleet: an offline root host,
a CA host with the drain, the node; all local connection) whose "service" is an `openssl s_server`
on a free loopback port: the reload command (re)starts it in the background on the node's
current pair, demanding a client certificate from the pinned CA, and records its PID, so the test
stops exactly the servers it started. The check passes on enrolment and after a forced rotation,
is not run when nothing was installed, and fails, naming the endpoint and both fingerprints,
when the service presents another certificate (a throwaway self-signed one) or was not reloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

import helpers
from collection_helpers import describe_run, play_recap

PROBE_TASK = "Read the certificate the service presents"
RETRIES = 3  # the role's retries for these tests (attempts = RETRIES + 1), DELAY s apart
DELAY = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def colon_hex(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


def cert_fingerprint(path: Path) -> str:
    """SHA-256 fingerprint of the first certificate of a PEM file, as openssl prints it."""
    der = helpers.load_cert(path).public_bytes(serialization.Encoding.DER)
    return colon_hex(hashlib.sha256(der).digest())


def is_our_server(pid: int, port: int) -> bool:
    """Whether pid is still an openssl s_server on our port (not a reused PID, not a zombie)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return b"s_server" in cmdline and f"127.0.0.1:{port}".encode() in cmdline and state != "Z"


@dataclass
class Service:
    """The node's service: openssl s_server on 127.0.0.1:port, (re)started by the reload command."""

    dir: Path
    port: int

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pidfile(self) -> Path:  # the running server's PID
        return self.dir / "s_server.pid"

    @property
    def pids(self) -> Path:  # every server started, one PID a line
        return self.dir / "s_server.pids"

    @property
    def log(self) -> Path:
        return self.dir / "s_server.log"

    def pid(self) -> int:
        return int(self.pidfile.read_text().strip())

    def reload_script(self, cert: Path, key: Path, ca: Path) -> Path:
        """A reload command: stop the recorded server, start one on cert/key in the background,
        demanding a client certificate that verifies against ca."""
        script = self.dir / f"restart-{len(list(self.dir.glob('restart-*.sh')))}.sh"
        q = shlex.quote
        script.write_text(
            f"""#!/bin/sh
# Written by tests/collection/test_verify_endpoint.py: the node's service, restarted.
set -u
pidfile={q(str(self.pidfile))}
if [ -f "$pidfile" ]; then
    old=$(cat "$pidfile")
    if grep -q s_server "/proc/$old/cmdline" 2>/dev/null; then
        kill "$old" 2>/dev/null
        i=0
        while kill -0 "$old" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    fi
fi
openssl s_server -accept {q(self.endpoint)} -cert {q(str(cert))} -key {q(str(key))} -www \\
    -Verify 1 -CAfile {q(str(ca))} -verify_return_error >>{q(str(self.log))} 2>&1 </dev/null &
echo "$!" >"$pidfile"
echo "$!" >>{q(str(self.pids))}
""",
            encoding="utf-8",
        )
        return script

    def presented_fingerprint(self, client_cert: Path, client_key: Path, timeout: float = 20.0) -> str:
        """The SHA-256 fingerprint of the leaf the server presents (Python's ssl, our client pair)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(str(client_cert), str(client_key))
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock, ctx.wrap_socket(sock) as tls:
                    return colon_hex(hashlib.sha256(tls.getpeercert(binary_form=True)).digest())
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"no TLS handshake with {self.endpoint} within {timeout}s: {exc}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM (then SIGKILL) to every server this test started that still runs."""
        if not self.pids.exists():
            return
        for line in self.pids.read_text().split():
            pid = int(line)
            if not is_our_server(pid, self.port):
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while is_our_server(pid, self.port) and time.monotonic() < deadline:
                time.sleep(0.1)
            if is_our_server(pid, self.port):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def service(tmp_path):
    svc_dir = tmp_path / "service"
    svc_dir.mkdir()
    svc = Service(svc_dir, free_port())
    yield svc
    svc.stop()


def site_with(fleet, service: Service, reload_script: Path, *args: str):
    """The site playbook with the check on and reload_script as the node's reload command."""
    extra = {
        "mtls_client_reload": "command",
        "mtls_client_reload_command": f"/bin/sh {shlex.quote(str(reload_script))}",
        "mtls_client_verify_endpoint": service.endpoint,
        "mtls_client_verify_retries": RETRIES,
        "mtls_client_verify_delay": DELAY,
    }
    vars_file = fleet.dir / f"verify-vars-{len(fleet.runs) + 1}.json"
    vars_file.write_text(json.dumps(extra), encoding="utf-8")
    return fleet.site("-e", f"@{vars_file}", *args)


def assert_ok(proc, hosts):
    recap = play_recap(proc.stdout)
    assert proc.returncode == 0, describe_run(proc)
    assert set(recap) == hosts, describe_run(proc)
    bad = {h: r for h, r in recap.items() if r["failed"] or r["unreachable"]}
    assert not bad, f"failed or unreachable hosts: {bad}\n{describe_run(proc)}"
    return recap


def probe_result(proc, host: str) -> str:
    """The status line of the role's probe task for host ('ok', 'fatal', ...), '' when it did not run."""
    out = proc.stdout
    start = out.find(f"TASK [fleetpki.mtls.mtls_client : {PROBE_TASK}]")
    if start < 0:
        return ""
    section = out[start:].split("\nTASK [", 1)[0]
    m = re.search(rf"^(ok|changed|fatal|failed|skipping): \[{re.escape(host)}\]", section, re.MULTILINE)
    return m.group(1) if m else ""


def failure_message(proc, host: str) -> str:
    """The msg of the role's failure for host ("Fail naming the endpoint and both fingerprints")."""
    for line in proc.stdout.splitlines():
        if line.startswith(f"fatal: [{host}]: FAILED! =>") and '"msg"' in line:
            data = json.loads(line.split("=>", 1)[1])
            if "the service at" in data.get("msg", ""):
                return data["msg"]
    raise AssertionError(f"no failure message of the check for {host}\n{describe_run(proc)}")


def node_pair(node) -> tuple[Path, Path, Path, Path]:
    current = node["path"] / "current"
    return current / "cert.pem", current / "privkey.pem", current / "fullchain.pem", node["path"] / "ca.pem"


def test_check_passes_when_the_service_presents_the_new_certificate(make_fleet, service):
    fleet = make_fleet(1)
    (host, node), = fleet.nodes.items()
    hosts = {"ca1", host}
    cert, key, fullchain, ca = node_pair(node)
    # The script names the node's current/ paths: it reads whatever pair is current when it runs.
    script = service.reload_script(cert, key, ca)

    # Enrolment: the reload starts the service, the check sees the new certificate.
    first = site_with(fleet, service, script)
    assert_ok(first, hosts)
    assert probe_result(first, host) == "ok", describe_run(first)
    enrolled = cert_fingerprint(cert)
    assert service.presented_fingerprint(fullchain, key) == enrolled
    first_pid = service.pid()
    assert is_our_server(first_pid, service.port)
    # The probe presented the node's own pair, and the service (which demands one) accepted it.
    log = service.log.read_text(errors="replace")
    assert f"CN = {node['instance_id']}" in log, log
    assert "verify error" not in log, log

    # Nothing installed: no reload, no check, nothing changed.
    second = site_with(fleet, service, script)
    recap = assert_ok(second, hosts)
    assert not any(r["changed"] for r in recap.values()), describe_run(second)
    assert probe_result(second, host) == "", f"the check ran although nothing was installed\n{describe_run(second)}"
    assert service.pid() == first_pid and is_our_server(first_pid, service.port)

    # Check mode, even when a rotation is forced: no reload, no check.
    checked = site_with(fleet, service, script, "--check", "-e", '{"mtls_client_force": true}')
    assert_ok(checked, hosts)
    assert probe_result(checked, host) == "", f"the check ran in check mode\n{describe_run(checked)}"
    assert cert_fingerprint(cert) == enrolled
    assert service.pid() == first_pid and is_our_server(first_pid, service.port)

    # A forced rotation: a new certificate, the service restarted on it, the check passes again.
    third = site_with(fleet, service, script, "-e", '{"mtls_client_force": true}')
    assert_ok(third, hosts)
    assert probe_result(third, host) == "ok", describe_run(third)
    rotated = cert_fingerprint(cert)
    assert rotated != enrolled, "the forced run installed no new certificate"
    assert service.pid() != first_pid and not is_our_server(first_pid, service.port)
    assert service.presented_fingerprint(fullchain, key) == rotated


def test_check_fails_naming_the_endpoint_when_the_service_presents_another_certificate(make_fleet, service, tmp_path):
    fleet = make_fleet(1)
    (host, node), = fleet.nodes.items()
    cert, key, fullchain, ca = node_pair(node)
    other_cert, other_key = tmp_path / "throwaway-cert.pem", tmp_path / "throwaway-key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", "/CN=throwaway", "-days", "1", "-keyout", str(other_key), "-out", str(other_cert)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    # The reload starts the service on the throwaway pair instead of the node's.
    script = service.reload_script(other_cert, other_key, ca)

    proc = site_with(fleet, service, script)
    assert proc.returncode != 0, describe_run(proc)
    recap = play_recap(proc.stdout)
    assert recap[host]["failed"] == 1 and not recap["ca1"]["failed"], describe_run(proc)
    assert probe_result(proc, host) == "fatal", describe_run(proc)
    # It retried before giving up.
    retried = re.findall(rf"^FAILED - RETRYING: \[{re.escape(host)}\]: .*{re.escape(PROBE_TASK)}", proc.stdout, re.MULTILINE)
    assert len(retried) == RETRIES, describe_run(proc)

    msg = failure_message(proc, host)
    installed, presented = cert_fingerprint(cert), cert_fingerprint(other_cert)
    assert presented != installed
    assert service.endpoint in msg, msg
    assert f"presents the certificate with SHA-256 fingerprint {presented}" in msg, msg
    assert installed in msg and str(cert) in msg, msg
    # The certificate itself was installed (the check reports, it does not roll back).
    assert service.presented_fingerprint(fullchain, key) == presented


def test_check_fails_when_the_service_was_not_reloaded(make_fleet, service):
    fleet = make_fleet(1)
    (host, node), = fleet.nodes.items()
    hosts = {"ca1", host}
    cert, key, _fullchain, ca = node_pair(node)
    script = service.reload_script(cert, key, ca)
    assert_ok(site_with(fleet, service, script), hosts)
    enrolled = cert_fingerprint(cert)
    pid = service.pid()

    # A rotation whose reload does nothing: the service still presents the enrolled certificate.
    noop = fleet.dir / "no-reload.sh"
    noop.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    proc = site_with(fleet, service, noop, "-e", '{"mtls_client_force": true}')
    assert proc.returncode != 0, describe_run(proc)
    msg = failure_message(proc, host)
    rotated = cert_fingerprint(cert)
    assert rotated != enrolled
    assert service.endpoint in msg, msg
    assert f"presents the certificate with SHA-256 fingerprint {enrolled}" in msg, msg
    assert rotated in msg, msg
    assert service.pid() == pid and is_our_server(pid, service.port)


def test_check_fails_naming_the_endpoint_when_no_service_answers(tmp_path, ansible_env, installed):
    """verify.yml alone (no CA needed): nothing listens on the endpoint, so the message says that no
    certificate was presented and why (openssl's connection error), after the bounded retries."""
    current = tmp_path / "node" / "current"
    current.mkdir(parents=True)
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", "/CN=i-0000000000000000a", "-days", "1",
         "-keyout", str(current / "privkey.pem"), "-out", str(current / "cert.pem")],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    (current / "chain.pem").write_bytes((current / "cert.pem").read_bytes())
    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        f"""
- name: Check a service that is down
  hosts: all
  gather_facts: false
  tasks:
    - name: Run the check of mtls_client alone
      ansible.builtin.include_role:
        name: fleetpki.mtls.mtls_client
        tasks_from: verify.yml
      vars:
        mtls_client_path: {json.dumps(str(tmp_path / "node"))}
        mtls_client_verify_endpoint: {json.dumps(endpoint)}
        mtls_client_verify_retries: 1
        mtls_client_verify_delay: 1
""",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "node1,", "-c", "local",
         "-e", "ansible_python_interpreter={{ ansible_playbook_python }}", str(playbook)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=ansible_env, cwd=tmp_path, timeout=180,
    )  # fmt: skip
    assert proc.returncode != 0, describe_run(proc)
    msg = failure_message(proc, "node1")
    assert f"the service at {endpoint} presented no certificate (" in msg, msg
    assert "errno=111" in msg or "refused" in msg.lower(), msg
    assert cert_fingerprint(current / "cert.pem") in msg, msg
    assert "2 attempts" in msg, msg
