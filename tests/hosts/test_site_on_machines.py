"""The collection's site playbook on booted machines (scripts/machines): one CA and three nodes.

The module brings up ca2 (CA, on its own /30 link) and web1..web3 (nodes, on the host bridge), a
moto SQS server on the host that the machines reach at their host address (moto listens on
loopback; a relay in this process listens on the bridge's and the CA link's host addresses and
forwards to it, so the Host header, from which moto builds queue URLs, is the address the machine
used), installs the collection tarball into an empty collections path and runs, over SSH with the
inventory of `scripts/machines inventory`:

- a play that sets up the CA (ca_setup, the offline root on the control node) and installs the CA
  worker as its hardened systemd service (ca_worker, ca_worker_service: true);
- the site playbook, fleetpki.mtls.site, relying on that service (fleetpki_ca_drain_host: ""),
  with nginx as each node's service (reload handler: systemd, nginx.service);
- a play that makes each node's nginx serve its certificate on 443, client certificates required.

Then: the second run and a --check run change nothing; the worker service is active and enabled;
every node's certificate verifies against the root on the control node; the nodes talk mTLS to
each other through nginx; the worker is restarted by systemd after `kill -9` and signs a new CSR;
the CA cannot reach the nodes; in the running worker's sandbox only its log directory is writable.
Then, with no Ansible run on the CA:

- the renewal timer of mtls_client (on web3, mtls_client_timer) rotates the node's certificate
  by itself once one run of the role has set it to fire every minute with a renewal window wider
  than the lifetime; the new certificate verifies and nginx serves it (the timer's reload);
- the CA powered off while the nodes submit (a node-only play, forced rotation, no waiting): the
  requests wait in the CSR queue; booted again, the worker service drains them by itself, each
  request issued once (the issuance record, its chain unbroken), nothing dead-lettered; the nodes
  then fetch and install;
- the same with the CA's link cut instead (scripts/machines link ca2 down, then up);
- each node's install stopped at a different point (the modules' test crash switch,
  FLEETPKI_TEST_CRASH_AT) and the node's power cut right after (scripts/machines poweroff --hard):
  booted again, nginx starts with a whole certificate and key, old or new; the next run completes
  the install, each request issued once, and a run after it changes nothing.

The figures (playbook times, restart time, rotation and drain times, requests submitted, issued,
lost, duplicated, dead-lettered) are printed (pytest -s).

Needs root, the machines' tools (scripts/system-packages) and the built module binaries; it fails,
never skips.

    .venv/bin/python -m pytest -q tests/hosts/test_site_on_machines.py -x
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from machines_helpers import REPO_ROOT, RUN_DIR, SCRIPT, VENV_BIN, machines, run_in, wait_for

sys.path.insert(0, str(REPO_ROOT / "tests" / "collection"))
from collection_helpers import BUILD_COLLECTION, MODULES, base_env, describe_run, helpers, play_recap, run, tool
from relay import Relay  # tests/integration, on the path through collection_helpers
from sqs_fixtures import OwnMotoServer

CA = "ca2"
NODES = ("web1", "web2", "web3")
UP_TIMEOUT = 900  # builds the base on a cold cache (1 to 1.5 minutes), then boots in seconds
DOWN_TIMEOUT = 180
PLAYBOOK_TIMEOUT = 900
REGION = "us-east-1"
QUEUE_PREFIX = "site"
WORKER = "fleetpki-ca-worker.service"
NGINX_PORT = 443
TLS_PATH = "/etc/fleetpki/tls"
# The node whose certificate is also renewed by mtls_client's systemd timer (mtls_client_timer).
TIMER_NODE = "web3"
RENEW_UNIT = "fleetpki-renew"  # mtls_client_timer_name's default: .timer and .service
AUDIT_LOG = "/var/log/fleetpki-ca-worker/audit.jsonl"  # ca_worker_service_audit_log_path's default
# Seconds for the CSR queue to drain once the CA is back: a boot, or TCP's retransmission backoff
# after a link outage, on a loaded host.
DRAIN_TIMEOUT = 600
LINK_OUTAGE_S = 25  # how long the CA's link stays down: past the long poll and the visibility timeout

FIGURES: dict[str, float | int] = {}


# --------------------------------------------------------------------------------------------
# The collection and the playbook
# --------------------------------------------------------------------------------------------


def build_tarball() -> Path:
    given = os.environ.get("FLEETPKI_COLLECTION_TARBALL", "").strip()
    if given:
        assert Path(given).is_file(), f"FLEETPKI_COLLECTION_TARBALL={given} is not a file"
        return Path(given)
    for m in MODULES:
        helpers.binary_path(m)  # fails naming the missing binary
    proc = run([str(BUILD_COLLECTION), "--no-cargo"], env=dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}"))
    assert proc.returncode == 0, describe_run(proc)
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.is_file(), f"scripts/build-collection's last line is not a file: {path}"
    return path


def ansible_env(home: Path, collections: Path) -> dict[str, str]:
    """tests/collection's environment (nothing of the developer's ansible or AWS setup, only our
    collection), over SSH to the machines."""
    (home / "ansible.cfg").write_text("# empty: the test sets everything through the environment\n", encoding="utf-8")
    env = base_env(home, collections)
    # The machines keep Ansible's own remote temporary directory (not a path of the control node).
    env.pop("ANSIBLE_REMOTE_TEMP")
    env.update(
        {
            "ANSIBLE_PIPELINING": "true",
            # Short-lived SSH masters: none outlives the machines for long.
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=15s",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(home / "cp"),
        }
    )
    return env


NGINX_CONF = f"""\
# Written by tests/hosts/test_site_on_machines.py: the node's certificate, client certificates
# from the fleet's CA required.
server {{
    listen {NGINX_PORT} ssl;
    server_name _;
    ssl_certificate {TLS_PATH}/current/fullchain.pem;
    ssl_certificate_key {TLS_PATH}/current/privkey.pem;
    ssl_client_certificate {TLS_PATH}/ca.pem;
    ssl_verify_client on;
    ssl_verify_depth 2;
    location / {{
        return 200 "mtls-ok $ssl_client_s_dn\\n";
    }}
}}
"""

PLAYBOOK = f"""\
---
# The CA worker runs as its systemd service; the site playbook then relies on it
# (fleetpki_ca_drain_host: "").
- name: Set up the CA and its worker service
  hosts: ca
  gather_facts: false
  roles:
    - role: fleetpki.mtls.ca_setup
      vars:
        ca_setup_root_cert_fetch_dest: "{{{{ fleetpki_root_ca_file }}}}"
    - role: fleetpki.mtls.ca_worker
      vars:
        ca_worker_service: true
        ca_worker_drain: false

