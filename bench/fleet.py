#!/usr/bin/env python3
"""Fleet benchmark: N simulated nodes enrol through the real module binaries and a local SQS server.

Run with the project's venv:

    .venv/bin/python bench/fleet.py --nodes 100 --engine local-aws-sqs --out results.json
    .venv/bin/python bench/fleet.py --nodes 200 --engine moto --out moto-200.json

What it does (all on 127.0.0.1, everything under one temporary directory that is removed at the end
unless --keep):

1. starts its own SQS server with `scripts/sqs-server --engine ENGINE start` (stopped at the end);
2. makes a CA with `mtls_ca_init` (ECC P-256 root + intermediate) and writes a permissive signing
   policy (identity_proof none, instance_id_pattern "i-*", dns_suffixes [".fleet.internal"],
   ip_networks ["127.0.0.0/8"]);
3. gives each node an instance id (i-%017x) and its own install directory;
4. phase `submit`: `mtls_csr_submit` on every node, at most --forks at a time (like Ansible's forks);
5. phase `sign`: `mtls_ca_sign` drains the CSR queue (--workers copies in parallel, default 1);
6. phase `fetch`: `mtls_cert_fetch` (wait true, timeout --fetch-timeout, default 60) on every node,
   --forks at a time;
7. checks every node's installed certificate: `openssl verify -CAfile root -untrusted chain`
   (leaf against the pinned root through the intermediate it received), the leaf's public key equals
   the node's installed private key's, and its SANs are the node's names.

Each binary is run directly, `BINARY ARGS_FILE` with stdin closed, on an args file holding exactly what
Ansible 2.19 writes for the task (the options plus its `_ansible_*` keys). Ansible would in addition
copy the binary and the args file to the host per task (see the SSH play, bench/ssh_play.py).

SQS calls are the `sqs_calls` every module returns (operation -> count; queue creation, empty polls,
lookups and hand-backs included), summed per phase. The benchmark's own calls (creating the three
queues at server start, the final queue-depth check) are not module calls and are not counted.
The SQS server's own CPU (from /proc/PID/stat) is taken per phase, and per call.

N=100,000 is a command of its own (about 20 minutes here; not part of any test run):

    .venv/bin/python bench/fleet.py --nodes 100000 --engine local-aws-sqs --out fleet-100000.json
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = REPO_ROOT / "target" / "x86_64-unknown-linux-gnu" / "release"
SQS_SERVER = REPO_ROOT / "scripts" / "sqs-server"
COLLECTION = "fleetpki.mtls"
SQS_ENV_KEYS = ("AWS_ENDPOINT_URL_SQS", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_EC2_METADATA_DISABLED")

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import sqs_admin  # noqa: E402  (scripts/sqs_admin.py)

# What Ansible 2.19 puts in every args file besides the task's options; the same set as
# tests/integration/helpers.py.
ANSIBLE_INTERNAL_ARGS = {
    "_ansible_no_log": False,
    "_ansible_debug": False,
    "_ansible_verbosity": 0,
    "_ansible_version": "2.19.14",
    "_ansible_keep_remote_files": False,
    "_ansible_selinux_special_fs": ["fuse", "nfs", "vboxsf", "ramfs", "9p", "vfat"],
    "_ansible_syslog_facility": "LOG_USER",
    "_ansible_shell_executable": "/bin/sh",
    "_ansible_ignore_unknown_opts": False,
    "_ansible_tracebacks_for": [],
    "_ansible_check_mode": False,
    "_ansible_diff": False,
}

POLICY = {
    "identity_proof": "none",
    "max_lifetime_days": 30,
    "default_lifetime_days": 30,
    "instances": [
        {"instance_id_pattern": "i-*", "dns_suffixes": [".fleet.internal"], "ip_networks": ["127.0.0.0/8"]},
    ],
}


def log(msg: str) -> None:
    print(f"[fleet {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Running the binaries
# --------------------------------------------------------------------------------------------


def ca_init_options(directory: Path) -> dict[str, str]:
    """mtls_ca_init's options for a root and an intermediate made in `directory`."""
    return {
        "root_cert_path": str(directory / "root.pem"),
        "root_privatekey_path": str(directory / "root.key"),
        "intermediate_cert_path": str(directory / "intermediate.pem"),
        "intermediate_privatekey_path": str(directory / "intermediate.key"),
        "chain_path": str(directory / "chain.pem"),
    }


