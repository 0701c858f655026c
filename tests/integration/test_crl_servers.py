"""A CRL every TLS server accepts: the CRL file mtls_ca_revoke writes with root_crl_path (the
intermediate's CRL, then the root's as mtls_ca_init signs it where the root key lives) is what
nginx (`ssl_crl`) and HAProxy (`crl-file`) need to check client certificates against the whole
chain: the valid node is accepted, the revoked one and a foreign CA's are refused, and
`openssl verify -crl_check_all` passes for the valid node. With the intermediate's CRL alone,
nginx refuses every client ("unable to get certificate CRL"): that is why the root's is bundled.

nginx-light and haproxy come from Debian packages (scripts/system-packages); each test starts its
own process, in the foreground with its own configuration, on a free loopback port, and stops it
by its PID. A missing tool fails the test, never skips it.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import helpers
from helpers import assert_ok, describe


def tool(name: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}",) if Path(p).exists()), None)
    assert path, f"{name} is not installed: run scripts/system-packages"
    return path


free_port = helpers.free_port


def wait_listening(port: int, proc: subprocess.Popen, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited ({proc.returncode}): {log.read_text() if log.exists() else ''}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)  # polling a port that is not open yet
    raise AssertionError(f"nothing listens on {port} after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()  # our own child, by its Popen (PID)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def request(port: int, client_dir: Path, root: Path) -> str:
    """GET / over TLS with the client certificate of `client_dir`: the HTTP status line, or
    "refused: <why>" when the server ended the handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(root))
    context.check_hostname = False
    context.load_cert_chain(str(client_dir / "fullchain.pem"), str(client_dir / "privkey.pem"))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, context.wrap_socket(raw, server_hostname="node1.fleet.internal") as tls:
            tls.sendall(b"GET / HTTP/1.0\r\nHost: node1.fleet.internal\r\n\r\n")
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as e:
        return f"refused: {e}"
    return data.split(b"\r\n", 1)[0].decode("latin-1") if data else "refused: connection closed"


def accepted(answer: str) -> bool:
    return answer.startswith("HTTP/") and answer.split(" ")[1] == "200"


@pytest.fixture
def pki(make_node, sign, run_module, ca, tmp_path) -> dict[str, Any]:
    """Node 1 (the server), node 2 (valid client), node 3 (revoked), a foreign CA's client; the
    root's CRL, and the CRL file with and without it."""
    nodes = {n: make_node(n) for n in (1, 2, 3)}
    for node in nodes.values():
        assert_ok(*node.submit())
    signed, proc = sign()
    assert_ok(signed, proc)
    for node in nodes.values():
        result, proc = node.fetch()
        assert_ok(result, proc)
        assert result["status"] == "installed", describe(result, proc)

    root_crl = tmp_path / "root.crl.pem"
    init, proc = run_module("mtls_ca_init", dict(ca.init_args(), root_crl_path=str(root_crl)))
    assert_ok(init, proc)
    assert root_crl.exists() and init["root_crl_next_update"], describe(init, proc)
    again, proc = run_module("mtls_ca_init", dict(ca.init_args(), root_crl_path=str(root_crl)))
    assert_ok(again, proc)
    assert again["changed"] is False, describe(again, proc)

    revoked_serial = format(helpers.load_cert(nodes[3].current / "cert.pem").serial_number, "x")
    crls = {}
    for name, extra in (("whole", {"root_crl_path": str(root_crl)}), ("intermediate_only", {})):
        d = tmp_path / f"crl-{name}"
        d.mkdir()
        result, proc = run_module(
            "mtls_ca_revoke",
            {
                "ownca_path": str(ca.intermediate_cert_path),
                "ownca_privatekey_path": str(ca.intermediate_privatekey_path),
                "ca_chain_path": str(ca.chain_path),
                "crl_path": str(d / "crl.pem"),
                "revocations_path": str(d / "revocations.json"),
                "serials": [revoked_serial],
                **extra,
            },
        )
        assert_ok(result, proc)
        crls[name] = d / "crl.pem"
        warned = any("root_crl_path" in w for w in result.get("warnings") or [])
        assert warned == (name == "intermediate_only"), describe(result, proc)
    assert crls["whole"].read_text().count("BEGIN X509 CRL") == 2

    _foreign_root, foreign_inter, foreign_key = helpers.make_ca()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = helpers.sign_leaf(foreign_inter, foreign_key, key.public_key(), nodes[2].instance_id, ["DNS:node2.fleet.internal"])
    (foreign / "fullchain.pem").write_text(helpers.pem(leaf) + helpers.pem(foreign_inter))
    (foreign / "privkey.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return {
        "server": nodes[1].current,
        "valid": nodes[2].current,
        "revoked": nodes[3].current,
        "foreign": foreign,
        "crls": crls,
        "root": ca.root_cert_path,
        "chain": ca.chain_path,
    }