- name: The site playbook
  ansible.builtin.import_playbook: fleetpki.mtls.site

- name: Each node's nginx serves its certificate, client certificates required
  hosts: fleet
  gather_facts: false
  tasks:
    - name: Write the mTLS server
      ansible.builtin.copy:
        dest: /etc/nginx/sites-enabled/fleetpki-mtls.conf
        content: {json.dumps(NGINX_CONF)}
        mode: "0644"
      notify: Reload nginx
  handlers:
    - name: Reload nginx
      ansible.builtin.systemd_service:
        name: nginx.service
        state: reloaded
"""


@dataclass
class Site:
    dir: Path
    inventory: Path
    playbook: Path
    env: dict[str, str]
    root_ca: Path
    moto: OwnMotoServer
    ca_addr: str
    node_addrs: dict[str, str]
    runs: list[subprocess.CompletedProcess] = field(default_factory=list)
    first: subprocess.CompletedProcess | None = None
    csr_queue_url: str = ""  # as the control node reaches it (moto on loopback)
    dlq_url: str = ""

    def play(self, *args: str) -> tuple[subprocess.CompletedProcess, float]:
        cmd = [tool("ansible-playbook"), "-i", str(self.inventory), "--forks", "8", str(self.playbook), *args]
        start = time.monotonic()
        proc = run(cmd, env=self.env, cwd=self.dir, timeout=PLAYBOOK_TIMEOUT)
        seconds = time.monotonic() - start
        (self.dir / f"play-{len(self.runs) + 1}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
        self.runs.append(proc)
        return proc, seconds


def instance_id(node: str) -> str:
    """The node's instance id (write_site's host_vars)."""
    return f"i-{NODES.index(node) + 1:017d}"


def write_site(base: Path, inventory_ini: str, moto: OwnMotoServer, csr_queue: str, env: dict[str, str], layout: dict) -> Site:
    q = json.dumps
    inv = base / "inventory"
    (inv / "group_vars").mkdir(parents=True)
    (inv / "host_vars").mkdir()
    ini = inventory_ini.rstrip("\n") + "\n\n[fleet:children]\nnodes\n\n[control]\n"
    ini += f"offline_root ansible_connection=local ansible_python_interpreter={sys.executable}\n"
    (inv / "hosts.ini").write_text(ini, encoding="utf-8")

    port = moto.port
    path = urlsplit(csr_queue).path  # /ACCOUNT/NAME
    ca_endpoint = f"http://{{{{ hostvars[groups['ca'][0]].machines_host_addr }}}}:{port}"
    own_endpoint = f"http://{{{{ machines_host_addr }}}}:{port}"
    all_vars = [
        "ca_setup_root_host: offline_root",
        f"ca_setup_root_dir: {q(str(base / 'offline-root'))}",
        "ca_setup_owner: fleetpki-ca",
        "ca_setup_group: fleetpki-ca",
        # Both roles may create the service's user (ca_worker does by default): the second run,
        # with the worker running as it, must change nothing of it (no usermod).
        "ca_setup_create_user: true",
        "ca_worker_service_create_user: true",
        "ca_setup_organization_name: fleetpki machines test",
        "ca_worker_identity_proof: enrollment_secret",
        # Requests a receive took just before an outage come back after this: short, so the
        # fault tests converge in seconds rather than a minute.
        "ca_worker_visibility_timeout: 20",
        f"ca_worker_csr_queue_url: {q(ca_endpoint + path)}",
        f"ca_worker_reply_queue_prefix: {q(QUEUE_PREFIX + '-reply-')}",
        f"ca_worker_aws_endpoint_url: {q(ca_endpoint)}",
        f"ca_worker_aws_region: {REGION}",
        "ca_worker_aws_access_key: testing",
        "ca_worker_aws_secret_key: testing",
        "ca_worker_service_environment: {AWS_EC2_METADATA_DISABLED: 'true'}",
        f"mtls_client_csr_queue_url: {q(own_endpoint + path)}",
        f"mtls_client_reply_queue_prefix: {q(QUEUE_PREFIX + '-reply-')}",
        f"mtls_client_aws_endpoint_url: {q(own_endpoint)}",
        f"mtls_client_aws_region: {REGION}",
        "mtls_client_aws_access_key: testing",
        "mtls_client_aws_secret_key: testing",
        "mtls_client_fetch_timeout: 120",
        "mtls_client_reload: systemd",
        "mtls_client_reload_unit: nginx.service",
        f"mtls_client_path: {TLS_PATH}",
        f"fleetpki_root_ca_file: {q(str(base / 'root-ca.pem'))}",
        'fleetpki_ca_drain_host: ""',
    ]
    (inv / "group_vars" / "all.yml").write_text("---\n" + "\n".join(all_vars) + "\n", encoding="utf-8")
    for node in NODES:
        addr = layout[node]["addr"]
        host_vars = [
            f"mtls_client_instance_id: {instance_id(node)}",
            f"mtls_client_enrollment_secret: {os.urandom(32).hex()}",
            "mtls_client_subject_alt_name:",
            f"  - DNS:{node}.fleet.internal",
            f"  - IP:{addr}",
        ]
        if node == TIMER_NODE:
            # The renewal timer, on its default schedule (every 6 h): nothing is due between the runs.
            host_vars.append("mtls_client_timer: true")
        (inv / "host_vars" / f"{node}.yml").write_text("---\n" + "\n".join(host_vars) + "\n", encoding="utf-8")
    playbook = base / "site-on-machines.yml"
    playbook.write_text(PLAYBOOK, encoding="utf-8")
    return Site(
        dir=base,
        inventory=inv / "hosts.ini",
        playbook=playbook,
        env=env,
        root_ca=base / "root-ca.pem",
        moto=moto,
        ca_addr=layout[CA]["addr"],
        node_addrs={n: layout[n]["addr"] for n in NODES},
    )


def assert_ok(proc: subprocess.CompletedProcess, hosts: tuple[str, ...] = (CA, *NODES)) -> dict[str, dict[str, int]]:
    assert proc.returncode == 0, describe_run(proc)
    recap = play_recap(proc.stdout)
    # offline_root (the control node) appears only when a task was delegated to it.
    assert set(recap) - {"offline_root"} == set(hosts), f"PLAY RECAP hosts {sorted(recap)}\n{describe_run(proc)}"
    bad = {h: r for h, r in recap.items() if r["failed"] or r["unreachable"]}
    assert not bad, f"failed or unreachable hosts: {bad}\n{describe_run(proc)}"
    return recap


def changed_tasks(output: str) -> list[str]:
    """The 'changed: [host]' lines with the task they belong to (for failure messages)."""
    task, found = "", []
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line
        elif line.startswith("changed:"):
            found.append(f"{task} {line}")
    return found


# --------------------------------------------------------------------------------------------
# The fixture: machines, SQS, collection, first run
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    assert os.geteuid() == 0, "these tests need root (network namespaces, systemd-nspawn)"
    base = tmp_path_factory.mktemp("site-on-machines")
    moto: OwnMotoServer | None = None
    relays: list[Relay] = []
    try:
        machines("up", f"{CA}:ca", *(f"{n}:node" for n in NODES), timeout=UP_TIMEOUT)
        layout_json = json.loads((RUN_DIR / "machines.json").read_text())
        layout = {m["name"]: m for m in layout_json["machines"]}
        assert set(layout) == {CA, *NODES}, f"machines.json: {sorted(layout)}"

        moto = OwnMotoServer(base)
        moto.start()
        host_addrs = sorted({layout_json["bridge"]["host_addr"], layout[CA]["host_addr"]})
        relays = [Relay(addr, moto.port, moto.port) for addr in host_addrs]
        urls = helpers.sqs_admin.create_prefixed(moto.client(), QUEUE_PREFIX)

        tarball = build_tarball()
        home = base / "ansible-home"
        home.mkdir()
        collections = base / "collections"
        env = ansible_env(home, collections)
        proc = run([tool("ansible-galaxy"), "collection", "install", str(tarball), "-p", str(collections)], env=env, timeout=120)
        assert proc.returncode == 0, describe_run(proc)

        inventory_ini = machines("inventory").stdout
        s = write_site(base, inventory_ini, moto, urls["csr_queue_url"], env, layout)
        s.csr_queue_url, s.dlq_url = urls["csr_queue_url"], urls["csr_dlq_url"]
        proc, seconds = s.play()
        FIGURES["first_run_s"] = round(seconds, 1)
        s.first = proc
        yield s
    finally:
        print(f"\nfigures: {json.dumps(FIGURES)}")
        down = subprocess.run([str(SCRIPT), "down"], capture_output=True, text=True, timeout=DOWN_TIMEOUT, cwd=REPO_ROOT)
        for relay in relays:
            relay.stop()
        if moto is not None:
            moto.stop()
        assert down.returncode == 0, f"scripts/machines down exited {down.returncode}\n{down.stdout}\n{down.stderr}"
        clean = subprocess.run([str(SCRIPT), "check-clean"], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
        assert clean.returncode == 0, f"scripts/machines check-clean after down:\n{clean.stdout}\n{clean.stderr}"


# --------------------------------------------------------------------------------------------
# The tests, in order (-x stops at the first failure)
# --------------------------------------------------------------------------------------------


def test_first_run_converges(site):
    recap = assert_ok(site.first)
    unchanged = [h for h in (CA, *NODES) if recap[h]["changed"] == 0]
    assert not unchanged, f"first run: these hosts changed nothing: {unchanged}\n{describe_run(site.first)}"
    assert site.root_ca.is_file(), "the root CA certificate was not fetched to the control node"
    assert (site.dir / "offline-root" / "root.key.pem").is_file(), "the root key is not on the control node"
    assert run_in(CA, "test ! -e /etc/fleetpki/ca/root.key.pem", check=False).returncode == 0, "the root key reached the CA"


def test_second_run_changes_nothing(site):
    proc, seconds = site.play()
    FIGURES["second_run_s"] = round(seconds, 1)
    recap = assert_ok(proc)
    changed = {h: r["changed"] for h, r in recap.items() if r["changed"]}
    assert not changed, f"the second run changed: {changed}\n" + "\n".join(changed_tasks(proc.stdout))
    # Nothing in flight: the CSR queue drained, every answer consumed, one reply queue per node.
    depths = helpers.snapshot_queues(site.moto.client(), QUEUE_PREFIX)
    assert all(sum(d.values()) == 0 for d in depths.values()), f"messages left in the queues: {depths}"
    assert len([u for u in depths if "-reply-" in u]) == len(NODES), f"expected one reply queue per node: {sorted(depths)}"


def test_check_run_changes_nothing(site):
    proc, seconds = site.play("--check")
    FIGURES["check_run_s"] = round(seconds, 1)
    recap = assert_ok(proc)
    changed = {h: r["changed"] for h, r in recap.items() if r["changed"]}
    assert not changed, f"--check reports changes: {changed}\n" + "\n".join(changed_tasks(proc.stdout))


def test_worker_service_active_and_enabled(site):
    assert run_in(CA, f"systemctl is-active {WORKER}", check=False).stdout.strip() == "active", run_in(
        CA, f"systemctl status --no-pager {WORKER}; journalctl -u {WORKER} --no-pager -n 30", check=False
    ).stdout
    assert run_in(CA, f"systemctl is-enabled {WORKER}", check=False).stdout.strip() == "enabled"
    # It runs as its own user, the only one that can read the intermediate key.
    pid = run_in(CA, f"systemctl show -p MainPID --value {WORKER}").stdout.strip()
    assert run_in(CA, f"ps -o user= -p {pid}").stdout.strip() == "fleetpki-ca"
    key = run_in(CA, "stat -c '%U %a' /etc/fleetpki/ca/intermediate.key.pem", check=False)
    assert key.stdout.strip() == "fleetpki-ca 400", f"intermediate key: {key.stdout}{key.stderr}"


def test_worker_sandbox_allows_writing_its_log_directory_only(site):
    """The hardening of the worker's unit in force: in the running worker's own mount namespace
    (entered with nsenter as root: a read-only mount refuses even root) only the directory of the
    issuance record is writable. Outside the sandbox the same paths are writable: the sandbox
    refuses, not the file system."""
    pid = int(worker_state()["MainPID"])
    assert pid > 0
    log_dir = AUDIT_LOG.rsplit("/", 1)[0]
    forbidden = ("/etc/fleetpki/ca", "/usr/local/libexec/fleetpki", "/etc", "/var/lib", "/root")

    def write(path: str, sandboxed: bool) -> str:
        probe = f"{path}/.fleetpki-sandbox-probe"
        enter = f"nsenter -t {pid} -m -- " if sandboxed else ""
        cmd = f"{enter}sh -c {shlex.quote(f'touch {probe} && rm -f {probe}')} 2>&1; echo rc=$?"
        return run_in(CA, cmd, check=False).stdout.strip()

    assert write(log_dir, sandboxed=True).endswith("rc=0"), write(log_dir, sandboxed=True)
    for path in forbidden:
        assert write(path, sandboxed=False).endswith("rc=0"), f"{path} is not writable outside the sandbox either"
        inside = write(path, sandboxed=True)
        assert not inside.endswith("rc=0"), f"the worker's sandbox lets it write {path}"
        assert "Read-only file system" in inside or "Permission denied" in inside, f"{path} in the sandbox: {inside}"


def node_file(node: str, path: str) -> str:
    return run_in(node, f"cat {shlex.quote(path)}").stdout


def test_every_node_certificate_verifies_against_the_root(site, tmp_path):
    for node in NODES:
        cert = tmp_path / f"{node}-cert.pem"
        chain = tmp_path / f"{node}-chain.pem"
        cert.write_text(node_file(node, f"{TLS_PATH}/current/cert.pem"))
        chain.write_text(node_file(node, f"{TLS_PATH}/current/chain.pem"))
        for purpose in ("sslclient", "sslserver"):
            proc = subprocess.run(
                ["openssl", "verify", "-CAfile", str(site.root_ca), "-untrusted", str(chain), "-purpose", purpose, str(cert)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert proc.returncode == 0 and ": OK" in proc.stdout, f"{node} ({purpose}): {proc.stdout}{proc.stderr}"
        pinned = node_file(node, f"{TLS_PATH}/ca.pem")
        assert pinned == site.root_ca.read_text(), f"{node}: the pinned CA is not the root"


def s_client(client: str, server: str, addr: str, with_cert: bool) -> subprocess.CompletedProcess[str]:
    """From CLIENT: an HTTPS GET to SERVER's nginx by openssl s_client, the client's own pair or none."""
    cert = f"-cert {TLS_PATH}/current/cert.pem -key {TLS_PATH}/current/privkey.pem -cert_chain {TLS_PATH}/current/chain.pem " if with_cert else ""
    cmd = (
        f"printf 'GET / HTTP/1.0\\r\\nHost: {server}\\r\\n\\r\\n' | timeout 20 openssl s_client -connect {addr}:{NGINX_PORT} "
        f"-servername {server}.fleet.internal -verify_hostname {server}.fleet.internal -CAfile {TLS_PATH}/ca.pem "
        f"-verify_return_error -ign_eof {cert}2>&1"
    )
    return run_in(client, cmd, check=False)


def served_serial(client: str, addr: str, check: bool = True) -> str:
    cmd = (
        f"timeout 20 openssl s_client -connect {addr}:{NGINX_PORT} -CAfile {TLS_PATH}/ca.pem -cert {TLS_PATH}/current/cert.pem "
        f"-key {TLS_PATH}/current/privkey.pem -cert_chain {TLS_PATH}/current/chain.pem </dev/null 2>/dev/null | openssl x509 -noout -serial"
    )
    return run_in(client, cmd, check=check).stdout.strip()


def installed_serial(node: str) -> str:
    return run_in(node, f"openssl x509 -noout -serial -in {TLS_PATH}/current/cert.pem").stdout.strip()


def test_nodes_talk_mtls_through_nginx(site):
    for i, server in enumerate(NODES):
        client = NODES[(i + 1) % len(NODES)]
        addr = site.node_addrs[server]
        ok = s_client(client, server, addr, with_cert=True)
        assert ok.returncode == 0, f"{client} -> {server} with its certificate:\n{ok.stdout}{ok.stderr}"
        assert "Verify return code: 0 (ok)" in ok.stdout, ok.stdout
        assert "HTTP/1.1 200" in ok.stdout and "mtls-ok" in ok.stdout, f"{client} -> {server}:\n{ok.stdout}"
        assert served_serial(client, addr) == installed_serial(server), f"{server} serves another certificate than it installed"
        # Without a client certificate nginx refuses the request (TLS 1.3: after the handshake,
        # with its 400 "No required SSL certificate was sent").
        refused = s_client(client, server, addr, with_cert=False)
        assert "mtls-ok" not in refused.stdout, f"{client} -> {server} without a certificate was served:\n{refused.stdout}"
        assert "HTTP/1.1 400" in refused.stdout and "No required SSL certificate was sent" in refused.stdout, refused.stdout


def worker_state() -> dict[str, str]:
    out = run_in(CA, f"systemctl show -p MainPID,NRestarts,ActiveState,SubState {WORKER}").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_worker_restarts_after_kill9_and_signs_a_new_csr(site):
    before = worker_state()
    pid = int(before["MainPID"])
    assert pid > 0 and before["ActiveState"] == "active", before
    restarts = int(before["NRestarts"])
    start = time.monotonic()
    run_in(CA, f"kill -9 {pid}")

    def restarted():
        state = worker_state()
        new_pid = int(state["MainPID"])
        if state["ActiveState"] == "active" and new_pid not in (0, pid) and int(state["NRestarts"]) > restarts:
            return state
        return None

    after = wait_for(restarted, timeout=60, interval=0.2, what="systemd to restart the CA worker after kill -9")
    FIGURES["worker_restart_after_kill9_s"] = round(time.monotonic() - start, 1)
    assert int(after["NRestarts"]) == restarts + 1, after

    # A new CSR after the restart is signed by the restarted worker: web1 forced to rotate.
    old = installed_serial("web1")
    proc, seconds = site.play("--limit", f"web1,{CA},offline_root", "-e", "mtls_client_force=true")
    FIGURES["forced_rotation_run_s"] = round(seconds, 1)
    assert_ok(proc, hosts=("web1", CA))
    new = installed_serial("web1")
    assert new != old, "web1's certificate did not change after a forced rotation"
    assert served_serial("web2", site.node_addrs["web1"]) == new, "web1's nginx does not serve the rotated certificate"
    # The restarted worker (its new PID) logged the decision: its audit line names web1's instance.
    journal = run_in(CA, f"journalctl --no-pager -o cat _PID={after['MainPID']}", check=False).stdout
    serial = new.split("=", 1)[1].lower()
    lines = [line for line in journal.splitlines() if instance_id("web1") in line]
    assert lines, f"the restarted worker (pid {after['MainPID']}) logged nothing for web1:\n{journal[-3000:]}"
    assert any(serial in line.lower().replace(":", "") for line in lines), f"no audit line with serial {serial}:\n" + "\n".join(lines)


def test_ca_cannot_reach_the_nodes(site):
    probe = (
        "import socket, sys\n"
        "try:\n"
        "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n"
        "    print('connected')\n"
        "except OSError as e:\n"
        "    print(e.errno)\n"
    )
    for node, addr in site.node_addrs.items():
        for port in (22, NGINX_PORT):
            out = run_in(CA, f"python3 -c {shlex.quote(probe)} {addr} {port}").stdout.strip()
            assert out == "101", f"from {CA} to {node} {addr}:{port}: {out} (expected ENETUNREACH, 101)"


# --------------------------------------------------------------------------------------------
# Renewal without Ansible, and the CA away while requests wait
# --------------------------------------------------------------------------------------------


def norm_serial(serial: str) -> str:
    """A serial as openssl prints it (serial=0A1B...) or the audit log writes it, comparable."""
    return serial.split("=", 1)[-1].strip().replace(":", "").lower().lstrip("0")


def verify_against_root(site: Site, node: str, tmp_path: Path) -> None:
    cert = tmp_path / f"{node}-{time.monotonic_ns()}-cert.pem"
    chain = tmp_path / f"{node}-{time.monotonic_ns()}-chain.pem"
    cert.write_text(node_file(node, f"{TLS_PATH}/current/cert.pem"))
    chain.write_text(node_file(node, f"{TLS_PATH}/current/chain.pem"))
    proc = subprocess.run(
        ["openssl", "verify", "-CAfile", str(site.root_ca), "-untrusted", str(chain), "-purpose", "sslserver", str(cert)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0 and ": OK" in proc.stdout, f"{node}: {proc.stdout}{proc.stderr}"


def wait_served(site: Site, server: str, serial: str, timeout: float = 60) -> None:
    """Until SERVER's nginx presents SERIAL (seen from another node): a reload takes a moment."""
    client = NODES[(NODES.index(server) + 1) % len(NODES)]
    addr = site.node_addrs[server]
    wait_for(lambda: served_serial(client, addr, check=False) == serial, timeout=timeout, interval=1, what=f"{server}'s nginx to serve {serial}")


