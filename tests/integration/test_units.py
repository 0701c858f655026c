"""The systemd units of the collection's roles:

- fleetpki.mtls.ca_worker with ca_worker_service: installs `mtls_ca_sign serve CONFIG.json` as a
  hardened service (its own user alone reads the CA key, the module's arguments as a 0600 JSON
  config); the files it writes run as a plain process and answer a CSR;
- fleetpki.mtls.mtls_client with mtls_client_timer: a timer and a service running the module
  binaries with JSON configs; the renewal script installs a certificate and reloads only on change.

The roles run for real (`ansible-playbook -i localhost, -c local`) with every path under the test's
directory and systemctl left alone (`*_manage: false`). The unit files are checked offline, since
these machines do not run systemd as PID 1: `systemd-analyze verify` (no warning at all) and
`systemd-analyze security --offline=true` (exposure at most the thresholds below). The sandbox is
also checked against what the binaries really do: run under strace, every system call, socket
family, W+X mapping and written path must be allowed by the rendered unit.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

import helpers
from helpers import REPO_ROOT, assert_ok, describe
from service_helpers import Service, binary_path, check_pair, write_config

COLLECTION = REPO_ROOT / "collection"
VENV_BIN = REPO_ROOT / ".venv" / "bin"
PLAYBOOK_TIMEOUT = 300

# The highest `systemd-analyze security` exposure accepted (0 = fully locked down, 10 = none).
CA_WORKER_MAX_EXPOSURE = 1.5
NODE_SERVICE_MAX_EXPOSURE = 2.5

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

def _require(tool: str | None, name: str, package: str):
    """These tests never skip: a missing tool fails them (.ci/run installs it)."""

    def check(function):
        import functools

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            assert tool, f"{name} is not installed: apt-get install {package} (.ci/run does)"
            return function(*args, **kwargs)

        return wrapper

    return check


needs_systemd_analyze = _require(SYSTEMD_ANALYZE, "systemd-analyze", "systemd")

ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(os.getgid()).gr_name


# --------------------------------------------------------------------------------------------
# Running the roles
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def collections_path(tmp_path_factory) -> Path:
    """ansible_collections/fleetpki/mtls holding a copy of the roles, the filter plugins they use
    and, as plugins/modules, the module binaries built in target/ (what the roles copy to the hosts)."""
    root = tmp_path_factory.mktemp("collections")
    dest = root / "ansible_collections" / "fleetpki" / "mtls"
    dest.mkdir(parents=True)
    shutil.copytree(COLLECTION / "roles", dest / "roles")
    shutil.copytree(COLLECTION / "meta", dest / "meta")
    shutil.copy(COLLECTION / "galaxy.yml", dest / "galaxy.yml")
    shutil.copytree(COLLECTION / "plugins" / "filter", dest / "plugins" / "filter")  # the roles' typo guard
    modules = dest / "plugins" / "modules"
    modules.mkdir(parents=True)
    for name in helpers.MODULES:
        (modules / name).symlink_to(binary_path(name))
    return root


@pytest.fixture
def ansible(collections_path, tmp_path):
    """ansible(playbook_text, extra_vars) -> CompletedProcess of ansible-playbook on localhost."""
    home = tmp_path / "ansible-home"
    home.mkdir()
    (home / "ansible.cfg").write_text("# empty\n", encoding="utf-8")
    env = helpers.base_env(home, collections_path)
    counter = {"n": 0}

    def run(playbook: str, extra_vars: dict) -> subprocess.CompletedProcess:
        counter["n"] += 1
        book = tmp_path / f"playbook-{counter['n']}.yml"
        book.write_text(playbook, encoding="utf-8")
        varfile = tmp_path / f"vars-{counter['n']}.json"
        varfile.write_text(json.dumps(dict(extra_vars, ansible_python_interpreter=sys.executable)), encoding="utf-8")
        proc = subprocess.run(
            [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e", f"@{varfile}", str(book)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            cwd=str(tmp_path),
            timeout=PLAYBOOK_TIMEOUT,
        )
        assert (
            proc.returncode == 0
        ), f"ansible-playbook failed (rc {proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
        return proc

    return run


def recap_changed(proc: subprocess.CompletedProcess) -> int:
    match = re.search(r"^localhost\s*:.*?changed=(\d+)", proc.stdout, re.M)
    assert match, f"no PLAY RECAP in:\n{proc.stdout[-3000:]}"
    return int(match.group(1))


def role_play(role: str, tasks_from: str | None = None) -> str:
    extra = f"\n        tasks_from: {tasks_from}" if tasks_from else ""
    return f"""---