def write_args(path: Path, module: str, options: dict[str, Any], check: bool = False) -> Path:
    data = dict(ANSIBLE_INTERNAL_ARGS)
    data["_ansible_check_mode"] = check
    data["_ansible_module_name"] = f"{COLLECTION}.{module}"
    data.update(options)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


def module_env(sqs_env: dict[str, str]) -> dict[str, str]:
    """Our environment without any AWS_* setting or profile file of the user, plus the local server's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = "/nonexistent/fleetpki-bench/aws-config"
    env["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent/fleetpki-bench/aws-credentials"
    env.update(sqs_env)
    return env


def run_binary(module: str, args_file: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Runs BIN_DIR/module ARGS_FILE as Ansible does (stdin closed, one argument); returns the
    module's JSON result plus `_elapsed` (wall s), `_cpu` (user + system CPU s of the process,
    from wait4), `_maxrss_kb` and `_rc`."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(BIN_DIR / module), str(args_file)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=str(args_file.parent),
    )
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()))
    reader.start()
    stdout = proc.stdout.read()
    reader.join()
    # Reap it ourselves: wait4 gives this process's own resource usage.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    timer.cancel()
    proc.stdout.close()
    proc.stderr.close()
    elapsed = time.monotonic() - started
    extra = {"_elapsed": elapsed, "_cpu": usage.ru_utime + usage.ru_stime, "_maxrss_kb": usage.ru_maxrss, "_rc": proc.returncode}
    if killed.is_set():
        return {"failed": True, "msg": f"{module} killed after {timeout}s", "_killed": True, **extra}
    out, err = stdout.decode("utf-8", "replace"), (stderr[0] if stderr else b"").decode("utf-8", "replace")
    try:
        result = json.loads(out)
        if not isinstance(result, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        result = {"failed": True, "msg": f"{module}: stdout is not one JSON object ({exc}): {out[:500]!r} stderr: {err[-1000:]!r}"}
    result.update(extra)
    return result


# --------------------------------------------------------------------------------------------
# The fleet
# --------------------------------------------------------------------------------------------


class Node:
    def __init__(self, n: int, base: Path, instance_base: int):
        self.n = n
        self.instance_id = f"i-{instance_base + n:017x}"
        self.dir = base / "nodes" / self.instance_id
        self.path = self.dir / "pki"
        self.dns = f"{self.instance_id}.fleet.internal"
        self.sans = [f"DNS:{self.dns}", "IP:127.0.0.1"]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def summarize_runs(name: str, results: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    calls: Counter[str] = Counter()
    for r in results:
        for op, count in (r.get("sqs_calls") or {}).items():
            if op != "total":  # the modules add their own sum
                calls[op] += int(count)
    elapsed = [r["_elapsed"] for r in results]
    cpu = [r.get("_cpu", 0.0) for r in results]
    rss = [r.get("_maxrss_kb", 0) for r in results]
    failures = [r for r in results if r.get("failed")]
    return {
        "phase": name,
        "wall_seconds": round(wall, 3),
        "module_runs": len(results),
        "failed_runs": len(failures),
        "failure_messages": sorted({str(r.get("msg", ""))[:300] for r in failures})[:10],
        "sqs_calls": dict(sorted(calls.items())),
        "sqs_calls_total": sum(calls.values()),
        "run_seconds_p50": round(percentile(elapsed, 0.5), 4),
        "run_seconds_p95": round(percentile(elapsed, 0.95), 4),
        "run_seconds_max": round(max(elapsed, default=0.0), 4),
        "cpu_seconds": round(sum(cpu), 3),
        "run_cpu_seconds_p50": round(percentile(cpu, 0.5), 4),
        "run_max_rss_kb_p50": int(percentile([float(x) for x in rss], 0.5)),
    }


def run_phase(name: str, jobs: list[tuple[str, Path]], env: dict[str, str], forks: int, timeout: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Runs (module, args_file) jobs with at most `forks` at a time; results in job order."""
    log(f"phase {name}: {len(jobs)} run(s), {forks} at a time")
    started = time.monotonic()
    server_before = server_cpu_seconds()
    with cf.ThreadPoolExecutor(max_workers=max(1, forks)) as pool:
        results = list(pool.map(lambda job: run_binary(job[0], job[1], env, timeout), jobs))
    wall = time.monotonic() - started
    summary = summarize_runs(name, results, wall)
    if server_before is not None and (server_after := server_cpu_seconds()) is not None:
        server = server_after - server_before
        summary["server_cpu_seconds"] = round(server, 3)
        calls = summary["sqs_calls_total"]
        summary["server_cpu_ms_per_call"] = round(1000 * server / calls, 4) if calls else None
    log(f"phase {name}: {wall:.2f} s, {summary['sqs_calls_total']} SQS calls, {summary['failed_runs']} failed")
    return summary, results