def unit_props(node: str, unit: str, *props: str) -> dict[str, str]:
    out = run_in(node, f"systemctl show -p {','.join(props)} {unit}").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def unit_time(node: str, unit: str, prop: str) -> int | None:
    """A unit's timestamp property in seconds since the epoch (the machine's clock), None when unset."""
    cmd = f'v=$(systemctl show -p {prop} --value {unit}); [ -n "$v" ] && [ "$v" != n/a ] && date -d "$v" +%s'
    out = run_in(node, cmd, check=False).stdout.strip()
    return int(out) if out.isdigit() else None


def machine_now(node: str) -> int:
    return int(run_in(node, "date +%s").stdout.strip())


def wait_unit_settled(node: str, unit: str, timeout: float = 600) -> dict[str, str]:
    """Until a oneshot service is not running (a timer run in progress has finished)."""

    def settled():
        props = unit_props(node, unit, "ActiveState", "Result", "ExecMainStatus")
        return props if props.get("ActiveState") not in ("activating", "deactivating", "reloading") else None

    return wait_for(settled, timeout=timeout, interval=1, what=f"{unit} on {node} to finish its run")


def test_renewal_timer_rotates_a_node_without_ansible(site, tmp_path):
    node = TIMER_NODE
    timer, service = f"{RENEW_UNIT}.timer", f"{RENEW_UNIT}.service"
    # The first run installed the timer: enabled and waiting.
    assert run_in(node, f"systemctl is-enabled {timer}", check=False).stdout.strip() == "enabled"
    assert run_in(node, f"systemctl is-active {timer}", check=False).stdout.strip() == "active"

    # One Ansible run, through the role's variables: every minute, no random delay, and a renewal
    # window wider than any lifetime, so every run of the timer finds a renewal due. The run
    # itself renews too (it is due for it as well); what follows is the timer's alone.
    extra = {"mtls_client_timer_on_calendar": "*:*:00", "mtls_client_timer_randomized_delay": "0", "mtls_client_renew_before": "3650d"}
    # Before the run: only the schedule it writes can trigger the timer after this (the default
    # one, every 6 h, does not within the test).
    began = machine_now(node)
    proc, seconds = site.play("--limit", node, "-e", json.dumps(extra))
    FIGURES["timer_setup_run_s"] = round(seconds, 1)
    assert_ok(proc, hosts=(node,))
    try:
        played = machine_now(node)
        start = time.monotonic()
        before = installed_serial(node)
        calendar = unit_props(node, timer, "TimersCalendar")["TimersCalendar"]
        assert "OnCalendar=*-*-* *:*:00" in calendar, f"{timer} did not take the role's schedule: {calendar}"
        nxt = unit_time(node, timer, "NextElapseUSecRealtime")
        assert nxt is not None and nxt - played <= 70, f"{timer}: next elapse {nxt} is not within a minute of {played} (daemon-reload not applied?)"

        # No ansible-playbook from here on: the timer fires, the service renews and reloads nginx.
        new = wait_for(
            lambda: (serial := installed_serial(node)) != before and serial,
            timeout=300,
            interval=2,
            what=f"{timer} to install a new certificate on {node}",
        )
        FIGURES["timer_rotation_after_run_s"] = round(time.monotonic() - start, 1)
        wait_unit_settled(node, service)
        run_in(node, f"systemctl stop {timer}")  # no more rotations: the role's next run starts it again
        result = wait_unit_settled(node, service)
        journal = run_in(node, f"journalctl --no-pager -o cat -u {service} --since @{began}", check=False).stdout
        assert result.get("Result") == "success", f"{service}: {result}\n{journal[-4000:]}"
        triggered = unit_time(node, timer, "LastTriggerUSec")
        assert triggered is not None and triggered >= began, f"{timer} last triggered at {triggered}, before the run began ({began})"
        assert "a new certificate was installed: reloading nginx.service" in journal, journal[-4000:]

        final = installed_serial(node)  # the last of the timer's rotations (one a minute)
        assert final != before and new != before
        verify_against_root(site, node, tmp_path)
        wait_served(site, node, final)
        FIGURES["timer_rotations"] = journal.count("a new certificate was installed")
    finally:
        run_in(node, f"systemctl stop {timer}", check=False)