- name: Run {role}
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Include the role
      ansible.builtin.include_role:
        name: fleetpki.mtls.{role}{extra}
"""


def render_play(role: str, templates: dict[str, str]) -> str:
    """Render templates of a role with the role's defaults (plus the extra vars): no other task."""
    defaults = COLLECTION / "roles" / role / "defaults" / "main.yml"
    items = "".join(
        f"\n        - {{src: {json.dumps(src)}, dest: {json.dumps(dest)}}}" for src, dest in templates.items()
    )
    return f"""---
- name: Render {role}'s templates with its defaults
  hosts: localhost
  gather_facts: false
  vars_files:
    - {defaults}
  tasks:
    - name: Render
      ansible.builtin.template:
        src: {COLLECTION / "roles" / role / "templates"}/{{{{ item.src }}}}
        dest: "{{{{ item.dest }}}}"
        mode: "0644"
      loop:{items}
"""


# --------------------------------------------------------------------------------------------
# Unit files: parsing and the offline checks
# --------------------------------------------------------------------------------------------


def unit_entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file in order (keys may repeat, as in systemd)."""
    out, section = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def unit_values(path: Path, key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in unit_entries(path) if s == section and k == key]


def unit_value(path: Path, key: str, section: str = "Service") -> str:
    values = unit_values(path, key, section)
    assert len(values) == 1, f"{path.name}: {key}= appears {len(values)} times: {values}"
    return values[0]


def verify(*units: Path) -> None:
    """`systemd-analyze verify`: exit 0 and not a single warning."""
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *map(str, units)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, SYSTEMD_LOG_COLOR="0"),
    )
    output = (proc.stdout + proc.stderr).strip()
    assert (
        proc.returncode == 0 and not output
    ), f"systemd-analyze verify {[u.name for u in units]} (rc {proc.returncode}):\n{output}"


def security_exposure(unit: Path) -> tuple[float, str]:
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(unit)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert (
        match
    ), f"no exposure level in systemd-analyze security output (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return float(match.group(1)), proc.stdout


def check_security(unit: Path, threshold: float, record_property) -> float:
    score, report = security_exposure(unit)
    record_property(f"exposure {unit.name}", score)
    print(f"systemd-analyze security --offline=true {unit.name}: {score}")
    open_items = "\n".join(line for line in report.splitlines() if line.startswith("✗"))
    assert score <= threshold, f"{unit.name}: exposure {score} > {threshold}; open items:\n{open_items}"
    return score


# --------------------------------------------------------------------------------------------
# The sandbox against what the binaries do (strace)
# --------------------------------------------------------------------------------------------


@cache
def syscall_groups() -> dict[str, list[str]]:
    text = subprocess.run(
        [SYSTEMD_ANALYZE, "syscall-filter", "--no-pager"], capture_output=True, text=True, timeout=60
    ).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif current and line.startswith("    ") and not line.strip().startswith("#"):
            groups[current].append(line.strip())
        elif not line.strip():
            current = None
    return groups


def expand(names: list[str]) -> set[str]:
    groups = syscall_groups()
    out: set[str] = set()
    for name in names:
        if name.startswith("@"):
            assert name in groups, f"unknown syscall group {name}"
            out |= expand(groups[name])
        else:
            out.add(name)
    return out


def allowed_syscalls(unit: Path) -> set[str]:
    """The allow list the unit's SystemCallFilter= lines make, applied in order as systemd does."""
    lines = unit_values(unit, "SystemCallFilter")
    assert lines and not lines[0].startswith("~"), f"{unit.name}: the first SystemCallFilter= must be an allow list"
    allowed: set[str] = set()
    for line in lines:
        if line.startswith("~"):
            allowed -= expand(line[1:].split())
        else:
            allowed |= expand(line.split())
    return allowed | expand(["@default"])


