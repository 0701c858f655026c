#!/usr/bin/env python3
"""The SSH play: one task on 20 hosts reached over SSH on loopback, our module against ansible.builtin.ping.

Run with the project's venv (ansible-core):

    .venv/bin/python bench/ssh_play.py --out ssh.json

What it does (everything under one temporary directory, removed at the end unless --keep):

1. a private sshd (Debian's openssh-server, /usr/sbin/sshd) on a free 127.0.0.1 port with its own
   config, ed25519 host key, authorized_keys and pid file in the temporary directory; root logs in
   with a key generated for this run only. /etc/ssh and the system's sshd are never touched or
   started (sshd needs its privilege-separation directory /run/sshd: created if missing, removed
   at the end if this run created it). Stopped at the end: the SSH control masters are closed
   with `ssh -O exit`, then the recorded sshd PID gets SIGTERM.
2. the collection from the tarball in dist/ (`scripts/build-collection --no-cargo` makes it) is
   installed into the temporary directory (ANSIBLE_COLLECTIONS_PATH), ANSIBLE_HOME and the remote
   temporary directory are in it too; the user's ansible.cfg is not read.
3. an inventory of --hosts hosts (default 20) named fleet-node-NN, each `ansible_host: 127.0.0.1`,
   each with its own SSH ControlPath directory (so each is its own connection, as distinct hosts
   would be), and two one-task plays run with `ansible-playbook -f FORKS` (default 20):
     module: fleetpki.mtls.mtls_cert_fetch in check mode on a node with no pending request (it
             answers at once, without SQS: status no_request)
     ping:   ansible.builtin.ping in check mode (Python on the target: /usr/bin/python3)
   Each play runs --repeat times (default 3), the two alternating, in these modes:
     warm:    control masters are kept between runs (ControlPersist 300s; one ping play opens them
              first), so a run costs the task itself. Our module runs from the copy its action
              plugin cached on the host (one SSH command: check the copy's SHA-256, run it with
              the arguments on stdin); ping transfers its AnsiballZ file, chmods, runs Python,
              removes its temporary directory
     cold:    every run starts with no connection (fresh ControlPath directories; masters closed
              after the run), so a run also pays 20 SSH handshakes; module cache as in warm
     first:   warm, but every host's module cache is emptied before each module run: the first
              run of a release on a host (the binary is transferred, checked and cached)
     nocache: warm with fleetpki_mtls_module_cache=false: Ansible's standard path for binary
              modules (binary and args file transferred on every task), what every run cost
              before the cache
     warm-nc: warm without SSH compression (Ansible's default ssh_args have -C: on loopback,
              compressing a transfer is pure CPU cost; over a slow link it saves transfer time)
   Each host has its own remote_tmp (and so its own module cache), as distinct hosts would.
   The figure is the median wall time of ansible-playbook per play and mode, and the ratio
   module / ping. The acceptance wants the module play to cost no more than the ping play.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
SSHD = Path("/usr/sbin/sshd")
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
PRIVSEP_DIR = Path("/run/sshd")


def log(msg: str) -> None:
    print(f"[ssh-play {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, **kw)


class PrivateSshd:
    def __init__(self, base: Path):
        self.dir = base / "sshd"
        self.dir.mkdir(parents=True)
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.client_key = self.dir / "client_ed25519"
        self.created_privsep = False

    def start(self) -> None:
        if not (SSHD.is_file() and SFTP_SERVER.is_file()):
            raise SystemExit(f"{SSHD} or {SFTP_SERVER} missing: apt-get install -y openssh-server")
        host_key = self.dir / "ssh_host_ed25519_key"
        for key in (host_key, self.client_key):
            r = run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleetpki-bench", "-f", str(key)])
            if r.returncode != 0:
                raise SystemExit(f"ssh-keygen failed: {r.stderr}")
        authorized = self.dir / "authorized_keys"
        authorized.write_text(Path(f"{self.client_key}.pub").read_text(), encoding="utf-8")
        authorized.chmod(0o600)
        if not PRIVSEP_DIR.exists():
            PRIVSEP_DIR.mkdir(mode=0o755)
            self.created_privsep = True
        config = self.dir / "sshd_config"
        last_error = ""
        for _attempt in range(3):
            self.port = free_port()
            config.write_text(
                "\n".join(
                    [
                        f"Port {self.port}",
                        "ListenAddress 127.0.0.1",
                        f"HostKey {host_key}",
                        f"PidFile {self.dir / 'sshd.pid'}",
                        f"AuthorizedKeysFile {authorized}",
                        "PermitRootLogin prohibit-password",
                        "PubkeyAuthentication yes",
                        "PasswordAuthentication no",
                        "KbdInteractiveAuthentication no",
                        "UsePAM no",
                        "StrictModes no",
                        "X11Forwarding no",
                        "PrintMotd no",
                        "AcceptEnv LANG LC_*",
                        # 20 forks open 20 connections at once: sshd's defaults (MaxStartups 10:30:100)
                        # would drop some of them.
                        "MaxStartups 200",
                        "MaxSessions 50",
                        f"Subsystem sftp {SFTP_SERVER}",
                        "LogLevel ERROR",
                        "",
                    ]
                ),
                encoding="utf-8",
            )
            check = run([str(SSHD), "-t", "-f", str(config)])
            if check.returncode != 0:
                raise SystemExit(f"sshd -t rejected {config}: {check.stderr}")
            # sshd gets its own copy of the log's descriptor; ours is closed once it has started.
            with open(self.dir / "sshd.log", "ab") as sshd_log:
                self.proc = subprocess.Popen(
                    [str(SSHD), "-D", "-e", "-f", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=sshd_log,
                    stderr=subprocess.STDOUT,
                )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                        if s.recv(64).startswith(b"SSH-"):
                            log(f"sshd pid {self.proc.pid} on 127.0.0.1:{self.port}")
                            return
                except OSError as exc:
                    last_error = str(exc)
                time.sleep(0.1)
            if self.proc.poll() is None:
                self.proc.terminate()
                self.proc.wait(10)
            last_error = (self.dir / "sshd.log").read_text(errors="replace")[-500:] or last_error
        raise SystemExit(f"private sshd did not start: {last_error}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            log(f"stopping sshd pid {self.proc.pid}")
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.created_privsep:
            try:
                PRIVSEP_DIR.rmdir()
            except OSError:
                pass


def close_masters(control_root: Path) -> None:
    """Ends the SSH control masters (our ssh client processes) whose sockets are under control_root."""
    if not control_root.exists():
        return
    for sock in sorted(control_root.rglob("*")):
        if sock.is_socket():
            run(["ssh", "-O", "exit", "-o", f"ControlPath={sock}", "fleetpki-bench"], timeout=15)


def write_inventory(path: Path, hosts: int, port: int, key: Path, control_root: Path, base: Path) -> None:
    lines = ["[fleet]"]
    for i in range(hosts):
        lines.append(f"fleet-node-{i:02d} instance_id=i-{0x0F1EE7000000000 + i:017x}")
    lines += [
        "",
        "[fleet:vars]",
        "ansible_host=127.0.0.1",
        f"ansible_port={port}",
        "ansible_user=root",
        f"ansible_ssh_private_key_file={key}",
        "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes -o LogLevel=ERROR'",
        # One ControlPath directory per host: Ansible's default control path hashes host, port and
        # user, which are the same for all of these, and would multiplex them on one connection.
        f"ansible_control_path_dir={control_root}/{{{{ inventory_hostname }}}}",
        # Per host, as on distinct hosts: each has its own module cache under it.
        f"ansible_remote_tmp={base}/remote-tmp/{{{{ inventory_hostname }}}}",
        "ansible_python_interpreter=/usr/bin/python3",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


PLAYS = {
    "module": """- name: our module in check mode
  hosts: fleet
  gather_facts: false
  tasks:
    - name: "{module} in check mode"
      fleetpki.mtls.{module}:
{options}
      check_mode: true