# The outages: the nodes submit while the CA is away; the worker service, once the CA is back,
# drains the queue with no Ansible run on the CA; then the nodes fetch.


def submit_on_nodes(site: Site, what: str) -> tuple[dict[str, str], dict[str, str]]:
    """The node side only (no CA host in the play): a forced rotation, not waiting for the answer.
    Returns each node's installed serial before and its pending request id."""
    before = {n: installed_serial(n) for n in NODES}
    proc, seconds = site.play("--limit", "nodes", "-e", json.dumps({"mtls_client_force": True, "mtls_client_fetch_wait": False}))
    FIGURES[f"{what}_submit_run_s"] = round(seconds, 1)
    assert_ok(proc, hosts=NODES)
    requests = {}
    for node in NODES:
        pending = run_in(node, f"cat {TLS_PATH}/pending/request.json", check=False)
        assert pending.returncode == 0, f"{node}: no pending request after the submit:\n{pending.stdout}{pending.stderr}\n{describe_run(proc)}"
        requests[node] = json.loads(pending.stdout)["request_id"]
    assert len(set(requests.values())) == len(NODES), requests
    return before, requests


def csr_depth(site: Site) -> dict[str, int]:
    return helpers.queue_attributes(site.moto.client(), site.csr_queue_url)


def audit_records() -> list[dict]:
    text = run_in(CA, f"cat {AUDIT_LOG}").stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def audit_chain_problems(text: str) -> list[int]:
    """The line numbers whose prev_sha256 is not the SHA-256 of the line before (the issuance
    record's chain, modules/fleetpki-core/src/record.rs)."""
    import hashlib

    prev, bad = "0" * 64, []
    for no, line in enumerate(text.splitlines(), start=1):
        if json.loads(line).get("prev_sha256") != prev:
            bad.append(no)
        prev = hashlib.sha256(line.encode()).hexdigest()
    return bad