STRACE = shutil.which("strace")

WRITE_CALL = re.compile(
    r"^\d+\s+(openat|open|creat|mkdir|mkdirat|unlink|unlinkat|rename|renameat|renameat2|symlink|symlinkat|"
    r"link|linkat|chmod|fchmodat|chown|fchownat|lchown|truncate|rmdir|mknod|mknodat)\((.*)"
)


def traced(strace_log: Path) -> dict[str, object]:
    syscalls: set[str] = set()
    families: set[str] = set()
    wx: list[str] = []
    written: set[str] = set()
    for line in strace_log.read_text(errors="replace").splitlines():
        m = re.match(r"^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]", line)
        if not m or line.split()[1].startswith(("+++", "---")):
            continue
        name = m.group(1)
        syscalls.add(name)
        if name == "socket":
            fam = re.search(r"socket\((AF_[A-Z0-9]+)", line)
            if fam:
                families.add(fam.group(1))
        if name in ("mmap", "mprotect", "pkey_mprotect") and "PROT_WRITE" in line and "PROT_EXEC" in line:
            wx.append(line)
        w = WRITE_CALL.match(line)
        if w and "= -1" not in line:
            call, args = w.groups()
            if call in ("openat", "open") and not re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC", args):
                continue
            paths = re.findall(r'"([^"]*)"', args.split(") =")[0])
            if call in ("symlink", "symlinkat"):
                paths = paths[1:]  # the first is the link's content, not a path written
            written.update(paths)
    return {"syscalls": syscalls, "families": families, "wx": wx, "written": written}


def check_sandbox(unit: Path, strace_log: Path, cwd: Path) -> None:
    seen = traced(strace_log)
    allowed = allowed_syscalls(unit)
    denied = sorted(s for s in seen["syscalls"] if s not in allowed)
    assert not denied, f"{unit.name}: the binaries make system calls its SystemCallFilter= denies: {denied}"
    families = set(unit_value(unit, "RestrictAddressFamilies").split())
    assert seen["families"] <= families, f"{unit.name}: sockets of families {seen['families'] - families} are refused"
    if unit_values(unit, "MemoryDenyWriteExecute") == ["yes"]:
        assert not seen["wx"], f"{unit.name}: W+X mappings under MemoryDenyWriteExecute=yes: {seen['wx'][:3]}"
    if unit_values(unit, "ProtectSystem") == ["strict"]:
        writable = [Path(p) for v in unit_values(unit, "ReadWritePaths") for p in v.split()]
        writable += [Path("/dev"), Path("/proc"), Path("/sys")]
        bad = []
        for name in seen["written"]:
            p = Path(name) if os.path.isabs(name) else cwd / name
            if not any(p == w or w in p.parents for w in writable):
                bad.append(str(p))
        assert not bad, f"{unit.name}: writes outside ReadWritePaths= under ProtectSystem=strict: {sorted(bad)}"


# --------------------------------------------------------------------------------------------
# The CA worker service
# --------------------------------------------------------------------------------------------


