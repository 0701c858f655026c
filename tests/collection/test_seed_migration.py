"""Migration from the seed article's roles, through the installed collection's playbook
fleetpki.mtls.adopt_seed: a CA directory in the layout of the article's ca-setup role (RSA-4096
root and intermediate, PKCS#1 keys, /etc/pki/CA's tree) and nodes as its mtls-client role leaves
them (an RSA-2048 key, certificate and chain in the service's directory, the article's scripts)
are adopted by the roles. The CA keeps its root and intermediate byte for byte, the nodes get
certificates from that intermediate into fleetpki's layout, and the service's paths follow."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from collection_helpers import describe_run, play_recap, run, tool

SEED_SCRIPTS = Path(__file__).resolve().parents[1] / "integration" / "seed"


def openssl(*args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(["openssl", *args], input=stdin, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"openssl {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def rsa_key(path: Path, bits: int) -> None:
    """An RSA key in PKCS#1 PEM, as community.crypto.openssl_privatekey writes one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    openssl("genrsa", "-traditional", "-out", str(path), str(bits))
    path.chmod(0o600)


def sign(csr: Path, ca_cert: Path, ca_key: Path, out: Path, ext: str, tmp: Path) -> None:
    extfile = tmp / f"{out.name}.ext"
    extfile.write_text(ext, encoding="utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
            "-days", "365", "-sha256", "-extfile", str(extfile), "-out", str(out))