def drain_and_fetch(site: Site, what: str, prefix: str, before: dict[str, str], requests: dict[str, str], back: float, tmp_path: Path) -> None:
    """After the CA came back (at monotonic BACK): the queue drains by itself, the record shows
    each request issued once, the nodes fetch and install. The figures go to FIGURES (PREFIX_*)."""
    def drained():
        depth = csr_depth(site)
        return depth if sum(depth.values()) == 0 else None

    wait_for(drained, timeout=DRAIN_TIMEOUT, interval=1, what=f"the CA worker to drain the CSR queue after the {what}")
    drained_s = round(time.monotonic() - back, 1)
    FIGURES[f"{prefix}_back_to_queue_empty_s"] = drained_s

    # The record: queue empty means each request was recorded, answered and deleted.
    ids = set(requests.values())

    def all_issued():
        records = audit_records()
        return records if ids <= {r.get("request_id") for r in records if r.get("decision") == "issued"} else None

    records = wait_for(all_issued, timeout=60, interval=1, what="the issuance record to show every request issued")
    mine = [r for r in records if r.get("request_id") in ids]
    issued = {r["request_id"]: r for r in mine if r.get("decision") == "issued"}
    serials = {rid: {norm_serial(r["serial"]) for r in mine if r.get("request_id") == rid and r.get("serial")} for rid in ids}
    for node, rid in requests.items():
        assert issued[rid].get("instance_id") == instance_id(node), f"request {rid} of {node}: {issued[rid]}"
    dlq = helpers.queue_attributes(site.moto.client(), site.dlq_url)

    # The nodes fetch (the role, not waiting on any drain) and install; nginx reloads.
    proc, seconds = site.play("--limit", "nodes")
    assert_ok(proc, hosts=NODES)
    installed = {n: installed_serial(n) for n in NODES}
    lost = [n for n in NODES if installed[n] == before[n] or norm_serial(installed[n]) not in serials[requests[n]]]
    figures = {
        "submitted": len(ids),
        "issued": len(issued),
        "lost": len(lost) + len(ids - set(issued)),
        "duplicated": sum(1 for s in serials.values() if len(s) > 1),
        "dead_lettered": sum(dlq.values()) + sum(1 for r in mine if r.get("decision") == "dead_lettered"),
        "retried": sum(1 for r in mine if r.get("decision") == "retry"),
        "back_to_queue_empty_s": drained_s,
        "fetch_run_s": round(seconds, 1),
    }
    FIGURES.update({f"{prefix}_{k}": v for k, v in figures.items()})
    assert not lost, f"{what}: nodes without the certificate of their request: {lost}; installed {installed}, issued {serials}"
    assert figures["duplicated"] == 0, f"{what}: a request got several certificates: {serials}"
    assert figures["dead_lettered"] == 0, f"{what}: dead-lettered: DLQ {dlq}; record {[r for r in mine if r.get('decision') == 'dead_lettered']}"
    for node in NODES:
        verify_against_root(site, node, tmp_path)
        wait_served(site, node, installed[node])
    # Nothing left in flight: the CSR queue and every reply queue are empty.
    depths = helpers.snapshot_queues(site.moto.client(), QUEUE_PREFIX)
    assert all(sum(d.values()) == 0 for d in depths.values()), f"messages left in the queues: {depths}"