def ca_worker_vars(tmp_path: Path, queues, sqs_server, ca) -> dict:
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    shutil.copy(ca.intermediate_cert_path, ca_dir / "intermediate.cert.pem")
    shutil.copy(ca.intermediate_privatekey_path, ca_dir / "intermediate.key.pem")
    shutil.copy(ca.chain_path, ca_dir / "chain.pem")
    (tmp_path / "units").mkdir(exist_ok=True)  # /etc/systemd/system exists on a real host
    return {
        "ca_worker_csr_queue_url": queues.csr,
        "ca_worker_ca_dir": str(ca_dir),
        "ca_worker_owner": ME,
        # The service's wiring is under test here, not who may send: the tests send as no node.
        "ca_worker_identity_proof": "none",
        "ca_worker_reply_queue_prefix": queues.reply_prefix,
        "ca_worker_shared_cert_queue_url": queues.shared,
        "ca_worker_aws_endpoint_url": sqs_server.endpoint,
        "ca_worker_aws_region": sqs_server.env["AWS_REGION"],
        "ca_worker_policy_extra_instances": [
            {"instance_id_pattern": "i-*", "dns_suffixes": [".fleet.internal"], "ip_networks": ["127.0.0.0/8"]}
        ],
        "ca_worker_drain": False,
        "ca_worker_crl": False,
        "ca_worker_service": True,
        # On this test machine: the test's own user, files under tmp_path, no systemctl.
        "ca_worker_service_user": ME,
        "ca_worker_service_group": MY_GROUP,
        "ca_worker_service_create_user": False,
        "ca_worker_service_manage": False,
        "ca_worker_service_binary_dir": str(tmp_path / "bin"),
        "ca_worker_service_unit_dir": str(tmp_path / "units"),
        "ca_worker_service_audit_log_path": str(tmp_path / "log" / "audit.jsonl"),
        "ca_worker_batch_size": 5,
        "ca_worker_concurrency": 4,
    }


def child_pids(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def start_unit(unit: Path, env: dict[str, str], strace_log: Path | None = None) -> Service:
    """Start a unit's ExecStart= as a plain process (these machines have no systemd as PID 1)."""
    argv = unit_value(unit, "ExecStart").split()
    assert Path(argv[0]).is_file() and os.access(argv[0], os.X_OK), f"ExecStart {argv[0]} is not an executable"
    if strace_log is not None:
        argv = [STRACE, "-f", "-qq", "-o", str(strace_log), *argv]
    return Service(argv, env=env, cwd=unit.parent)


@needs_systemd_analyze
def test_ca_worker_role_installs_a_hardened_service_that_serves(
    ansible, tmp_path, queues, sqs_server, ca, make_node, module_env, record_property
):
    variables = ca_worker_vars(tmp_path, queues, sqs_server, ca)
    first = ansible(role_play("ca_worker"), variables)
    assert recap_changed(first) > 0

    ca_dir = Path(variables["ca_worker_ca_dir"])
    binary = tmp_path / "bin" / "mtls_ca_sign"
    unit = tmp_path / "units" / "fleetpki-ca-worker.service"
    config = ca_dir / "service.json"

    # The binary is the collection's, executable.
    assert binary.read_bytes() == binary_path("mtls_ca_sign").read_bytes()
    assert stat.S_IMODE(binary.stat().st_mode) == 0o755
    # The config: the module's arguments, 0600, owned by the service's user; the policy is a file.
    st = config.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and pwd.getpwuid(st.st_uid).pw_name == ME
    args = json.loads(config.read_text())
    assert args == {
        "csr_queue_url": queues.csr,
        "ownca_path": str(ca_dir / "intermediate.cert.pem"),
        "ownca_privatekey_path": str(ca_dir / "intermediate.key.pem"),
        "ca_chain_path": str(ca_dir / "chain.pem"),
        "policy_path": str(ca_dir / "policy.json"),
        "reply_queue_prefix": queues.reply_prefix,
        "batch_size": 5,
        "concurrency": 4,
        "visibility_timeout": 60,
        "shared_cert_queue_url": queues.shared,
        "audit_log_path": str(tmp_path / "log" / "audit.jsonl"),
        "region": sqs_server.env["AWS_REGION"],
        "endpoint_url": sqs_server.endpoint,
    }, args
    # The CA key: the service's user alone reads it.
    key_stat = (ca_dir / "intermediate.key.pem").stat()
    assert stat.S_IMODE(key_stat.st_mode) == 0o400 and pwd.getpwuid(key_stat.st_uid).pw_name == ME
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((ca_dir / "policy.json").stat().st_mode) == 0o600

    # The unit: what it runs, as whom, and the sandbox.
    assert unit_value(unit, "ExecStart") == f"{binary} serve {config}"
    assert unit_value(unit, "User") == ME and unit_value(unit, "Group") == MY_GROUP
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "ReadWritePaths": str(tmp_path / "log"),
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "KillSignal": "SIGTERM",
    }
    for key, value in expected.items():
        assert unit_value(unit, key) == value, f"{key}= is {unit_value(unit, key)!r}, expected {value!r}"
    assert unit_values(unit, "SystemCallFilter") == ["@system-service", "~@privileged @resources"]
    assert unit_value(unit, "WantedBy", "Install") == "multi-user.target"
    verify(unit)

    # A second run changes nothing.
    assert recap_changed(ansible(role_play("ca_worker"), variables)) == 0

    # The files it wrote, started the way systemd would start them, answer a CSR.
    service = start_unit(unit, module_env)
    try:
        service.wait_for_stderr("serving ", timeout=30)
        node = make_node(1)
        assert_ok(*node.submit())
        result, proc = node.fetch(timeout=60)
        assert_ok(result, proc)
        assert result["status"] == "installed", describe(result, proc)
        check_pair(node.current)
        service.signal(signal.SIGTERM)
        assert service.wait_exit(timeout=30) == 0, service.describe()
    finally:
        service.stop()
    audit = [json.loads(line) for line in (tmp_path / "log" / "audit.jsonl").read_text().splitlines()]
    assert [line["decision"] for line in audit] == ["signed", "issued"], audit
    assert [line["decision"] for line in service.audit_lines()] == ["signed", "issued"]