# The SQS server's PID while a benchmark runs (its CPU is counted per phase).
SERVER_PID: int | None = None


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds() -> float | None:
    """User + system CPU seconds of the SQS server so far (None when it is not known)."""
    if SERVER_PID is None:
        return None
    try:
        return process_cpu_seconds(SERVER_PID)
    except OSError:
        return None


def verify_node(node: Node, root: Path) -> tuple[bool, str]:
    """openssl verify of the installed leaf (pinned root, received chain), key match, names."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    current = node.path / "current"
    cert_file, chain_file, key_file = current / "cert.pem", current / "chain.pem", current / "privkey.pem"
    if not cert_file.is_file():
        return False, "no certificate installed"
    proc = subprocess.run(
        ["openssl", "verify", "-CAfile", str(root), "-untrusted", str(chain_file), "-purpose", "sslclient", str(cert_file)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    if proc.returncode != 0 or not proc.stdout.strip().endswith(": OK"):
        return False, f"openssl verify: {proc.stdout.strip()} {proc.stderr.strip()}"
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(serialization.Encoding.DER, spki) != key.public_key().public_bytes(serialization.Encoding.DER, spki):
        return False, "the certificate is not for the installed key"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if node.dns not in san.get_values_for_type(x509.DNSName):
        return False, f"DNS name {node.dns} missing from the SANs"
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if not cn or cn[0].value != node.instance_id:
        return False, f"CN is not {node.instance_id}"
    return True, ""


def start_sqs(engine: str, directory: Path, receive: str) -> dict[str, str]:
    proc = subprocess.run(
        [str(SQS_SERVER), "--engine", engine, "start", str(directory)],
        env={**os.environ, "LOCAL_AWS_SQS_RECEIVE": receive},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if proc.returncode != 0:
        raise SystemExit(f"scripts/sqs-server start failed (rc {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    values: dict[str, str] = {}
    for line in (directory / "sqs.env").read_text(encoding="utf-8").splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            words = shlex.split(value)
            values[key] = words[0] if words else ""
    return values


def stop_sqs(directory: Path) -> None:
    proc = subprocess.run([str(SQS_SERVER), "stop", str(directory)], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        log(f"scripts/sqs-server stop failed: {proc.stdout}{proc.stderr}")


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def binaries_info() -> dict[str, Any]:
    out = {}
    for name in ("mtls_ca_init", "mtls_csr_submit", "mtls_ca_sign", "mtls_cert_fetch"):
        p = BIN_DIR / name
        if p.exists():
            st = p.stat()
            out[name] = {"bytes": st.st_size, "mtime": dt.datetime.fromtimestamp(st.st_mtime, dt.UTC).isoformat(timespec="seconds")}
    return out


def bench(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    for name in ("mtls_ca_init", "mtls_csr_submit", "mtls_ca_sign", "mtls_cert_fetch"):
        if not os.access(BIN_DIR / name, os.X_OK):
            raise SystemExit(f"{BIN_DIR / name} is missing: build the binaries with scripts/build first")
    result: dict[str, Any] = {
        "benchmark": "fleet",
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nodes": args.nodes,
        "engine": args.engine,
        "receive_semantics": args.receive if args.engine == "local-aws-sqs" else "moto",
        "forks": args.forks,
        "workers": args.workers,
        "fetch_timeout": args.fetch_timeout,
        "machine": machine_info(),
        "binaries": binaries_info(),
    }
    sqs_dir = base / "sqs"
    log(f"starting {args.engine} in {sqs_dir}")
    sqs_values = start_sqs(args.engine, sqs_dir, args.receive)
    try:
        global SERVER_PID
        SERVER_PID = int((sqs_dir / "sqs.pid").read_text())
        env = module_env({k: sqs_values[k] for k in SQS_ENV_KEYS})
        csr_queue = sqs_values["FLEETPKI_CSR_QUEUE_URL"]
        dlq = sqs_values["FLEETPKI_CSR_DLQ_URL"]
        result["endpoint"] = sqs_values["AWS_ENDPOINT_URL_SQS"]

        # The CA.
        ca = base / "ca"
        ca_opts = ca_init_options(ca)
        init = run_binary("mtls_ca_init", write_args(ca / "args" / "mtls_ca_init.json", "mtls_ca_init", ca_opts), env, 60)
        if init.get("failed"):
            raise SystemExit(f"mtls_ca_init failed: {init}")
        policy_path = ca / "policy.json"
        policy_path.write_text(json.dumps(POLICY, indent=2), encoding="utf-8")

        nodes = [Node(n, base, args.instance_base) for n in range(args.nodes)]
        submit_jobs, fetch_jobs = [], []
        for node in nodes:
            submit_jobs.append(("mtls_csr_submit", write_args(node.dir / "args" / "submit.json", "mtls_csr_submit", {
                "instance_id": node.instance_id,
                "path": str(node.path),
                "csr_queue_url": csr_queue,
                "subject_alt_name": node.sans,
            })))
            fetch_jobs.append(("mtls_cert_fetch", write_args(node.dir / "args" / "fetch.json", "mtls_cert_fetch", {
                "instance_id": node.instance_id,
                "path": str(node.path),
                "ca_path": ca_opts["root_cert_path"],
                "wait": True,
                "timeout": args.fetch_timeout,
            })))
        sign_opts = {
            "csr_queue_url": csr_queue,
            "ownca_path": ca_opts["intermediate_cert_path"],
            "ownca_privatekey_path": ca_opts["intermediate_privatekey_path"],
            "ca_chain_path": ca_opts["chain_path"],
            "policy_path": str(policy_path),
            "audit_log_path": str(ca / "issuance.jsonl"),
        }
        sign_jobs = [("mtls_ca_sign", write_args(ca / "args" / f"sign-{w}.json", "mtls_ca_sign", sign_opts)) for w in range(args.workers)]

        phases = []
        submit, _ = run_phase("submit", submit_jobs, env, args.forks, 120)
        phases.append(submit)
        sign, sign_results = run_phase("sign", sign_jobs, env, args.workers, args.sign_timeout)
        sign["issued"] = sum(int(r.get("issued") or 0) for r in sign_results)
        sign["rejected"] = sum(int(r.get("rejected") or 0) for r in sign_results)
        sign["dead_lettered"] = sum(int(r.get("dead_lettered") or 0) for r in sign_results)
        sign["left_for_retry"] = sum(int(r.get("left_for_retry") or 0) for r in sign_results)
        sign["per_worker"] = [{k: r.get(k) for k in ("issued", "rejected", "dead_lettered", "left_for_retry", "sqs_calls", "_elapsed")} for r in sign_results]
        phases.append(sign)
        fetch, fetch_results = run_phase("fetch", fetch_jobs, env, args.forks, args.fetch_timeout + 60)
        statuses = Counter(str(r.get("status")) for r in fetch_results)
        fetch["statuses"] = dict(statuses)
        fetch["timeouts"] = sum(
            1 for r in fetch_results if r.get("_killed") or (r.get("failed") and "no certificate for request" in str(r.get("msg", "")))
        )
        phases.append(fetch)

        log("verifying the installed certificates")
        started = time.monotonic()
        root = Path(ca_opts["root_cert_path"])
        with cf.ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
            checks = list(pool.map(lambda node: verify_node(node, root), nodes))
        verified = sum(1 for ok, _ in checks if ok)
        problems = sorted({why for ok, why in checks if not ok})[:10]
        installed = sum(1 for node in nodes if (node.path / "current" / "cert.pem").is_file())
        installed_by_fetch = statuses.get("installed", 0)

        # Leftovers (GetQueueAttributes from here: not module calls, not counted).
        client = sqs_admin.make_client(sqs_values["AWS_ENDPOINT_URL_SQS"], sqs_values["AWS_REGION"])
        leftovers = {"csr_queue": sqs_admin.queue_depth(client, csr_queue), "dead_letter_queue": sqs_admin.queue_depth(client, dlq)}

        total_calls: Counter[str] = Counter()
        for p in phases:
            total_calls.update(p["sqs_calls"])
        wall = sum(p["wall_seconds"] for p in phases)
        cpu = sum(p["cpu_seconds"] for p in phases)
        n_total = sum(total_calls.values())
        result.update(
            {
                "phases": phases,
                "certificates": {
                    "installed": installed,
                    "installed_reported_by_fetch": installed_by_fetch,
                    "verified": verified,
                    "verification_problems": problems,
                    "verify_seconds": round(time.monotonic() - started, 3),
                },
                "timeouts": fetch["timeouts"],
                "sqs_calls": dict(sorted(total_calls.items())),
                "sqs_calls_total": n_total,
                "sqs_calls_per_installed_certificate": round(n_total / installed, 3) if installed else None,
                "wall_seconds": round(wall, 3),
                "wall_seconds_per_certificate": round(wall / installed, 5) if installed else None,
                "module_cpu_seconds": round(cpu, 3),
                "module_cpu_seconds_per_certificate": round(cpu / installed, 5) if installed else None,
                "sign_phase_certificates_per_second": round(sign["issued"] / sign["wall_seconds"], 1) if sign["wall_seconds"] else None,
                "leftover_queues": leftovers,
                "all_installed_and_verified": installed == args.nodes and verified == args.nodes,
            }
        )
        result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        return result
    finally:
        stop_sqs(sqs_dir)


def print_table(r: dict[str, Any], out=sys.stdout) -> None:
    engine = r["engine"] + (f" (receive semantics: {r['receive_semantics']})" if r["engine"] == "local-aws-sqs" else "")
    print(f"\nfleet benchmark: {r['nodes']} nodes, {engine}, forks {r['forks']}, workers {r['workers']}", file=out)
    head = (
        f"{'phase':<8} {'wall s':>9} {'runs':>6} {'failed':>6} {'SQS calls':>10} {'ms/cert':>8} "
        f"{'run p50 s':>10} {'run p95 s':>10} {'CPU ms/run':>10} {'CPU s':>8} {'server CPU s':>12} {'server ms/call':>14}  calls by operation"
    )
    print(head, file=out)
    print("-" * len(head), file=out)
    installed = r["certificates"]["installed"] or 1
    for p in r["phases"]:
        ops = ", ".join(f"{k} {v}" for k, v in p["sqs_calls"].items())
        print(
            f"{p['phase']:<8} {p['wall_seconds']:>9.2f} {p['module_runs']:>6} {p['failed_runs']:>6} {p['sqs_calls_total']:>10} "
            f"{1000 * p['wall_seconds'] / installed:>8.2f} {p['run_seconds_p50']:>10.3f} {p['run_seconds_p95']:>10.3f} "
            f"{1000 * p['run_cpu_seconds_p50']:>10.1f} {p['cpu_seconds']:>8.1f} {p.get('server_cpu_seconds', float('nan')):>12.1f} "
            f"{p.get('server_cpu_ms_per_call') or float('nan'):>14.3f}  {ops}",
            file=out,
        )
    print(
        f"{'total':<8} {r['wall_seconds']:>9.2f} {'':>6} {'':>6} {r['sqs_calls_total']:>10} {1000 * (r['wall_seconds_per_certificate'] or 0):>8.2f}",
        file=out,
    )
    c = r["certificates"]
    print(
        f"installed {c['installed']}/{r['nodes']}, verified {c['verified']}, fetch timeouts {r['timeouts']}, "
        f"SQS calls per installed certificate {r['sqs_calls_per_installed_certificate']}, "
        f"wall per certificate {1000 * (r['wall_seconds_per_certificate'] or 0):.2f} ms, "
        f"module CPU per certificate {1000 * (r['module_cpu_seconds_per_certificate'] or 0):.2f} ms, "
        f"sign phase {r['sign_phase_certificates_per_second']} certificates/s",
        file=out,
    )
    if c["verification_problems"]:
        print(f"verification problems: {c['verification_problems']}", file=out)
    for p in r["phases"]:
        if p["failure_messages"]:
            print(f"{p['phase']} failures: {p['failure_messages']}", file=out)
    print(f"left in queues: {r['leftover_queues']}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", "-n", type=int, default=100)
    parser.add_argument("--engine", choices=["local-aws-sqs", "moto"], default="local-aws-sqs")
    parser.add_argument(
        "--receive",
        choices=["aws", "package"],
        default="aws",
        help="local-aws-sqs only: 'aws' (default) makes a long poll return once a message is there, as SQS does; "
        "'package' keeps the published behaviour (waits the whole WaitTimeSeconds unless MaxNumberOfMessages arrive). "
        "See scripts/local-aws-sqs/server.cjs",
    )
    parser.add_argument("--forks", "-f", type=int, default=20, help="node module runs at a time, like ansible -f (default 20)")
    parser.add_argument("--workers", type=int, default=1, help="mtls_ca_sign processes draining in parallel (default 1)")
    parser.add_argument("--fetch-timeout", type=int, default=60, help="mtls_cert_fetch timeout option (default 60)")
    parser.add_argument("--sign-timeout", type=float, default=1800, help="kill a worker after this many seconds")
    parser.add_argument("--instance-base", type=lambda s: int(s, 0), default=0x0BE7C000000000000, help="first instance id number")
    parser.add_argument("--out", type=Path, help="write the JSON results here")
    parser.add_argument("--workdir", type=Path, help="parent of the temporary directory (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (nodes, CA, args files, SQS log)")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.forks < 1 or args.workers < 1:
        parser.error("--nodes, --forks and --workers must be at least 1")

    base = Path(tempfile.mkdtemp(prefix=f"fleetpki-bench-{args.engine}-{args.nodes}-", dir=args.workdir))
    try:
        result = bench(args, base)
    finally:
        if args.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print_table(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        log(f"wrote {args.out}")
    return 0 if result["all_installed_and_verified"] and result["timeouts"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
