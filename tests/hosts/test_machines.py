"""The booted machines of scripts/machines: systemd as PID 1, the network topology, and the cleanup.

One CA and two nodes are brought up once for the module (the Debian base is built on the first
run, a few minutes, and reused after). Every fact is checked with a real command, in the machine
over SSH or on the host:

- each machine boots systemd as PID 1 to "running", in its own network namespace, on its own
  writable overlay layer over the shared base, with its own host key;
- the nodes reach each other's sshd and nginx, and the host on the bridge;
- the CA reaches the host on its own link and nothing else: connecting to a node fails at once with
  "network unreachable", and its only route is the link;
- a machine's link can be cut and restored; a machine can be powered off and booted again with its
  disk kept, in order (its units stopped) or by a power cut (`poweroff --hard`: none stopped);
- `down` leaves nothing: no namespace, link, mount, cgroup or process.

Needs root, debootstrap and systemd-nspawn (scripts/system-packages installs them); without them the
tests fail, they never skip.

    .venv/bin/python -m pytest -q tests/hosts
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from machines_helpers import RUN_DIR, VENV_BIN, machines, run_in, wait_for

PREFIX = "fpm-"
CGROUP_NAME = "fleetpki-machines"

BUILD_TIMEOUT = 900  # a cold debootstrap took 1 to 1.5 minutes here (the mirror sets the pace); a warm `build` under a second
UP_TIMEOUT = 300  # the script's own boot deadline is 120 s; three machines boot in a few seconds
DOWN_TIMEOUT = 180

# Run in a machine by `python3 - HOST PORT [http]`: one TCP connection, its outcome as JSON. For
# http it sends a request; otherwise it reads what the server says first (an SSH banner, the
# test listener's greeting).
PROBE = r"""
import json, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
start = time.monotonic()
try:
    sock = socket.create_connection((host, port), timeout=3)
except OSError as e:
    print(json.dumps({"ok": False, "errno": e.errno, "error": repr(e), "seconds": time.monotonic() - start}))
    sys.exit(0)
with sock:
    if sys.argv[3:] == ["http"]:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
    data = sock.recv(256).decode("ascii", "replace")
print(json.dumps({"ok": True, "first_line": data.splitlines()[0] if data else "", "seconds": time.monotonic() - start}))
"""

GREETING = b"fleetpki host listener\n"


# --------------------------------------------------------------------------------------------
# Running scripts/machines and commands in the machines
# --------------------------------------------------------------------------------------------






def probe(name: str, host: str, port: int, http: bool = False) -> dict[str, Any]:
    """Connect from machine NAME to HOST:PORT; the outcome as PROBE reports it."""
    proc = run_in(name, f"python3 - {host} {port}{' http' if http else ''}", stdin=PROBE)
    return json.loads(proc.stdout)




def proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks): with the PID, a process's identity."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def alive(pid: int, start_time: str | None) -> bool:
    """PID is still the process that had START_TIME (running, or exited and not yet reaped)."""
    return start_time is not None and proc_start_time(pid) == start_time


def describe(pids: list[int]) -> str:
    return "; ".join(f"{pid}: {Path(f'/proc/{pid}/status').read_text().splitlines()[:3]}" for pid in pids if Path(f"/proc/{pid}").exists())


def host_netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def host_link_names() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return [line.split(": ")[1].split("@")[0] for line in out.splitlines()]


def mounts_under(directory: Path) -> list[str]:
    found = []
    for line in Path("/proc/mounts").read_text().splitlines():
        mountpoint = line.split()[1]
        if mountpoint == str(directory) or mountpoint.startswith(f"{directory}/"):
            found.append(line)
    return found


class Listener(socketserver.ThreadingTCPServer):
    """A TCP server on the host: greets each client and records its address in .peers."""

    daemon_threads = True

    def __init__(self, addr: str):
        self.peers: list[str] = []
        super().__init__((addr, 0), Greeter)


class Greeter(socketserver.BaseRequestHandler):
    def handle(self):
        self.server.peers.append(self.client_address[0])
        self.request.sendall(GREETING)


@contextlib.contextmanager
def host_listener(addr: str) -> Iterator[Listener]:
    """A Listener at ADDR on a free port, stopped when the block ends."""
    server = Listener(addr)
    thread = threading.Thread(target=server.serve_forever, name=f"listener-{addr}", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def host_outside_addrs() -> list[str]:
    """The host's own addresses that are not on the machines' links (its way out, e.g. eth0)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines() if not line.split()[1].startswith(PREFIX)]


