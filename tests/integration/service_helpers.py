"""Helpers for the rotation and service tests: long-running worker processes, raw module runs that
may abort on purpose, an SQS proxy that sees (and can act on) every call of a process, and the
node's install layout checks.

Only processes started here are ever signalled, by their own Popen object.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import stat
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

import helpers

# --------------------------------------------------------------------------------------------
# Module binaries run raw (no assertion on the exit code: a crash point aborts on purpose)
# --------------------------------------------------------------------------------------------


def binary_path(name: str, wait: float = 120.0) -> Path:
    """The built binary; while the lead rebuilds, it may be missing for a moment: wait (bounded)."""
    path = helpers.BIN_DIR / name
    deadline = time.monotonic() + wait
    while not (path.is_file() and os.access(path, os.X_OK)):
        if time.monotonic() > deadline:
            return helpers.binary_path(name)  # fails the test naming the binary
        time.sleep(0.5)
    return path


def run_raw(
    name: str, args: dict[str, Any], args_dir: Path, env: dict[str, str], timeout: float = helpers.MODULE_TIMEOUT
) -> subprocess.CompletedProcess:
    """Write the args file like Ansible and run the binary; the caller judges rc and stdout."""
    import uuid

    args_dir.mkdir(parents=True, exist_ok=True)
    path = helpers.write_args(args_dir / f"{name}-{uuid.uuid4().hex[:8]}.json", name, args)
    binary = binary_path(name)
    return subprocess.run(
        [str(binary), str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=str(args_dir),
    )


def aborted(proc: subprocess.CompletedProcess) -> bool:
    """The process died of SIGABRT (Python reports -6; a shell would say 134)."""
    return proc.returncode in (-signal.SIGABRT, 128 + signal.SIGABRT)


def sqs_calls_total(result: dict[str, Any]) -> int:
    return sum(int(v) for v in (result.get("sqs_calls") or {}).values())


def write_config(path: Path, args: dict[str, Any]) -> Path:
    """A service config file: the module's arguments as one JSON object, 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(args, f, indent=2)
    return path


def write_atomically(path: Path, text: str) -> None:
    """Replace a file by rename (a new inode and mtime), as a config management tool would."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Long-running processes
# --------------------------------------------------------------------------------------------


class Service:
    """A process with its stdout and stderr read line by line by threads (nothing blocks on a
    full pipe), and waits on its output bounded by deadlines."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path | None = None):
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(cwd) if cwd else None,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, stream, lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str):
        """Wait (bounded) until predicate() holds; it is re-evaluated on every new output line,
        and at least every 0.2 s (for predicates on the outside world)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.describe()}")
                self._changed.wait(min(left, 0.2))

    def wait_for_stderr(self, text: str, timeout: float = 30.0, count: int = 1) -> None:
        self.wait_for(lambda: sum(text in line for line in self.stderr) >= count, timeout, f"{text!r} on stderr")

    def audit_lines(self) -> list[dict[str, Any]]:
        """stdout parsed as JSON lines (each line must be one JSON object)."""
        out = []
        for line in list(self.stdout):
            if not line.strip():
                continue
            value = json.loads(line)
            assert isinstance(value, dict), f"audit line is not an object: {line}"
            out.append(value)
        return out

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.argv[0]} did not exit within {timeout}s\n{self.describe()}") from None
        for reader in self._readers:
            reader.join(timeout=5)
        return rc

    def stop(self) -> None:
        """Teardown: SIGKILL if still running (our own process only)."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def describe(self) -> str:
        return f"argv: {self.argv}\nrc: {self.proc.poll()}\nstderr (tail):\n" + "\n".join(
            self.stderr[-30:]
        ) + "\nstdout (tail):\n" + "\n".join(self.stdout[-10:])


def start_serve(config: Path, env: dict[str, str]) -> Service:
    return Service([str(binary_path("mtls_ca_sign")), "serve", str(config)], env=env, cwd=config.parent)


# --------------------------------------------------------------------------------------------
# An SQS proxy that sees every call of the process pointed at it
# --------------------------------------------------------------------------------------------