@needs_systemd_analyze
def test_ca_worker_unit_with_the_role_defaults_verifies_and_is_locked_down(ansible, tmp_path, record_property):
    """The unit as the role writes it by default (user fleetpki-ca, paths under /etc and /var)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(binary_path("mtls_ca_sign"), bin_dir / "mtls_ca_sign")
    unit = tmp_path / "fleetpki-ca-worker.service"
    ansible(
        render_play("ca_worker", {"ca-worker.service.j2": str(unit)}),
        {
            "ca_worker_csr_queue_url": "https://sqs.eu-west-1.amazonaws.com/123456789012/fleetpki-csr",
            "ca_worker_service_binary_dir": str(bin_dir),
        },
    )
    assert unit_value(unit, "User") == "fleetpki-ca"
    assert unit_value(unit, "ExecStart") == f"{bin_dir}/mtls_ca_sign serve /etc/fleetpki/ca/service.json"
    assert unit_value(unit, "ReadWritePaths") == "/var/log/fleetpki-ca-worker"
    verify(unit)
    check_security(unit, CA_WORKER_MAX_EXPOSURE, record_property)


def test_ca_worker_service_is_off_by_default(ansible, tmp_path, queues, sqs_server, ca):
    variables = ca_worker_vars(tmp_path, queues, sqs_server, ca)
    for key in [k for k in variables if k.startswith("ca_worker_service")]:
        if key != "ca_worker_service_unit_dir" and key != "ca_worker_service_binary_dir":
            del variables[key]
    ansible(role_play("ca_worker"), variables)
    assert not any((tmp_path / "units").iterdir()) and not (tmp_path / "bin").exists()
    assert not (Path(variables["ca_worker_ca_dir"]) / "service.json").exists()


# --------------------------------------------------------------------------------------------
# The node's renewal timer
# --------------------------------------------------------------------------------------------


def timer_vars(tmp_path: Path, node, sqs_server, ca, marker: Path, **overrides) -> dict:
    variables = {
        "mtls_client_instance_id": node.instance_id,
        "mtls_client_csr_queue_url": node.queues.csr,
        "mtls_client_ca_cert_src": str(ca.root_cert_path),
        "mtls_client_ca_path": str(ca.root_cert_path),
        "mtls_client_subject_alt_name": node.sans,
        "mtls_client_path": str(node.path),
        "mtls_client_reply_queue_prefix": node.queues.reply_prefix,
        "mtls_client_aws_endpoint_url": sqs_server.endpoint,
        "mtls_client_aws_region": sqs_server.env["AWS_REGION"],
        "mtls_client_reload": "command",
        "mtls_client_reload_command": f"/bin/sh -c 'echo reloaded >> {marker}'",
        "mtls_client_timer": True,
        "mtls_client_timer_fetch_timeout": 60,
        "mtls_client_timer_bin_dir": str(tmp_path / "node-bin"),
        "mtls_client_timer_config_dir": str(tmp_path / "node-conf"),
        "mtls_client_timer_unit_dir": str(tmp_path / "node-units"),
        "mtls_client_timer_manage": False,
    }
    variables.update(overrides)
    (tmp_path / "node-units").mkdir(exist_ok=True)  # /etc/systemd/system exists on a real host
    return variables


@pytest.fixture
def running_worker(sign_args, module_env, tmp_path):
    service = Service(
        [str(binary_path("mtls_ca_sign")), "serve", str(write_config(tmp_path / "worker.json", sign_args()))],
        env=module_env,
    )
    service.wait_for_stderr("serving ", timeout=30)
    yield service
    service.stop()


def reload_count(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


@needs_systemd_analyze
def test_mtls_client_timer_renews_with_the_binaries_and_reloads_only_on_change(
    ansible, tmp_path, make_node, sqs_server, ca, module_env, running_worker, record_property
):
    node = make_node(1)
    marker = tmp_path / "reloads.log"
    variables = timer_vars(tmp_path, node, sqs_server, ca, marker)
    ansible(role_play("mtls_client", tasks_from="timer.yml"), variables)

    bin_dir, conf_dir, unit_dir = tmp_path / "node-bin", tmp_path / "node-conf", tmp_path / "node-units"
    service_unit, timer_unit = unit_dir / "fleetpki-renew.service", unit_dir / "fleetpki-renew.timer"
    script = bin_dir / "fleetpki-renew"
    for name in ("mtls_csr_submit", "mtls_cert_fetch"):
        assert (bin_dir / name).read_bytes() == binary_path(name).read_bytes()
        assert stat.S_IMODE((bin_dir / name).stat().st_mode) == 0o755
    assert stat.S_IMODE(conf_dir.stat().st_mode) == 0o700
    submit = json.loads((conf_dir / "submit.json").read_text())
    fetch = json.loads((conf_dir / "fetch.json").read_text())
    for name in ("submit.json", "fetch.json"):
        assert stat.S_IMODE((conf_dir / name).stat().st_mode) == 0o600
    assert "force" not in submit and submit["instance_id"] == node.instance_id and submit["renew_before"] == "33%"
    assert submit["subject_alt_name"] == node.sans and submit["endpoint_url"] == sqs_server.endpoint
    assert fetch["wait"] is True and fetch["timeout"] == 60 and fetch["ca_path"] == str(ca.root_cert_path)
    assert "lifetime_days" not in submit and "enrollment_secret" not in submit

    assert unit_value(service_unit, "ExecStart") == str(script)
    assert unit_value(service_unit, "Type") == "oneshot"
    assert unit_value(service_unit, "ReadWritePaths") == str(node.path)
    assert unit_value(service_unit, "CapabilityBoundingSet") == ""
    assert unit_value(timer_unit, "Unit", "Timer") == "fleetpki-renew.service"
    assert unit_value(timer_unit, "OnCalendar", "Timer") == "*-*-* 00/6:00:00"
    assert unit_value(timer_unit, "WantedBy", "Install") == "timers.target"
    verify(service_unit, timer_unit)
    check_security(service_unit, NODE_SERVICE_MAX_EXPOSURE, record_property)

    if shutil.which("shellcheck"):
        lint = subprocess.run(["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True, timeout=60)
        assert lint.returncode == 0, f"shellcheck {script.name}:\n{lint.stdout}{lint.stderr}"

    # What the timer starts, run as a plain process: the first run enrols and reloads once.
    def renew():
        return subprocess.run(
            [str(script)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=module_env,
            timeout=180,
            cwd=str(tmp_path),
        )

    first = renew()
    assert first.returncode == 0, f"{first.stdout}\n{first.stderr}"
    results = [json.loads(line) for line in first.stdout.splitlines() if line.startswith("{")]
    assert [r["changed"] for r in results] == [True, True], first.stdout
    assert results[0]["reason"] == "no_certificate" and results[1]["status"] == "installed", first.stdout
    assert reload_count(marker) == 1
    check_pair(node.current)
    # The next run: valid, nothing sent, nothing installed, no reload.
    second = renew()
    assert second.returncode == 0, f"{second.stdout}\n{second.stderr}"
    results = [json.loads(line) for line in second.stdout.splitlines() if line.startswith("{")]
    assert [r["changed"] for r in results] == [False, False], second.stdout
    assert results[0]["reason"] == "valid" and not results[0].get("sqs_calls"), second.stdout
    assert reload_count(marker) == 1
    # A failing module fails the run (the unit shows failed) and reloads nothing.
    (conf_dir / "fetch.json").write_text(json.dumps(dict(fetch, ca_path=str(tmp_path / "missing.pem"))))
    assert_ok(*node.submit(force=True))
    broken = renew()
    assert broken.returncode == 1, broken.stdout
    assert reload_count(marker) == 1


@needs_systemd_analyze
@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"mtls_client_owner": "www-data", "mtls_client_group": "www-data"},
        {"mtls_client_reload": "systemd", "mtls_client_reload_unit": "nginx.service"},
    ],
    ids=["files-root", "files-owned-by-service-user", "reload-systemd"],
)
def test_mtls_client_units_with_the_role_defaults_verify_and_are_locked_down(
    variant, ansible, tmp_path, record_property
):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "fleetpki-renew"
    script.write_text("#!/bin/sh\n", encoding="utf-8")
    script.chmod(0o755)
    units = {name: tmp_path / f"fleetpki-renew.{name}" for name in ("service", "timer")}
    ansible(
        render_play("mtls_client", {"renew.service.j2": str(units["service"]), "renew.timer.j2": str(units["timer"])}),
        {"mtls_client_instance_id": "i-0123456789abcdef0", "mtls_client_timer_bin_dir": str(bin_dir), **variant},
    )
    caps = unit_value(units["service"], "CapabilityBoundingSet")
    if "mtls_client_owner" in variant:
        assert caps == "CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER"
        assert unit_values(units["service"], "SystemCallFilter")[-1] == "@chown"
    else:
        assert caps == ""
    verify(units["service"], units["timer"])
    check_security(units["service"], NODE_SERVICE_MAX_EXPOSURE, record_property)


# --------------------------------------------------------------------------------------------
# The sandboxes against what the binaries really do
# --------------------------------------------------------------------------------------------


@needs_systemd_analyze
@_require(STRACE, "strace", "strace")
def test_the_sandboxes_allow_what_the_binaries_do(ansible, tmp_path, queues, sqs_server, ca, make_node, module_env):
    """Run the worker service and the node's renewal under strace and check every system call,
    socket family, W+X mapping and written path against the rendered units. The endpoint is
    named `localhost` so the name resolution path (nsswitch, /etc/hosts) is exercised too."""
    variables = ca_worker_vars(tmp_path, queues, sqs_server, ca)
    endpoint = sqs_server.endpoint.replace("127.0.0.1", "localhost")
    variables["ca_worker_aws_endpoint_url"] = endpoint
    ansible(role_play("ca_worker"), variables)
    ca_unit = tmp_path / "units" / "fleetpki-ca-worker.service"

    node = make_node(1)
    marker = tmp_path / "reloads.log"
    ansible(
        role_play("mtls_client", tasks_from="timer.yml"),
        timer_vars(tmp_path, node, sqs_server, ca, marker, mtls_client_aws_endpoint_url=endpoint),
    )
    node_unit = tmp_path / "node-units" / "fleetpki-renew.service"

    worker_trace, node_trace = tmp_path / "worker.strace", tmp_path / "node.strace"
    worker = start_unit(ca_unit, module_env, strace_log=worker_trace)
    try:
        worker.wait_for_stderr("serving ", timeout=60)
        argv = [STRACE, "-f", "-qq", "-o", str(node_trace), unit_value(node_unit, "ExecStart")]
        renew = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=module_env,
            timeout=180,
            cwd=str(tmp_path),
        )
        assert renew.returncode == 0, f"{renew.stdout}\n{renew.stderr}"
        assert reload_count(marker) == 1
        # SIGTERM to the worker itself (strace's child); strace exits with its status.
        tracees = child_pids(worker.pid)
        assert len(tracees) == 1, tracees
        os.kill(tracees[0], signal.SIGTERM)
        assert worker.wait_exit(timeout=30) == 0, worker.describe()
    finally:
        for pid in child_pids(worker.pid):  # our worker under strace, if still there
            os.kill(pid, signal.SIGKILL)
        worker.stop()
    # The reload command appends to the marker under tmp_path: not a path of the node's sandbox;
    # a real reload command that writes needs mtls_client_timer_service_options. Leave it out.
    node_log = node_trace.read_text(errors="replace").splitlines()
    node_trace.write_text("\n".join(line for line in node_log if str(marker) not in line) + "\n")
    check_sandbox(ca_unit, worker_trace, ca_unit.parent)
    check_sandbox(node_unit, node_trace, tmp_path)


@needs_systemd_analyze
def test_ca_worker_crl_refresh_units_verify_are_locked_down_and_keep_the_crl_current(ansible, tmp_path, record_property, ca):
    """With the service, a timer re-issues the CRL before its nextUpdate; the service it starts is
    sandboxed without network, and its config really drives mtls_ca_revoke."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(binary_path("mtls_ca_revoke"), bin_dir / "mtls_ca_revoke")
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    service, timer, config = tmp_path / "fleetpki-ca-worker-crl.service", tmp_path / "fleetpki-ca-worker-crl.timer", tmp_path / "crl.json"
    ansible(
        render_play("ca_worker", {"ca-crl.service.j2": str(service), "ca-crl.timer.j2": str(timer), "ca-crl.json.j2": str(config)}),
        {
            "ca_worker_csr_queue_url": "https://sqs.eu-west-1.amazonaws.com/123456789012/fleetpki-csr",
            "ca_worker_service_binary_dir": str(bin_dir),
            "ca_worker_ca_dir": str(ca_dir),
            "ca_worker_ownca_path": str(ca.intermediate_cert_path),
            "ca_worker_ownca_privatekey_path": str(ca.intermediate_privatekey_path),
            "ca_worker_ca_chain_path": str(ca.chain_path),
        },
    )
    assert unit_value(service, "ExecStart") == f"{bin_dir}/mtls_ca_revoke {ca_dir}/crl-refresh.json"
    assert unit_value(service, "Type") == "oneshot"
    assert unit_value(service, "PrivateNetwork") == "yes"
    assert unit_value(service, "ReadWritePaths") == str(ca_dir)
    assert unit_value(timer, "OnCalendar", "Timer") == "hourly"
    assert unit_value(timer, "Persistent", "Timer") == "true"
    # systemd-analyze wants the ExecStart path and the timer's unit beside each other.
    verify(service, timer)
    check_security(service, CA_WORKER_MAX_EXPOSURE, record_property)
    # The rendered configuration is the module's own arguments: running it issues the CRL, and
    # running it again while the CRL is current changes nothing.
    for expected in (True, False):
        proc = subprocess.run(
            [str(bin_dir / "mtls_ca_revoke"), str(config)], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
        result = json.loads(proc.stdout)
        assert result["failed"] is False, result
        assert result["changed"] is expected, result
    assert (ca_dir / "crl.pem").read_text().startswith("-----BEGIN X509 CRL-----")