# --------------------------------------------------------------------------------------------
# The fleet
# --------------------------------------------------------------------------------------------


@dataclass
class Machine:
    name: str
    role: str
    addr: str
    host_addr: str
    subnet: str
    netns: str
    veth: str
    pid: int
    init_pid: int
    merged: str
    start_times: dict[int, str | None]


@dataclass
class Fleet:
    state: dict[str, Any]
    machines: dict[str, Machine]

    @property
    def ca(self) -> Machine:
        (ca,) = [m for m in self.machines.values() if m.role == "ca"]
        return ca

    @property
    def nodes(self) -> list[Machine]:
        return [m for m in self.machines.values() if m.role == "node"]


def load_state() -> dict[str, Any]:
    return json.loads((RUN_DIR / "machines.json").read_text())


def load_fleet() -> Fleet:
    state = load_state()
    machines_ = {}
    for m in state["machines"]:
        start_times = {pid: proc_start_time(pid) for pid in (m["pid"], m["init_pid"])}
        machines_[m["name"]] = Machine(
            name=m["name"],
            role=m["role"],
            addr=m["addr"],
            host_addr=m["host_addr"],
            subnet=m["subnet"],
            netns=m["netns"],
            veth=m["veth"],
            pid=m["pid"],
            init_pid=m["init_pid"],
            merged=m["merged"],
            start_times=start_times,
        )
    return Fleet(state=state, machines=machines_)