def test_ca_powered_off_while_requests_wait_then_booted(site, tmp_path):
    machines("poweroff", CA, timeout=DOWN_TIMEOUT)
    try:
        before, requests = submit_on_nodes(site, "ca_poweroff")
        # All three wait in the CSR queue. Some may be in flight: a long poll the worker had sent
        # before it stopped stays open at the server (up to 20 s) and takes what arrives; those
        # come back after the visibility timeout (ca_worker_visibility_timeout, 20 s here).
        depth = csr_depth(site)
        assert sum(depth.values()) == len(NODES), f"CSR queue with the CA off: {depth}"
        FIGURES["ca_poweroff_in_flight_while_off"] = depth["in_flight"]
    finally:
        back = time.monotonic()
        machines("start", CA, timeout=UP_TIMEOUT)
    FIGURES["ca_poweroff_start_cmd_s"] = round(time.monotonic() - back, 1)
    # The service came back with the machine (enabled), not by any Ansible run.
    state = wait_for(
        lambda: (s := worker_state())["ActiveState"] == "active" and s, timeout=120, interval=0.2, what="the CA worker service to be active after the boot"
    )
    assert int(state["MainPID"]) > 0, state
    drain_and_fetch(site, "CA's reboot", "ca_poweroff", before, requests, back, tmp_path)
    # The issuance record survived the poweroff whole: its chain is unbroken.
    text = run_in(CA, f"cat {AUDIT_LOG}").stdout
    assert not audit_chain_problems(text), f"the issuance record's chain breaks at lines {audit_chain_problems(text)}"


