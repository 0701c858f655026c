"""The roles refuse a host whose OS or architecture the binaries were not built for, at once and
with a message naming what the host reported, instead of an `Exec format error`.
The guard uses `raw: uname -sm`, so it needs neither Python nor facts on the host; a stand-in
`uname` first on PATH plays the foreign host (local connection: the play's shell is ours)."""

from __future__ import annotations

import subprocess

import pytest


@pytest.mark.parametrize("reported", ["Linux aarch64", "Darwin x86_64"])
def test_mtls_client_refuses_a_foreign_host_at_once(reported, tmp_path, ansible_env, installed):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    uname = fake_bin / "uname"
    uname.write_text(f"#!/bin/sh\necho '{reported}'\n")
    uname.chmod(0o755)
    node_dir = tmp_path / "node"
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        f"""
- name: Enrol a host of another architecture
  hosts: all
  gather_facts: false
  roles:
    - role: fleetpki.mtls.mtls_client
      vars:
        mtls_client_instance_id: i-0000000000000000a
        mtls_client_csr_queue_url: http://127.0.0.1:9/000000000000/unused
        mtls_client_ca_cert_src: {tmp_path / "no-ca.pem"}
        mtls_client_path: {node_dir}
"""
    )
    env = dict(ansible_env)
    env["PATH"] = f"{fake_bin}:{env['PATH']}"
    proc = subprocess.run(
        ["ansible-playbook", "-i", "node1,", "-c", "local", "-e", "ansible_python_interpreter=/nonexistent/python", str(playbook)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert reported in out, out
    assert "node1" in out, out
    # It stopped before anything else: no key, no directory, no module run.
    assert not node_dir.exists(), out
    assert "Exec format error" not in out, out