def make_seed_ca(ca: Path, tmp: Path) -> None:
    """The article's /etc/pki/CA: root/{certs,private}, intermediate/{certs,private}, the chain."""
    root_key, root_cert = ca / "root/private/ca.key.pem", ca / "root/certs/ca.cert.pem"
    rsa_key(root_key, 4096)
    root_cert.parent.mkdir(parents=True)
    openssl("req", "-x509", "-new", "-key", str(root_key), "-subj", "/CN=Seed Root CA", "-days", "3650", "-sha256",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-out", str(root_cert))
    int_key, int_cert = ca / "intermediate/private/intermediate.key.pem", ca / "intermediate/certs/intermediate.cert.pem"
    rsa_key(int_key, 4096)
    csr = tmp / "intermediate.csr"
    openssl("req", "-new", "-key", str(int_key), "-subj", "/CN=Seed Intermediate CA", "-out", str(csr))
    sign(csr, root_cert, root_key, int_cert,
         "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,digitalSignature,cRLSign,keyCertSign\n"
         "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n", tmp)
    (ca / "intermediate/certs/ca-chain.cert.pem").write_text(int_cert.read_text() + root_cert.read_text())


def make_seed_node(pki: Path, instance_id: str, ca: Path, tmp: Path) -> None:
    """What the article's mtls-client role leaves: service.key/.pem, ca-chain.pem, its scripts."""
    rsa_key(pki / "service.key", 2048)
    csr = tmp / f"{instance_id}.csr"
    openssl("req", "-new", "-key", str(pki / "service.key"), "-subj", f"/CN={instance_id}", "-out", str(csr))
    sign(csr, ca / "intermediate/certs/intermediate.cert.pem", ca / "intermediate/private/intermediate.key.pem",
         pki / "service.pem", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth,serverAuth\n", tmp)
    shutil.copy(ca / "intermediate/certs/ca-chain.cert.pem", pki / "ca-chain.pem")
    (pki / "bin").mkdir()
    for script in ("submit_csr.py", "retrieve_cert.py"):
        shutil.copy(SEED_SCRIPTS / script, pki / "bin" / script)


def adopt(fleet, seed_ca: Path, seed_nodes: Path) -> subprocess.CompletedProcess:
    extra = {
        # The article keeps its root on the CA host.
        "ca_setup_root_host": "ca1",
        "ca_setup_root_dir": str(fleet.ca_dir / "root"),
        "fleetpki_seed_ca_dir": str(seed_ca),
        "fleetpki_seed_pki_dir": f"{seed_nodes}/{{{{ inventory_hostname }}}}",
        "fleetpki_seed_scripts": [f"{seed_nodes}/{{{{ inventory_hostname }}}}/bin/{s}" for s in ("submit_csr.py", "retrieve_cert.py")],
    }
    cmd = [tool("ansible-playbook"), "-i", str(fleet.inventory), "--forks", "4", "fleetpki.mtls.adopt_seed", "-e", json.dumps(extra)]
    return run(cmd, env=fleet.env, cwd=fleet.dir)


def test_the_roles_adopt_a_seed_ca_and_seed_nodes(make_fleet, tmp_path):
    fleet = make_fleet(2)
    seed_ca, seed_nodes, scratch = tmp_path / "seed-ca", tmp_path / "seed-nodes", tmp_path / "scratch"
    scratch.mkdir()
    make_seed_ca(seed_ca, scratch)
    for host, node in fleet.nodes.items():
        make_seed_node(seed_nodes / host, node["instance_id"], seed_ca, scratch)
    seed_files = {p: p.read_bytes() for p in seed_ca.rglob("*.pem")}
    old_certs = {host: (seed_nodes / host / "service.pem").read_bytes() for host in fleet.nodes}

    proc = adopt(fleet, seed_ca, seed_nodes)
    assert proc.returncode == 0, describe_run(proc)

    # The CA: the article's root and intermediate, byte for byte, under the role's names; the
    # article's own files untouched.
    for seed, ours in [
        ("root/certs/ca.cert.pem", "root.cert.pem"),
        ("root/private/ca.key.pem", "root/root.key.pem"),
        ("intermediate/certs/intermediate.cert.pem", "intermediate.cert.pem"),
        ("intermediate/private/intermediate.key.pem", "intermediate.key.pem"),
    ]:
        assert (fleet.ca_dir / ours).read_bytes() == (seed_ca / seed).read_bytes(), f"{ours} is not the article's {seed}"
    assert {p: p.read_bytes() for p in seed_ca.rglob("*.pem")} == seed_files, "the article's CA files were changed"
    assert (fleet.ca_dir / "chain.pem").is_file() and (fleet.ca_dir / "root.crl.pem").is_file()

    root, intermediate = seed_ca / "root/certs/ca.cert.pem", seed_ca / "intermediate/certs/intermediate.cert.pem"
    for host, node in fleet.nodes.items():
        pki = seed_nodes / host
        cert = node["path"] / "current" / "cert.pem"
        # Issued by the article's intermediate, for this node, into fleetpki's layout.
        openssl("verify", "-CAfile", str(root), "-untrusted", str(intermediate), str(cert))
        assert f"CN={node['instance_id']}" in openssl("x509", "-in", str(cert), "-noout", "-subject").replace(" ", "")
        # The service's paths are links that follow the layout; the article's files are kept.
        for name, target in (("service.key", "privkey.pem"), ("service.pem", "cert.pem"), ("ca-chain.pem", "chain.pem")):
            assert (pki / name).is_symlink(), f"{host}: {name} is not a link"
            assert (pki / name).resolve() == (node["path"] / "current" / target).resolve(), f"{host}: {name}"
        assert (pki / "service.pem.seed").read_bytes() == old_certs[host]
        assert (pki / "service.key.seed").stat().st_mode & 0o777 == 0o600
        assert (pki / "service.pem").read_bytes() != old_certs[host]
        assert not (pki / "bin" / "submit_csr.py").exists() and not (pki / "bin" / "retrieve_cert.py").exists()
        # The service reloaded after its paths became links (the handler of mtls_client_reload).
        assert fleet.marker(host).stat().st_mtime >= (pki / "service.pem").lstat().st_mtime, f"{host} did not reload"

    again = adopt(fleet, seed_ca, seed_nodes)
    assert again.returncode == 0, describe_run(again)
    recap = play_recap(again.stdout)
    assert recap and all(r["changed"] == 0 for r in recap.values()), describe_run(again)


def test_adoption_refuses_to_overwrite_another_ca(make_fleet, tmp_path):
    fleet = make_fleet(1)
    seed_ca, scratch = tmp_path / "seed-ca", tmp_path / "scratch"
    scratch.mkdir()
    make_seed_ca(seed_ca, scratch)
    fleet.ca_dir.mkdir()
    other = fleet.ca_dir / "intermediate.cert.pem"
    other.write_text("another CA's certificate\n", encoding="utf-8")

    proc = adopt(fleet, seed_ca, tmp_path / "seed-nodes")
    assert proc.returncode != 0, describe_run(proc)
    assert f"{other} already holds another CA's file" in proc.stdout, describe_run(proc)
    assert other.read_text(encoding="utf-8") == "another CA's certificate\n"
    assert not (fleet.ca_dir / "root.cert.pem").exists(), "the adoption copied files before refusing"