def test_ca_link_down_while_requests_wait_then_up(site, tmp_path):
    restarts = int(worker_state()["NRestarts"])
    since = machine_now(CA)
    machines("link", CA, "down")
    cut = time.monotonic()
    try:
        before, requests = submit_on_nodes(site, "ca_link_down")
        # The queue holds them, all through an outage longer than the worker's long poll (20 s)
        # and the visibility timeout (20 s). In flight: taken by a long poll already under way,
        # whose answer was cut off; they come back after the visibility timeout.
        def held():
            depth = csr_depth(site)
            assert sum(depth.values()) == len(NODES), f"CSR queue with the CA's link down: {depth}"
            return depth if time.monotonic() - cut >= LINK_OUTAGE_S else None

        depth = wait_for(held, timeout=LINK_OUTAGE_S + 120, interval=2, what=f"the link outage to last {LINK_OUTAGE_S} s")
        FIGURES["ca_link_down_in_flight_at_up"] = depth["in_flight"]
    finally:
        back = time.monotonic()
        machines("link", CA, "up")
    FIGURES["ca_link_down_for_s"] = round(back - cut, 1)
    drain_and_fetch(site, "CA's link outage", "ca_link_down", before, requests, back, tmp_path)
    state = worker_state()
    FIGURES["ca_link_down_worker_restarts"] = int(state["NRestarts"]) - restarts
    journal = run_in(CA, f"journalctl --no-pager -o cat -u {WORKER} --since @{since}", check=False).stdout
    FIGURES["ca_link_down_worker_sqs_errors_logged"] = journal.count("SQS error")
    assert state["ActiveState"] == "active", state