def test_openssl_crl_check_all_accepts_the_valid_node_with_the_whole_chain_crl(pki):
    def verify(node: Path, crl: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["openssl", "verify", "-crl_check_all", "-CRLfile", str(crl), "-CAfile", str(pki["root"]),
             "-untrusted", str(node / "chain.pem"), str(node / "cert.pem")],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    ok = verify(pki["valid"], pki["crls"]["whole"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    revoked = verify(pki["revoked"], pki["crls"]["whole"])
    assert revoked.returncode != 0 and "revoked" in revoked.stdout + revoked.stderr
    partial = verify(pki["valid"], pki["crls"]["intermediate_only"])
    assert partial.returncode != 0 and "unable to get certificate CRL" in partial.stdout + partial.stderr


def run_nginx(tmp_path: Path, pki: dict[str, Any], crl: Path) -> tuple[subprocess.Popen, int, Path]:
    nginx = tool("nginx")
    port = free_port()
    prefix = tmp_path / f"nginx-{port}"
    prefix.mkdir()
    log = prefix / "error.log"
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""
daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {log} info;
events {{ }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {pki["server"]}/fullchain.pem;
        ssl_certificate_key {pki["server"]}/privkey.pem;
        ssl_client_certificate {pki["root"]};
        ssl_verify_client on;
        ssl_verify_depth 2;
        ssl_crl {crl};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""
    )
    proc = subprocess.Popen(
        [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(log)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_listening(port, proc, log)
    return proc, port, log


def test_nginx_ssl_crl_accepts_the_valid_node_and_refuses_revoked_and_foreign(pki, tmp_path):
    proc, port, log = run_nginx(tmp_path, pki, pki["crls"]["whole"])
    try:
        answers = {who: request(port, pki[who], pki["root"]) for who in ("valid", "revoked", "foreign")}
    finally:
        stop(proc)
    assert accepted(answers["valid"]), (answers, log.read_text())
    assert not accepted(answers["revoked"]) and not accepted(answers["foreign"]), answers
    text = log.read_text()
    assert "certificate revoked" in text, text


def test_nginx_refuses_even_the_valid_node_with_the_intermediate_crl_alone(pki, tmp_path):
    """Why the root's CRL is bundled: without it nginx wants a CRL it does not have."""
    proc, port, log = run_nginx(tmp_path, pki, pki["crls"]["intermediate_only"])
    try:
        answer = request(port, pki["valid"], pki["root"])
    finally:
        stop(proc)
    assert not accepted(answer), answer
    assert "unable to get certificate CRL" in log.read_text()


def test_haproxy_crl_file_accepts_the_valid_node_and_refuses_revoked_and_foreign(pki, tmp_path):
    haproxy = tool("haproxy")
    port = free_port()
    d = tmp_path / f"haproxy-{port}"
    d.mkdir()
    server_pem = d / "server.pem"
    server_pem.write_text((pki["server"] / "fullchain.pem").read_text() + (pki["server"] / "privkey.pem").read_text())
    log = d / "haproxy.log"
    cfg = d / "haproxy.cfg"
    cfg.write_text(
        f"""
global
    log stderr format raw local0 info
defaults
    mode http
    log global
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend mtls
    bind 127.0.0.1:{port} ssl crt {server_pem} ca-file {pki["root"]} verify required crl-file {pki["crls"]["whole"]}
    http-request return status 200 content-type text/plain string ok
"""
    )
    with log.open("w") as log_file:
        proc = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file)
    try:
        wait_listening(port, proc, log)
        answers = {who: request(port, pki[who], pki["root"]) for who in ("valid", "revoked", "foreign")}
    finally:
        stop(proc)
    assert accepted(answers["valid"]), (answers, log.read_text())
    assert not accepted(answers["revoked"]) and not accepted(answers["foreign"]), answers


def test_mtls_ca_init_never_resigns_a_root_crl_that_revokes_something(run_module, ca, tmp_path):
    """A root CRL listing a revoked certificate (an intermediate revoked by hand) is an operator's
    act: mtls_ca_init refuses to replace it with an empty one, naming the file."""
    d = tmp_path / "root-revocations"
    d.mkdir()
    revoked, proc = run_module(
        "mtls_ca_revoke",
        {
            "ownca_path": str(ca.root_cert_path),
            "ownca_privatekey_path": str(ca.root_privatekey_path),
            "ca_chain_path": str(ca.root_cert_path),
            "crl_path": str(d / "root.crl.pem"),
            "revocations_path": str(d / "revocations.json"),
            "serials": ["0a1b2c"],
        },
    )
    assert_ok(revoked, proc)
    before = (d / "root.crl.pem").read_bytes()
    result, proc = run_module("mtls_ca_init", dict(ca.init_args(), root_crl_path=str(d / "root.crl.pem")))
    assert result.get("failed") is True and "lists revoked certificates" in result["msg"], describe(result, proc)
    assert (d / "root.crl.pem").read_bytes() == before