class SqsProxy:
    """A forwarding HTTP proxy in front of the moto server. Point a process's
    AWS_ENDPOINT_URL_SQS at `url`: every SQS call it makes passes here, in order, with its
    operation name (the X-Amz-Target header of the JSON protocol, or Action= of the query
    protocol) and parameters. `hook(operation, params)` runs before a call is forwarded; it may
    return "drop" to close the connection without forwarding (the caller sees a broken
    connection). `after_hook(operation, params)` runs once a call was forwarded and answered
    upstream, before the answer is passed back."""

    def __init__(self, upstream: str):
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream_host = parsed.hostname
        self.upstream_port = parsed.port
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.hook: Callable[[str, dict[str, Any]], str | None] | None = None
        self.after_hook: Callable[[str, dict[str, Any]], None] | None = None
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                operation, params = proxy._parse(self.headers, body, self.path)
                with proxy._lock:
                    proxy.calls.append((operation, params))
                verdict = proxy.hook(operation, params) if proxy.hook else None
                if verdict == "drop":
                    self.close_connection = True
                    return
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if proxy.after_hook:
                    proxy.after_hook(operation, params)
                try:
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() in (
                            "transfer-encoding",
                            "connection",
                            "content-length",
                            "keep-alive",
                            "date",
                            "server",
                        ):
                            continue
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client is gone (killed, or it exited): nothing to answer
                    self.close_connection = True

            do_POST = _handle
            do_GET = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # a client that went away mid-call
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def _parse(headers, body: bytes, path: str) -> tuple[str, dict[str, Any]]:
        target = headers.get("X-Amz-Target") or ""
        if target:
            try:
                params = json.loads(body or b"{}")
            except ValueError:
                params = {}
            return target.rsplit(".", 1)[-1], params
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace")) if body else {}
        if not form:
            form = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        params = {k: v[0] for k, v in form.items()}
        return params.get("Action", "?"), params

    def operations(self) -> list[str]:
        with self._lock:
            return [op for op, _ in self.calls]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------------------------
# The install layout
# --------------------------------------------------------------------------------------------


def spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def pems(text: str, kind: str) -> list[str]:
    """The PEM blocks of one kind ("CERTIFICATE", "PRIVATE KEY", ...) in text, in order."""
    out, inside, block = [], False, []
    for line in text.splitlines():
        if line.startswith("-----BEGIN ") and kind in line:
            inside, block = True, [line]
        elif inside:
            block.append(line)
            if line.startswith("-----END "):
                out.append("\n".join(block) + "\n")
                inside = False
    return out


def check_pair(directory: Path) -> x509.Certificate:
    """privkey.pem and cert.pem of `directory` (e.g. <path>/current) form a matching pair, and
    fullchain.pem / combined.pem agree with them. Returns the certificate."""
    key = serialization.load_pem_private_key((directory / "privkey.pem").read_bytes(), password=None)
    cert_text = (directory / "cert.pem").read_text(encoding="ascii")
    cert = x509.load_pem_x509_certificate(cert_text.encode())
    assert spki(cert.public_key()) == spki(
        key.public_key()
    ), f"{directory}: cert.pem (serial {cert.serial_number:x}) is not for privkey.pem: a key/certificate mismatch"
    chain_text = (directory / "chain.pem").read_text(encoding="ascii")
    fullchain = (directory / "fullchain.pem").read_text(encoding="ascii")
    full_certs = pems(fullchain, "CERTIFICATE")
    assert (
        full_certs and full_certs[0].strip() == cert_text.strip()
    ), f"{directory}: fullchain.pem does not start with cert.pem"
    assert [c.strip() for c in full_certs[1:]] == [
        c.strip() for c in pems(chain_text, "CERTIFICATE")
    ], f"{directory}: fullchain.pem is not cert.pem + chain.pem"
    combined_path = directory / "combined.pem"
    if combined_path.exists():
        combined = combined_path.read_text(encoding="ascii")
        keys = pems(combined, "PRIVATE KEY")
        assert len(keys) == 1, f"{directory}: combined.pem holds {len(keys)} keys"
        combined_key = serialization.load_pem_private_key(keys[0].encode(), password=None)
        assert spki(combined_key.public_key()) == spki(
            key.public_key()
        ), f"{directory}: combined.pem's key is not privkey.pem"
        combined_certs = pems(combined, "CERTIFICATE")
        assert (
            combined_certs and combined_certs[0].strip() == cert_text.strip()
        ), f"{directory}: combined.pem's certificate is not cert.pem"
        assert [c.strip() for c in combined_certs] == [
            c.strip() for c in full_certs
        ], f"{directory}: combined.pem is not key + fullchain"
    return cert


def key_files(root: Path) -> list[Path]:
    """Every regular file under root that holds a private key (by content, not by name)."""
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file():
                continue
            try:
                text = p.read_text(encoding="ascii", errors="replace")
            except OSError:
                continue
            if "PRIVATE KEY-----" in text:
                out.append(p)
    return out


def assert_keys_private(root: Path, owner: str | None = None, group: str | None = None) -> None:
    """Every file holding a private key under root is 0600 (and has the owner/group given)."""
    import grp
    import pwd

    for p in key_files(root):
        st = os.lstat(p)
        mode = stat.S_IMODE(st.st_mode)
        assert mode == 0o600, f"{p} holds a private key and has mode {mode:o}, not 600"
        if owner is not None:
            assert (
                pwd.getpwuid(st.st_uid).pw_name == owner
            ), f"{p} holds a private key and is owned by uid {st.st_uid}, not {owner}"
        if group is not None:
            assert (
                grp.getgrgid(st.st_gid).gr_name == group
            ), f"{p} holds a private key and has gid {st.st_gid}, not {group}"


def public_key_of(path: Path) -> bytes:
    return spki(serialization.load_pem_private_key(path.read_bytes(), password=None).public_key())