# A node rebooted in the middle of an install: the install stops at a crash point (the modules'
# test switch aborts the process there), then the node's power is cut, then it boots.

# What each node's install has done when it stops (layout.rs and cert_fetch.rs name the points):
# 2: the answer staged beside the pending key, not yet deleted from the reply queue;
# 4: the new version's directory in place, `current` still the old one;
# 5: `current` switched to the new version, the pending request not yet cleared.
CRASH_POINTS = {"web1": 2, "web2": 4, "web3": 5}

CRASH_PLAYBOOK = """\
---
- name: Rotate, the install stopping at each node's crash point
  hosts: nodes
  gather_facts: false
  environment:
    FLEETPKI_TEST_CRASH_AT: "{{ fleetpki_test_crash_points[inventory_hostname] }}"
  roles:
    - role: fleetpki.mtls.mtls_client
      vars:
        mtls_client_force: true
        mtls_client_ca_cert_src: "{{ fleetpki_root_ca_file }}"
"""


def test_node_power_cut_in_the_middle_of_an_install(site, tmp_path):
    nodes = tuple(CRASH_POINTS)
    before = {n: installed_serial(n) for n in nodes}
    records_before = len(audit_records())
    playbook = site.dir / "crash-install.yml"
    playbook.write_text(CRASH_PLAYBOOK, encoding="utf-8")
    cmd = [tool("ansible-playbook"), "-i", str(site.inventory), str(playbook), "-e", json.dumps({"fleetpki_test_crash_points": CRASH_POINTS})]
    crashed = run(cmd, env=site.env, cwd=site.dir, timeout=PLAYBOOK_TIMEOUT)
    (site.dir / "crash-install.log").write_text(crashed.stdout + crashed.stderr, encoding="utf-8")
    recap = play_recap(crashed.stdout)
    # Each node's fetch died at its point: the play fails there, before any handler.
    assert crashed.returncode != 0 and all(recap[n]["failed"] == 1 for n in nodes), describe_run(crashed)
    for node, k in CRASH_POINTS.items():
        assert f"test crash at point {k}" in crashed.stdout + crashed.stderr, f"{node} did not stop at crash point {k}:\n{describe_run(crashed)}"
    requests = {n: json.loads(run_in(n, f"cat {TLS_PATH}/pending/request.json").stdout)["request_id"] for n in nodes}

    for node in nodes:
        machines("poweroff", "--hard", node, timeout=DOWN_TIMEOUT)
    booted = time.monotonic()
    for node in nodes:
        machines("start", node, timeout=UP_TIMEOUT)
    FIGURES["node_power_cut_boot_s"] = round(time.monotonic() - booted, 1)

    # Booted, before any Ansible run: nginx started from whatever `current` is, and that is a whole
    # version (the certificate it presents matches its key: the handshake with verification works).
    for node in nodes:
        peer = NODES[(NODES.index(node) + 1) % len(NODES)]
        addr = site.node_addrs[node]
        served = wait_for(
            lambda peer=peer, addr=addr: served_serial(peer, addr, check=False), timeout=60, interval=1, what=f"{node}'s nginx to serve after the boot"
        )
        current = installed_serial(node)
        assert served == current, f"{node} after the boot serves {served}, its current certificate is {current}"
        FIGURES[f"node_power_cut_{node}_serves_new_after_boot"] = int(current != before[node])

    # The next run completes each install (no new request: the pending one is finished).
    proc, seconds = site.play("--limit", "nodes")
    assert_ok(proc, hosts=NODES)
    FIGURES["node_power_cut_converge_run_s"] = round(seconds, 1)
    records = audit_records()[records_before:]
    issued = {}
    for r in records:
        if r.get("decision") == "issued":
            issued.setdefault(r["request_id"], set()).add(norm_serial(r["serial"]))
    installed = {n: installed_serial(n) for n in nodes}
    for node in nodes:
        serials = issued.get(requests[node], set())
        assert len(serials) == 1, f"{node}: request {requests[node]} issued {len(serials)} times: {serials}"
        assert norm_serial(installed[node]) in serials and installed[node] != before[node], (
            f"{node} (crash point {CRASH_POINTS[node]}): installed {installed[node]}, before {before[node]}, issued {serials}"
        )
        verify_against_root(site, node, tmp_path)
        wait_served(site, node, installed[node])
        left = run_in(node, f"find {TLS_PATH} -name '*.tmp-*' -o -name request.json").stdout
        assert not left.strip(), f"{node}: leftovers of the interrupted install:\n{left}"
    FIGURES["node_power_cut_converged_s"] = round(time.monotonic() - booted, 1)
    FIGURES["node_power_cut_requests"] = len(requests)
    FIGURES["node_power_cut_issued"] = sum(len(issued.get(r, ())) for r in requests.values())
    FIGURES["node_power_cut_new_requests_after"] = len([r for r in issued if r not in requests.values()])
    assert FIGURES["node_power_cut_new_requests_after"] == 0, f"the converging run made new requests: {issued}"

    proc, _ = site.play("--limit", "nodes")
    recap = assert_ok(proc, hosts=NODES)
    changed = {h: r["changed"] for h, r in recap.items() if r["changed"]}
    assert not changed, "the run after the converging one changed:\n" + "\n".join(changed_tasks(proc.stdout))