def require_host() -> None:
    """Fail (never skip) when the host cannot run the machines."""
    if os.geteuid() != 0:
        pytest.fail("the machine tests need root (network namespaces, overlay mounts, systemd-nspawn): run pytest as root", pytrace=False)
    missing = [tool for tool in ("debootstrap", "systemd-nspawn", "ip", "ssh", "ssh-keygen") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: install them with scripts/system-packages (Debian packages debootstrap, systemd-container)", pytrace=False)


# Every PID a machine had during the module (the poweroff/start test gives node2 new ones): the
# down test checks that none is left.
SEEN_PIDS: dict[int, str | None] = {}


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    require_host()
    clean = machines("check-clean", check=False)
    if clean.returncode != 0:
        pytest.fail(f"a run of scripts/machines is up already; take it down first (scripts/machines down):\n{clean.stderr}", pytrace=False)
    machines("build", timeout=BUILD_TIMEOUT)
    try:
        # "ca1": Ansible warns about a host named like its group (ca).
        machines("up", "ca1:ca", "node1:node", "node2:node", timeout=UP_TIMEOUT)
        fleet = load_fleet()
        for m in fleet.machines.values():
            SEEN_PIDS.update(m.start_times)
        yield fleet
    finally:
        # Always, even after a failed `up`; a second `down` after test_down_leaves_nothing is a no-op.
        machines("down", timeout=DOWN_TIMEOUT)
        machines("check-clean")


# --------------------------------------------------------------------------------------------
# The machines
# --------------------------------------------------------------------------------------------


def test_each_machine_boots_systemd_as_pid1(fleet):
    assert sorted(fleet.machines) == ["ca1", "node1", "node2"]
    for m in fleet.machines.values():
        assert run_in(m.name, "cat /proc/1/comm").stdout.strip() == "systemd", m.name
        state = run_in(m.name, "systemctl is-system-running", check=False).stdout.strip()
        failed = run_in(m.name, "systemctl --failed --no-legend --plain", check=False).stdout
        assert state == "running", f"{m.name}: is-system-running says {state!r}; failed units:\n{failed}"
        assert run_in(m.name, "hostname").stdout.strip() == m.name
        # The container's PID 1 as the host sees it is systemd, a child of the machine's systemd-nspawn.
        assert Path(f"/proc/{m.init_pid}/comm").read_text().strip() == "systemd", m.name
        assert int(Path(f"/proc/{m.init_pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == m.pid, m.name
    machine_ids = {run_in(m.name, "cat /etc/machine-id").stdout.strip() for m in fleet.machines.values()}
    assert len(machine_ids) == 3, f"the machines share a machine-id: {machine_ids}"


def test_each_machine_has_its_own_overlay_layer_over_the_base(fleet):
    mounts = {line.split()[1]: line.split() for line in Path("/proc/mounts").read_text().splitlines()}
    lowers = set()
    for m in fleet.machines.values():
        assert m.merged in mounts, f"{m.name}: {m.merged} is not mounted"
        _, _, fstype, options, *_ = mounts[m.merged]
        assert fstype == "overlay", f"{m.name}: {m.merged} is {fstype}, not an overlay"
        opts = dict(o.split("=", 1) for o in options.split(",") if "=" in o)
        assert opts["upperdir"] == str(RUN_DIR / m.name / "upper"), opts
        lowers.add(opts["lowerdir"])
        # The writable layer holds what the machine changed (its keys, logs), not a copy of the base.
        upper_size = int(subprocess.run(["du", "-sk", opts["upperdir"]], capture_output=True, text=True, check=True).stdout.split()[0])
        assert upper_size < 50 * 1024, f"{m.name}: the writable layer is {upper_size} KiB: a copy of the base?"
    assert len(lowers) == 1, f"the machines do not share one base: {lowers}"
    base = Path(lowers.pop())
    assert base.name == "rootfs" and (base.parent / "complete").is_file(), base


def test_each_machine_has_its_own_network_namespace_and_host_key(fleet):
    host_netns = os.stat("/proc/self/ns/net").st_ino
    inodes = {}
    for m in fleet.machines.values():
        inode = os.stat(f"/run/netns/{m.netns}").st_ino
        assert os.stat(f"/proc/{m.init_pid}/ns/net").st_ino == inode, f"{m.name}: PID 1 is not in {m.netns}"
        assert inode != host_netns
        inodes[m.name] = inode
    assert len(set(inodes.values())) == 3, inodes
    known = {}
    for line in Path(fleet.state["known_hosts"]).read_text().splitlines():
        addr, keytype, key = line.split()
        known[addr] = (keytype, key)
    for m in fleet.machines.values():
        keytype, key, *_ = run_in(m.name, "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()
        assert known[m.addr] == (keytype, key), f"{m.name}: its host key is not the one in the run's known_hosts"
        # No host key of the base's build is left: the base has none, each machine makes its own.
        assert run_in(m.name, "ls /etc/ssh/ssh_host_rsa_key /etc/ssh/ssh_host_ecdsa_key", check=False).returncode != 0
    assert len(set(known.values())) == 3, "the machines share a host key"


PLAYBOOK = """\
- name: Reach every machine
  hosts: all
  gather_facts: false
  tasks:
    - name: Ping (a Python module, run by the inventory's python3)
      ansible.builtin.ping:
    - name: Write a file (the kind of task the roles' file handling runs)
      ansible.builtin.copy:
        content: "{{ inventory_hostname }} {{ group_names | join(',') }}\\n"
        dest: /root/ansible-was-here
        mode: "0600"
"""


def test_the_inventory_runs_a_play_on_every_machine(fleet, tmp_path):
    """A play through the printed inventory, with the run's key and known_hosts (strict host key
    checking): what the roles' plays will use."""
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(machines("inventory").stdout)
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    (tmp_path / "ansible.cfg").write_text("# empty: the test sets everything through the environment\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "AWS_"))}
    env.update(
        PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        ANSIBLE_CONFIG=str(tmp_path / "ansible.cfg"),
        ANSIBLE_HOME=str(tmp_path / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="false",
        # No ControlPersist master left running after the test.
        ANSIBLE_SSH_ARGS="-o ControlMaster=no",
    )
    command = [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(tmp_path / "play.yml")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert proc.returncode == 0, f"the play failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "WARNING" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    recap = {line.split()[0]: line.split(":", 1)[1].split() for line in proc.stdout.split("PLAY RECAP", 1)[1].splitlines() if ":" in line}
    assert sorted(recap) == sorted(fleet.machines), proc.stdout
    for name, counts in recap.items():
        assert "failed=0" in counts and "unreachable=0" in counts and "ok=2" in counts, (name, counts)
    for m in fleet.machines.values():
        group = "ca" if m.role == "ca" else "nodes"
        assert run_in(m.name, "cat /root/ansible-was-here").stdout == f"{m.name} {group}\n"


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


def test_nodes_reach_each_others_sshd_and_nginx(fleet):
    node1, node2 = fleet.nodes
    for src, dst in ((node1, node2), (node2, node1)):
        ssh = probe(src.name, dst.addr, 22)
        assert ssh["ok"] and ssh["first_line"].startswith("SSH-2.0-"), f"{src.name} -> {dst.name}:22: {ssh}"
        http = probe(src.name, dst.addr, 80, http=True)
        assert http["ok"] and http["first_line"].startswith("HTTP/1.1 200"), f"{src.name} -> {dst.name}:80: {http}"


def test_nodes_reach_the_host_on_the_bridge(fleet):
    bridge_addr = fleet.state["bridge"]["host_addr"]
    with host_listener(bridge_addr) as server:
        port = server.server_address[1]
        for node in fleet.nodes:
            assert node.host_addr == bridge_addr
            result = probe(node.name, bridge_addr, port)
            assert result["ok"] and result["first_line"] == GREETING.decode().strip(), f"{node.name} -> host {bridge_addr}:{port}: {result}"
        assert sorted(server.peers) == sorted(n.addr for n in fleet.nodes)


def test_the_ca_reaches_the_host_on_its_own_link(fleet):
    ca = fleet.ca
    assert ca.host_addr != fleet.state["bridge"]["host_addr"]
    with host_listener(ca.host_addr) as server:
        port = server.server_address[1]
        result = probe(ca.name, ca.host_addr, port)
        assert result["ok"] and result["first_line"] == GREETING.decode().strip(), f"ca -> host {ca.host_addr}:{port}: {result}"
        assert server.peers == [ca.addr]


def only_link_routes(name: str, subnet: str) -> None:
    """The machine's routes: its link's subnet and nothing else; no default route in any table."""
    main = run_in(name, "ip -4 route show").stdout.strip().splitlines()
    assert len(main) == 1 and main[0].split()[:3] == [subnet, "dev", "eth0"], f"{name}: routes {main}"
    for family in ("-4", "-6"):
        every = run_in(name, f"ip {family} route show table all").stdout
        assert "default" not in every, f"{name}: a default route ({family}):\n{every}"


def test_the_ca_reaches_nothing_but_the_host_on_its_link(fleet):
    ca = fleet.ca
    only_link_routes(ca.name, ca.subnet)
    # Unreachable must mean no route (refused at once in the CA), not a timeout that could hide
    # something else.
    targets = [(n.addr, port) for n in fleet.nodes for port in (22, 80)]
    targets += [(fleet.state["bridge"]["host_addr"], 22), ("1.1.1.1", 443)] + [(addr, 22) for addr in host_outside_addrs()]
    for host, port in targets:
        result = probe(ca.name, host, port)
        assert not result["ok"], f"the CA reached {host}:{port}"
        assert result["errno"] == errno.ENETUNREACH, f"ca -> {host}:{port}: {result['error']} (expected network unreachable)"
        assert result["seconds"] < 1, result


def test_the_nodes_reach_neither_the_ca_nor_anything_outside(fleet):
    for node in fleet.nodes:
        only_link_routes(node.name, node.subnet)
        for host, port in [(fleet.ca.addr, 22), (fleet.ca.host_addr, 22), ("1.1.1.1", 443)] + [(addr, 22) for addr in host_outside_addrs()]:
            result = probe(node.name, host, port)
            assert not result["ok"] and result["errno"] == errno.ENETUNREACH, f"{node.name} -> {host}:{port}: {result}"
    # Even with net.ipv4.ip_forward=1 on the host, the host forwards nothing that arrives on the
    # machines' links.
    for dev in (fleet.state["bridge"]["name"], fleet.ca.veth):
        assert Path(f"/proc/sys/net/ipv4/conf/{dev}/forwarding").read_text().strip() == "0", dev


# --------------------------------------------------------------------------------------------
# Faults: a cut link, a machine powered off and booted again
# --------------------------------------------------------------------------------------------


def test_a_cut_link_isolates_the_machine_until_restored(fleet):
    node1, node2 = fleet.nodes
    machines("link", node2.name, "down")
    try:
        result = probe(node1.name, node2.addr, 22)
        assert not result["ok"], f"{node1.name} reached {node2.name} over a cut link"
    finally:
        machines("link", node2.name, "up")
    wait_for(lambda: probe(node1.name, node2.addr, 22)["ok"], timeout=30, interval=0.2, what=f"{node1.name} to reach {node2.name}:22 again")


# A unit whose stop leaves a mark: an orderly poweroff stops it, a power cut does not.
STOP_MARK_UNIT = """\
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/rm -f /root/stopped-in-order
ExecStop=/bin/touch /root/stopped-in-order
"""


def start_stop_mark_unit(name: str) -> None:
    run_in(name, "cat >/etc/systemd/system/fpm-stop-mark.service && systemctl daemon-reload && systemctl start fpm-stop-mark.service", stdin=STOP_MARK_UNIT)


def test_poweroff_and_start_keep_the_machines_disk(fleet):
    node1, node2 = fleet.nodes
    run_in(node2.name, "echo kept-across-reboot >/root/marker")
    start_stop_mark_unit(node2.name)
    machines("poweroff", node2.name)
    assert not alive(node2.pid, node2.start_times[node2.pid]), "systemd-nspawn of node2 still runs"
    assert not alive(node2.init_pid, node2.start_times[node2.init_pid]), "node2's systemd still runs"
    assert not probe(node1.name, node2.addr, 22)["ok"]
    machines("start", node2.name, timeout=UP_TIMEOUT)
    state = {m["name"]: m for m in load_state()["machines"]}[node2.name]
    for pid in (state["pid"], state["init_pid"]):
        SEEN_PIDS[pid] = proc_start_time(pid)
    assert run_in(node2.name, "cat /root/marker").stdout.strip() == "kept-across-reboot"
    assert state["init_pid"] != node2.init_pid and alive(state["init_pid"], SEEN_PIDS[state["init_pid"]]), state
    assert run_in(node2.name, "systemctl is-system-running", check=False).stdout.strip() == "running"
    assert probe(node1.name, node2.addr, 80, http=True)["ok"]
    # The poweroff was orderly: systemd stopped the machine's units.
    assert run_in(node2.name, "test -e /root/stopped-in-order", check=False).returncode == 0, "poweroff did not stop the units"


def test_hard_poweroff_is_a_power_cut(fleet):
    node1, node2 = fleet.nodes
    start_stop_mark_unit(node2.name)
    state = {m["name"]: m for m in load_state()["machines"]}[node2.name]  # this boot's PIDs
    machines("poweroff", "--hard", node2.name)
    assert not alive(state["pid"], SEEN_PIDS[state["pid"]]), "systemd-nspawn of node2 still runs"
    assert not alive(state["init_pid"], SEEN_PIDS[state["init_pid"]]), "node2's systemd still runs"
    assert not probe(node1.name, node2.addr, 22)["ok"]
    machines("start", node2.name, timeout=UP_TIMEOUT)
    state = {m["name"]: m for m in load_state()["machines"]}[node2.name]
    for pid in (state["pid"], state["init_pid"]):
        SEEN_PIDS[pid] = proc_start_time(pid)
    # Nothing was stopped: no unit's ExecStop ran. The machine boots as after any crash.
    assert run_in(node2.name, "test ! -e /root/stopped-in-order", check=False).returncode == 0, "--hard stopped the units in order"
    assert run_in(node2.name, "cat /root/marker").stdout.strip() == "kept-across-reboot"
    assert run_in(node2.name, "systemctl is-system-running", check=False).stdout.strip() == "running"


# --------------------------------------------------------------------------------------------
# Cleanup
# --------------------------------------------------------------------------------------------


def test_down_leaves_nothing(fleet):
    machines_dir = RUN_DIR.parent
    proc = machines("down", timeout=DOWN_TIMEOUT)
    clean = machines("check-clean", check=False)
    assert clean.returncode == 0, f"check-clean after down:\n{clean.stderr}\n(down said:\n{proc.stderr})"
    # The same facts, checked here without the script.
    assert [n for n in host_netns_names() if n.startswith(PREFIX)] == []
    assert [n for n in host_link_names() if n.startswith(PREFIX)] == []
    assert mounts_under(machines_dir) == []
    assert not RUN_DIR.exists()
    for hierarchy in ("", "unified/", "systemd/"):
        assert not Path(f"/sys/fs/cgroup/{hierarchy}{CGROUP_NAME}").exists(), hierarchy
    left = [pid for pid, start_time in SEEN_PIDS.items() if alive(pid, start_time)]
    assert SEEN_PIDS and left == [], f"processes of the machines left: {describe(left)}"
    # A second `down` has nothing to do and says so without failing.
    machines("down", timeout=DOWN_TIMEOUT)
