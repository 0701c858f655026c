"""Helpers for the integration tests: run the module binaries, inspect SQS, build PKI objects.

Nothing here talks to anything but the local moto server and local files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO_ROOT = Path(__file__).resolve().parents[2]
# Where scripts/build puts the shipped binaries (glibc 2.17 build).
BIN_DIR = REPO_ROOT / "target" / "x86_64-unknown-linux-gnu" / "release"
MODULES = ("mtls_csr_submit", "mtls_ca_sign", "mtls_cert_fetch", "mtls_cert_info", "mtls_ca_init", "mtls_ca_revoke", "mtls_reply_queues")
COLLECTION = "fleetpki.mtls"

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import sqs_admin  # noqa: E402  (scripts/sqs_admin.py: queue creation shared with scripts/sqs-server)

# What Ansible 2.19 puts in every args file besides the task's options.
# A module must accept all of them; we send the usual set, not only the three it acts on.
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
}

MODULE_TIMEOUT = 120  # seconds; a module that hangs (e.g. reading stdin) fails the test


# --------------------------------------------------------------------------------------------
# Running the module binaries
# --------------------------------------------------------------------------------------------


def binary_path(name: str) -> Path:
    """The built module binary; fails the test (never skips) when it is not built."""
    import pytest

    path = BIN_DIR / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"module binary {path} is missing: build it with `scripts/build` "
            f"(scripts/test does this) before running the integration tests",
            pytrace=False,
        )
    return path


def module_env(sqs_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a module: ours without any AWS_* settings or profile files, plus sqs_env.

    So a developer's real AWS configuration can never leak into a test run.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = "/nonexistent/fleetpki-tests/aws-config"
    env["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent/fleetpki-tests/aws-credentials"
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env.update(sqs_env or {})
    return env


def base_env(ansible_home: Path, collections_path: Path | None) -> dict[str, str]:
    """The environment of an ansible command of the tests: no AWS settings of the developer, the
    venv running the tests first on PATH, only `collections_path` (if any) to find collections in,
    no colours, no retry files."""
    env = module_env()
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
            "ANSIBLE_CONFIG": str(ansible_home / "ansible.cfg"),
            "ANSIBLE_HOME": str(ansible_home),
            "ANSIBLE_LOCAL_TEMP": str(ansible_home / "tmp"),
            "ANSIBLE_REMOTE_TEMP": str(ansible_home / "remote-tmp"),
            "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
            "ANSIBLE_ROLES_PATH": str(ansible_home / "roles"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_RETRY_FILES_ENABLED": "false",
            "ANSIBLE_STDOUT_CALLBACK": "default",
            "ANSIBLE_DEPRECATION_WARNINGS": "false",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    for key in ("ANSIBLE_CALLBACKS_ENABLED", "ANSIBLE_CALLBACK_WHITELIST", "ANSIBLE_INVENTORY", "ANSIBLE_VAULT_PASSWORD_FILE"):
        env.pop(key, None)
    if collections_path is not None:
        env["ANSIBLE_COLLECTIONS_PATH"] = str(collections_path)
    return env


def parse_single_json(stdout: str, what: str = "module") -> dict[str, Any]:
    """stdout must be exactly one JSON object (whitespace around it is allowed, nothing else)."""
    text = stdout.strip()
    assert text, f"{what} printed nothing on stdout"
    try:
        value = json.loads(text)  # refuses trailing data ("Extra data"), so two objects fail
    except json.JSONDecodeError as exc:
        raise AssertionError(f"{what} stdout is not exactly one JSON object ({exc}):\n{stdout}") from None
    assert isinstance(value, dict), f"{what} stdout is JSON but not an object: {stdout}"
    return value


# The top-level keys each module returned in this test session (test_return_keys.py compares
# them with the modules' documented RETURN).
RETURNED_KEYS: dict[str, set[str]] = {}


def run_args_file(
    name: str,
    args_file: Path | str,
    env: dict[str, str] | None = None,
    timeout: float = MODULE_TIMEOUT,
    strace: tuple[str, Path] | None = None,
) -> tuple[dict[str, Any], subprocess.CompletedProcess]:
    """Run BIN_DIR/<name> <args_file> the way Ansible does (stdin closed, one argument). With
    strace=(FILTER, LOG), under `strace -f -e trace=FILTER -o LOG`."""
    argv = [str(binary_path(name)), str(args_file)]
    if strace is not None:
        tracer = shutil.which("strace")
        assert tracer, "strace is missing: scripts/system-packages installs it"
        trace_filter, log = strace
        argv = [tracer, "-f", "-qq", "-e", f"trace={trace_filter}", "-o", str(log), *argv]
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env if env is not None else module_env(),
            timeout=timeout,
            cwd=str(Path(args_file).parent),
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"{name} did not finish within {timeout}s\nstdout: {exc.stdout}\nstderr: {exc.stderr}"
        ) from None
    result = parse_single_json(proc.stdout, f"{name} (rc {proc.returncode}, stderr: {proc.stderr.strip()[-2000:]})")
    # A Rust panic (rc 101, or 134 with panic=abort) must have been turned into failed JSON already.
    assert proc.returncode not in (101, 134), f"{name} panicked (rc {proc.returncode}): {proc.stderr}"
    assert "panicked at" not in proc.stderr, f"{name} panicked: {proc.stderr}"
    RETURNED_KEYS.setdefault(name, set()).update(result)
    return result, proc


def write_args(path: Path, name: str, args: dict[str, Any], check: bool = False, diff: bool = False) -> Path:
    data = dict(ANSIBLE_INTERNAL_ARGS)
    data.update(
        {
            "_ansible_check_mode": check,
            "_ansible_diff": diff,
            "_ansible_module_name": f"{COLLECTION}.{name}",
        }
    )
    data.update(args)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


def run_module(
    name: str,
    args: dict[str, Any],
    check: bool = False,
    diff: bool = False,
    env: dict[str, str] | None = None,
    timeout: float = MODULE_TIMEOUT,
    args_dir: Path | None = None,
) -> tuple[dict[str, Any], subprocess.CompletedProcess]:
    """Write the args file (options + Ansible's internal keys) and run the module on it.

    Returns (result dict, CompletedProcess). The args file stays in args_dir for post-mortems.
    """
    import tempfile

    args_dir = Path(args_dir) if args_dir else Path(tempfile.mkdtemp(prefix="fleetpki-args-"))
    args_dir.mkdir(parents=True, exist_ok=True)
    path = args_dir / f"{name}-{uuid.uuid4().hex[:8]}.json"
    write_args(path, name, args, check=check, diff=diff)
    return run_args_file(name, path, env=env, timeout=timeout)


def describe(result: dict[str, Any], proc: subprocess.CompletedProcess | None = None) -> str:
    """For assertion messages."""
    text = json.dumps(result, indent=2, sort_keys=True)[:4000]
    if proc is not None and proc.stderr.strip():
        text += f"\nstderr: {proc.stderr.strip()[-2000:]}"
    return text


def assert_ok(result: dict[str, Any], proc: subprocess.CompletedProcess | None = None) -> dict[str, Any]:
    assert not result.get("failed"), f"module failed:\n{describe(result, proc)}"
    return result


def assert_failed_naming(result: dict[str, Any], option: str) -> None:
    assert result.get("failed") is True, f"expected failed: true\n{describe(result)}"
    msg = result.get("msg")
    assert isinstance(msg, str) and msg, f"failed without a msg\n{describe(result)}"
    assert option in msg, f"msg does not name the option {option!r}: {msg!r}"


def sqs_call_count(result: dict[str, Any], operation: str) -> int:
    """Count of an SQS operation in a result's sqs_calls ("SendMessage", "send_message", ...)."""
    calls = result.get("sqs_calls") or {}
    assert isinstance(calls, dict), f"sqs_calls is not a dict: {calls!r}"
    norm = operation.replace("_", "").lower()
    return sum(int(v) for k, v in calls.items() if k.replace("_", "").lower() == norm)


# --------------------------------------------------------------------------------------------
# SQS inspection (GetQueueAttributes only, except where a helper says it receives)
# --------------------------------------------------------------------------------------------


def queue_attributes(client, url: str) -> dict[str, int]:
    """visible / in_flight / delayed counts of a queue, without receiving (receive counts untouched)."""
    return sqs_admin.queue_depth(client, url)


def queues_with_prefix(client, prefix: str) -> list[str]:
    return sorted(client.list_queues(QueueNamePrefix=prefix).get("QueueUrls", []))


def snapshot_queues(client, prefix: str) -> dict[str, dict[str, int]]:
    """Every queue under prefix with its counts: compare before/after to prove nothing moved."""
    return {url: queue_attributes(client, url) for url in queues_with_prefix(client, prefix)}


def receive_all(client, url: str, visibility_timeout: int = 30, max_rounds: int = 10) -> list[dict[str, Any]]:
    """Receive every visible message (with attributes). RAISES their receive counts and hides them
    for visibility_timeout: use it to inspect at the end of a test, or with visibility_timeout=0."""
    messages: list[dict[str, Any]] = []
    for _ in range(max_rounds):
        got = client.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            VisibilityTimeout=visibility_timeout,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not got:
            break
        messages.extend(got)
        if visibility_timeout == 0:
            break  # the same messages would come back
    return messages


def send_json(client, url: str, body: dict[str, Any] | str, instance_id: str | None = None) -> str:
    text = body if isinstance(body, str) else json.dumps(body)
    attrs = {}
    if instance_id is not None:
        attrs["InstanceId"] = {"DataType": "String", "StringValue": instance_id}
    return client.send_message(QueueUrl=url, MessageBody=text, MessageAttributes=attrs)["MessageId"]


def free_port() -> int:
    """A TCP port free on loopback now (for a server a test starts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.1, what: str = "condition"):
    """Poll PREDICATE until it returns something true (returned), or fail after TIMEOUT seconds
    naming WHAT and the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value!r})")
        time.sleep(interval)  # the pace of the polling, not a wait standing in for the condition


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def file_mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def tree_snapshot(root: Path | str) -> dict[str, tuple]:
    """Every entry under root (not following symlinks) with type, mode, size, mtime and content hash.

    Equal snapshots before and after a run mean the run wrote, created, removed and touched nothing.
    A missing root gives {}.
    """
    root = Path(root)
    snap: dict[str, tuple] = {}
    if not os.path.lexists(root):
        return snap
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in sorted(dirnames + filenames):
            p = Path(dirpath) / entry
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                snap[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                snap[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                snap[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns, digest)
    st = os.lstat(root)
    snap["."] = ("root", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return snap


def write_policy(path: Path, **overrides: Any) -> Path:
    """A permissive but explicit signing policy for the simulated fleet."""
    policy: dict[str, Any] = {
        "identity_proof": "none",
        "max_lifetime_days": 30,
        "default_lifetime_days": 30,
        "profiles": ["mtls", "server", "client"],
        "instances": [
            {
                "instance_id_pattern": "i-*",
                "dns_suffixes": [".fleet.internal"],
                "ip_networks": ["127.0.0.0/8"],
            }
        ],
    }
    policy.update(overrides)
    path.write_text(json.dumps(policy, indent=2), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# openssl and certificates
# --------------------------------------------------------------------------------------------


def openssl_verify(cert: Path | str, root: Path | str, intermediate: Path | str, purpose: str) -> subprocess.CompletedProcess:
    """`openssl verify -CAfile root -untrusted intermediate -purpose P cert` (not raising)."""
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(root), "-untrusted", str(intermediate), "-purpose", purpose, str(cert)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


def assert_openssl_verifies(cert, root, intermediate, purpose: str) -> None:
    proc = openssl_verify(cert, root, intermediate, purpose)
    assert proc.returncode == 0 and proc.stdout.strip().endswith(": OK"), (
        f"openssl verify -purpose {purpose} refused {cert}:\n{proc.stdout}{proc.stderr}"
    )


def load_cert(path: Path | str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def load_certs(path: Path | str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(Path(path).read_bytes())


def cert_sans(cert: x509.Certificate) -> list[str]:
    """SANs as `DNS:x` / `IP:y` strings, in certificate order (duplicates kept)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    out = []
    for name in ext.value:
        if isinstance(name, x509.DNSName):
            out.append(f"DNS:{name.value}")
        elif isinstance(name, x509.IPAddress):
            out.append(f"IP:{name.value}")
        else:
            out.append(f"{type(name).__name__}:{name.value}")
    return out


def common_name(cert_or_csr) -> str:
    attrs = cert_or_csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return attrs[0].value if attrs else ""


def spki_der(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: Path | str):
    return serialization.load_pem_private_key(Path(path).read_bytes(), password=None)


def serial_int(text: str) -> int:
    return int(text.replace(":", ""), 16)


def rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_ca(root_subject: x509.Name | None = None, intermediate_subject: x509.Name | None = None):
    """A root and a pathlen-0 intermediate made with `cryptography` (a "foreign" CA in tests).

    Returns (root_cert, intermediate_cert, intermediate_key).
    """
    now = dt.datetime.now(dt.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    inter_key = ec.generate_private_key(ec.SECP256R1())
    root_subject = root_subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "foreign Root CA")])
    intermediate_subject = intermediate_subject or x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "foreign Intermediate CA")]
    )
    ca_usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
    )
    root = (
        x509.CertificateBuilder()
        .subject_name(root_subject)
        .issuer_name(root_subject)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ca_usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    inter = (
        x509.CertificateBuilder()
        .subject_name(intermediate_subject)
        .issuer_name(root_subject)
        .public_key(inter_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1825))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ca_usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(inter_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    return root, inter, inter_key


def sign_leaf(
    issuer_cert: x509.Certificate,
    issuer_key,
    public_key,
    instance_id: str,
    sans: list[str],
    days: int = 30,
    not_before: dt.datetime | None = None,
) -> x509.Certificate:
    """A leaf like the ones our worker issues (CN = instance id, SANs, serverAuth+clientAuth),
    valid from `not_before` (default: 5 minutes ago, as the worker backdates)."""
    now = dt.datetime.now(dt.UTC)
    names: list[x509.GeneralName] = []
    for san in sans:
        kind, value = san.split(":", 1)
        if kind.upper() == "DNS":
            names.append(x509.DNSName(value))
        else:
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, instance_id)]))
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()), critical=False
        )
        .sign(issuer_key, hashes.SHA256())
    )


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def certificate_message(
    leaf: x509.Certificate, chain: list[x509.Certificate], instance_id: str, request_id: str
) -> dict[str, Any]:
    """A version-1 certificate message body (docs/interfaces.md, "Wire format")."""
    return {
        "instance_id": instance_id,
        "certificate_pem": pem(leaf),
        "ca_chain_pem": "".join(pem(c) for c in chain),
        "version": 1,
        "kind": "certificate",
        "request_id": request_id,
        "serial": format(leaf.serial_number, "x"),
        "not_after": rfc3339(leaf.not_valid_after_utc),
    }


def make_csr_pem(instance_id: str, sans: list[str], key=None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for san in sans:
        kind, value = san.split(":", 1)
        names.append(x509.DNSName(value) if kind.upper() == "DNS" else x509.IPAddress(ipaddress.ip_address(value)))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, instance_id)]))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def tamper_csr_signature(csr_pem: str) -> str:
    """Flip one bit in the last byte of the CSR's DER (inside the signature), keeping it parseable."""
    import base64

    der = bytearray(x509.load_pem_x509_csr(csr_pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    b64 = base64.b64encode(bytes(der)).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    tampered = "-----BEGIN CERTIFICATE REQUEST-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE REQUEST-----\n"
    # Sanity: it still parses, and its signature no longer verifies.
    parsed = x509.load_pem_x509_csr(tampered.encode())
    assert not parsed.is_signature_valid, "tampering did not break the signature"
    return tampered


def csr_message(instance_id: str, csr_pem: str, request_id: str | None = None, profile: str = "mtls") -> dict[str, Any]:
    """A version-1 CSR message body (docs/interfaces.md, "Wire format")."""
    return {
        "instance_id": instance_id,
        "csr_pem": csr_pem,
        "version": 1,
        "request_id": request_id or str(uuid.uuid4()),
        "timestamp": int(time.time()),
        "profile": profile,
        "reply_mode": "per_node",
    }