""",
    "ping": """- name: ansible.builtin.ping in check mode
  hosts: fleet
  gather_facts: false
  tasks:
    - name: ping
      ansible.builtin.ping:
      check_mode: true
""",
}

MODULE_OPTIONS = {
    "mtls_cert_fetch": {
        "instance_id": "{{ instance_id }}",
        "path": "{{ bench_dir }}/hosts/{{ inventory_hostname }}/pki",
        "ca_path": "{{ bench_dir }}/hosts/ca.pem",
    },
    "mtls_ca_init": {
        "root_cert_path": "{{ bench_dir }}/hosts/{{ inventory_hostname }}/ca/root.pem",
        "root_privatekey_path": "{{ bench_dir }}/hosts/{{ inventory_hostname }}/ca/root.key",
        "intermediate_cert_path": "{{ bench_dir }}/hosts/{{ inventory_hostname }}/ca/intermediate.pem",
        "intermediate_privatekey_path": "{{ bench_dir }}/hosts/{{ inventory_hostname }}/ca/intermediate.key",
        "chain_path": "{{ bench_dir }}/hosts/{{ inventory_hostname }}/ca/chain.pem",
    },
    "mtls_csr_submit": {
        "instance_id": "{{ instance_id }}",
        "path": "{{ bench_dir }}/hosts/{{ inventory_hostname }}/pki",
        "csr_queue_url": "http://127.0.0.1:9/123456789012/fleetpki-csr",
        "subject_alt_name": ["DNS:{{ instance_id }}.fleet.internal"],
    },
}


def play_text(kind: str, module: str) -> str:
    if kind == "ping":
        return PLAYS["ping"]
    options = "\n".join(f"        {k}: {json.dumps(v)}" for k, v in MODULE_OPTIONS[module].items())
    return PLAYS["module"].format(module=module, options=options)


def run_play(playbook: Path, inventory: Path, env: dict[str, str], forks: int, hosts: int, extra: dict[str, str]) -> tuple[float, dict[str, Any]]:
    cmd = [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), "-f", str(forks), str(playbook)]
    for k, v in extra.items():
        cmd += ["-e", f"{k}={v}"]
    started = time.monotonic()
    proc = run(cmd, timeout=600, env=env, cwd=str(playbook.parent))
    wall = time.monotonic() - started
    # PLAY RECAP lines: "fleet-node-00 : ok=1 changed=0 unreachable=0 failed=0 skipped=0 ..."
    recap = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", line)
        if m:
            recap[m.group(1)] = tuple(int(x) for x in m.groups()[1:])
    ok = sum(1 for v in recap.values() if v[0] == 1 and v[2] == 0 and v[3] == 0)
    if proc.returncode != 0 or ok != hosts:
        raise SystemExit(f"{playbook.name}: rc {proc.returncode}, {ok}/{hosts} hosts ok\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    changed = sum(v[1] for v in recap.values())
    return wall, {"hosts_ok": ok, "hosts_changed": changed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--forks", "-f", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--module", choices=sorted(MODULE_OPTIONS), default="mtls_cert_fetch")
    parser.add_argument(
        "--modes", default="warm,cold,first,nocache", help="comma-separated: warm, cold, first, nocache, warm-nc (default warm,cold,first,nocache)"
    )
    parser.add_argument("--tarball", type=Path, help="collection tarball (default: the newest dist/fleetpki-mtls-*.tar.gz)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in ("warm", "cold", "first", "nocache", "warm-nc") for m in modes) or args.repeat < 1 or args.hosts < 1:
        parser.error("bad --modes, --repeat or --hosts")

    tarball = args.tarball
    if tarball is None:
        found = sorted((REPO_ROOT / "dist").glob("fleetpki-mtls-*.tar.gz"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise SystemExit("no dist/fleetpki-mtls-*.tar.gz: run scripts/build-collection --no-cargo first")
        tarball = found[-1]

    base = Path(tempfile.mkdtemp(prefix="fleetpki-ssh-play-"))
    sshd = PrivateSshd(base)
    control_roots: list[Path] = []
    result: dict[str, Any] = {
        "benchmark": "ssh_play",
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hosts": args.hosts,
        "forks": args.forks,
        "repeat": args.repeat,
        "module": f"fleetpki.mtls.{args.module}",
        "tarball": str(tarball.relative_to(REPO_ROOT) if tarball.is_relative_to(REPO_ROOT) else tarball),
        "tarball_bytes": tarball.stat().st_size,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        # The collection, installed from the tarball into the temporary directory.
        collections = base / "collections"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "AWS_"))}
        env.update(
            {
                "ANSIBLE_CONFIG": str(base / "ansible.cfg"),
                "ANSIBLE_HOME": str(base / "ansible-home"),
                "ANSIBLE_COLLECTIONS_PATH": str(collections),
                "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default",
                "ANSIBLE_HOST_KEY_CHECKING": "False",
                "ANSIBLE_RETRY_FILES_ENABLED": "False",
                "ANSIBLE_NOCOLOR": "1",
                "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
            }
        )
        (base / "ansible.cfg").write_text("[defaults]\n", encoding="utf-8")
        r = run([str(VENV_BIN / "ansible-galaxy"), "collection", "install", "--force", "-p", str(collections), str(tarball)], env=env)
        if r.returncode != 0:
            raise SystemExit(f"ansible-galaxy collection install failed: {r.stdout}{r.stderr}")
        installed_binary = collections / "ansible_collections" / "fleetpki" / "mtls" / "plugins" / "modules" / args.module
        result["module_binary_bytes"] = installed_binary.stat().st_size
        log(f"installed {tarball.name}; {args.module} is {result['module_binary_bytes']} bytes")
        (base / "hosts").mkdir()
        (base / "hosts" / "ca.pem").write_text("", encoding="utf-8")

        sshd.start()
        result["sshd"] = {"port": sshd.port, "version": run(["ssh", "-V"]).stderr.strip()}
        plays = {}
        for kind in ("module", "ping"):
            plays[kind] = base / f"{kind}.yml"
            plays[kind].write_text(play_text(kind, args.module), encoding="utf-8")
        extra = {"bench_dir": str(base)}

        result["modes"] = {}
        for mode in modes:
            timings: dict[str, list[float]] = {"module": [], "ping": []}
            samples = {}
            if mode in ("warm", "warm-nc", "first", "nocache"):
                control_root = base / f"cp-{mode}"
                control_roots.append(control_root)
                inventory = base / f"inventory-{mode}.ini"
                write_inventory(inventory, args.hosts, sshd.port, sshd.client_key, control_root, base)
                for i in range(args.hosts):
                    (control_root / f"fleet-node-{i:02d}").mkdir(parents=True, exist_ok=True)
                compress = "" if mode == "warm-nc" else "-C "
                mode_env = dict(env, ANSIBLE_SSH_ARGS=f"{compress}-o ControlMaster=auto -o ControlPersist=300s")
                run_play(plays["ping"], inventory, mode_env, args.forks, args.hosts, extra)  # opens the masters
            for rep in range(args.repeat):
                order = ("module", "ping") if rep % 2 == 0 else ("ping", "module")
                for kind in order:
                    if mode == "cold":
                        control_root = base / f"cp-cold-{rep}-{kind}"
                        control_roots.append(control_root)
                        inventory = base / f"inventory-cold-{rep}-{kind}.ini"
                        write_inventory(inventory, args.hosts, sshd.port, sshd.client_key, control_root, base)
                        for i in range(args.hosts):
                            (control_root / f"fleet-node-{i:02d}").mkdir(parents=True, exist_ok=True)
                        mode_env = dict(env)  # Ansible's default ssh_args (ControlPersist 60s)
                    play_extra = dict(extra)
                    if kind == "module" and mode == "first":
                        for cache in (base / "remote-tmp").glob("*/fleetpki.mtls-modules"):
                            shutil.rmtree(cache)
                    if kind == "module" and mode == "nocache":
                        play_extra["fleetpki_mtls_module_cache"] = "false"
                    wall, sample = run_play(plays[kind], inventory, mode_env, args.forks, args.hosts, play_extra)
                    samples[kind] = sample
                    timings[kind].append(round(wall, 3))
                    log(f"{mode} {kind} run {rep + 1}: {wall:.2f} s")
                    if mode == "cold":
                        close_masters(control_root)
            med = {k: round(statistics.median(v), 3) for k, v in timings.items()}
            low = {k: min(v) for k, v in timings.items()}
            result["modes"][mode] = {
                "runs_seconds": timings,
                "median_seconds": med,
                "ratio_module_to_ping": round(med["module"] / med["ping"], 3),
                # The fastest run is the least disturbed by other load on the machine.
                "min_seconds": low,
                "ratio_of_min_module_to_ping": round(low["module"] / low["ping"], 3),
                "sample_results": samples,
            }
        result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        for root in control_roots:
            close_masters(root)
        sshd.stop()
        if args.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)

    print(f"\nSSH play: {args.hosts} hosts on 127.0.0.1 over SSH, -f {args.forks}, {args.repeat} runs each, median wall time of ansible-playbook")
    print(f"{'mode':<8} {'module play s':>14} {'ping play s':>12} {'ratio':>6} {'ratio of fastest':>17}  runs (module | ping)")
    for mode, m in result["modes"].items():
        print(
            f"{mode:<8} {m['median_seconds']['module']:>14.2f} {m['median_seconds']['ping']:>12.2f} {m['ratio_module_to_ping']:>6.2f} "
            f"{m['ratio_of_min_module_to_ping']:>17.2f}  "
            f"{m['runs_seconds']['module']} | {m['runs_seconds']['ping']}"
        )
    print(f"module: {result['module']} ({result['module_binary_bytes']} bytes), check mode")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
