"""The collection on the ansible-core that runs these tests (scripts/ansible-matrix runs them on
every version requires_ansible claims).

The modules' action plugin (plugins/plugin_utils/cached_binary.py) leans on ansible-core
internals that move between releases. Whatever it needs that is missing or has changed must send
the task down Ansible's standard path, saying why at -vvv, never fail it. The hiding tests make
ansible-core lack one name the plugin uses (tests/collection/hide_core/sitecustomize.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import ansible.release
import pytest
import yaml

from collection_helpers import REPO_ROOT, assert_run_ok, describe_run, play_recap, run, tool

CORE_VERSION = ansible.release.__version__
HIDE_CORE = Path(__file__).resolve().parent / "hide_core"


def matrix_versions() -> list[str]:
    text = (REPO_ROOT / "scripts" / "ansible-matrix").read_text(encoding="utf-8")
    m = re.search(r"^VERSIONS=\(([^)]*)\)", text, re.M)
    assert m, "no VERSIONS=(...) in scripts/ansible-matrix"
    return m.group(1).split()


def test_requires_ansible_claims_what_the_matrix_tests():
    runtime = yaml.safe_load((REPO_ROOT / "collection" / "meta" / "runtime.yml").read_text(encoding="utf-8"))
    versions = matrix_versions()
    assert runtime["requires_ansible"] == f">={versions[0]}.0", (runtime["requires_ansible"], versions)
    # Every minor release from the oldest claimed to the newest tested, none skipped.
    minors = [int(v.split(".")[1]) for v in versions]
    assert minors == list(range(minors[0], minors[-1] + 1)), versions
    tested = f"{versions[0]} to {versions[-1]}"
    for readme in (REPO_ROOT / "README.md", REPO_ROOT / "collection" / "README.md"):
        assert f"ansible-core {tested}" in readme.read_text(encoding="utf-8"), f"{readme} does not say 'ansible-core {tested}'"


def test_this_core_is_one_the_matrix_tests():
    assert ".".join(CORE_VERSION.split(".")[:2]) in matrix_versions(), CORE_VERSION


CA_PLAY = """
- name: Create a CA twice
  hosts: all
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - name: CA
      fleetpki.mtls.mtls_ca_init:
        root_cert_path: "{{ ca_dir }}/root.pem"
        root_privatekey_path: "{{ ca_dir }}/root.key"
        intermediate_cert_path: "{{ ca_dir }}/intermediate.pem"
        intermediate_privatekey_path: "{{ ca_dir }}/intermediate.key"
        chain_path: "{{ ca_dir }}/chain.pem"
      register: first
    - name: CA again
      fleetpki.mtls.mtls_ca_init:
        root_cert_path: "{{ ca_dir }}/root.pem"
        root_privatekey_path: "{{ ca_dir }}/root.key"
        intermediate_cert_path: "{{ ca_dir }}/intermediate.pem"
        intermediate_privatekey_path: "{{ ca_dir }}/intermediate.key"
        chain_path: "{{ ca_dir }}/chain.pem"
      register: second
    - name: Keep the results
      ansible.builtin.copy:
        content: "{{ {'first': first, 'second': second} | to_json }}"
        dest: "{{ ca_dir }}.results.json"
        mode: "0600"
"""


def ca_play(tmp_path: Path, ansible_env: dict[str, str], **more_env: str):
    """The two-task play (mtls_ca_init twice, local connection) at -vvv: (process, both results)."""
    playbook = tmp_path / "ca.yml"
    playbook.write_text(CA_PLAY, encoding="utf-8")
    ca_dir = tmp_path / "ca"
    env = dict(ansible_env, ANSIBLE_REMOTE_TEMP=str(tmp_path / "remote-tmp"), **more_env)
    proc = run([tool("ansible-playbook"), "-i", "node1,", "-c", "local", "-vvv", "-e", f"ca_dir={ca_dir}", str(playbook)], env=env, cwd=tmp_path)
    assert_run_ok(proc)
    assert play_recap(proc.stdout)["node1"]["failed"] == 0, describe_run(proc)
    return proc, json.loads(Path(f"{ca_dir}.results.json").read_text(encoding="utf-8"))


def module_puts(proc) -> list[str]:
    """-vvv's file transfers of a module binary: Ansible's standard path PUTs it per task."""
    return [line for line in proc.stdout.splitlines() if line.startswith("<node1> PUT ") and "mtls_ca_init" in line]


def test_the_two_task_play_takes_the_module_cache(tmp_path, ansible_env):
    proc, results = ca_play(tmp_path, ansible_env)
    assert results["first"]["changed"] is True, results
    assert results["second"]["changed"] is False, results
    assert (tmp_path / "ca" / "chain.pem").is_file()
    # The first task sends the binary on the stdin of the command that caches it, the second
    # runs the cached copy: no file transfer at all, no fallback.
    assert "fleetpki.mtls: mtls_ca_init is not cached on this host: sending it" in proc.stdout, describe_run(proc)
    assert "fleetpki.mtls: ran mtls_ca_init from the module cache" in proc.stdout, describe_run(proc)
    assert "module cache not used" not in proc.stdout, describe_run(proc)
    assert module_puts(proc) == [], describe_run(proc)


def hidden_symbol() -> str:
    """A name the plugin imports on this core: remove_internal_keys where it exists (2.21 removed
    it), else the module-argument encoder."""
    import ansible.vars.clean

    if hasattr(ansible.vars.clean, "remove_internal_keys"):
        return "ansible.vars.clean:remove_internal_keys"
    return "ansible.module_utils.common.json:get_module_encoder"


def assert_standard_path(proc, results, why: str) -> None:
    assert results["first"]["changed"] is True and results["second"]["changed"] is False, results
    said = [line for line in proc.stdout.splitlines() if "fleetpki.mtls: module cache not used: " in line]
    assert len(said) == 2 and all(why in line for line in said), f"wanted -vvv to say {why!r} for both tasks:\n{describe_run(proc)}"
    assert len(module_puts(proc)) == 2, f"the standard path transfers the binary per task:\n{describe_run(proc)}"
    assert "from the module cache" not in proc.stdout and "not cached on this host" not in proc.stdout, describe_run(proc)


def test_a_symbol_missing_from_ansible_core_sends_the_task_down_the_standard_path(tmp_path, ansible_env):
    symbol = hidden_symbol()
    proc, results = ca_play(tmp_path, ansible_env, PYTHONPATH=str(HIDE_CORE), FLEETPKI_HIDE_CORE_SYMBOL=symbol)
    assert_standard_path(proc, results, f"ansible-core {CORE_VERSION} has no {symbol.replace(':', '.')}")


def test_an_actionbase_method_missing_sends_the_task_down_the_standard_path(tmp_path, ansible_env):
    proc, results = ca_play(tmp_path, ansible_env, PYTHONPATH=str(HIDE_CORE), FLEETPKI_HIDE_ACTIONBASE_METHOD="_parse_returned_data")
    assert_standard_path(proc, results, f"ansible-core {CORE_VERSION}'s ActionBase has no method _parse_returned_data()")


@pytest.mark.parametrize("variable", ["FLEETPKI_HIDE_CORE_SYMBOL", "FLEETPKI_HIDE_ACTIONBASE_METHOD"])
def test_the_hiding_aid_really_hides(tmp_path, ansible_env, variable):
    """The aid itself: what it hides is gone for code imported after ansible.plugins.action."""
    value = hidden_symbol() if variable.endswith("SYMBOL") else "_parse_returned_data"
    probe = (
        "import ansible.plugins.action as a, importlib, sys\n"
        "m, _, n = sys.argv[1].partition(':')\n"
        "gone = not hasattr(importlib.import_module(m), n) if n else '_parse_returned_data' not in vars(a.ActionBase)\n"
        "sys.exit(0 if gone else 1)\n"
    )
    python = str(Path(tool("ansible-playbook")).parent / "python")
    proc = run([python, "-c", probe, value], env=dict(ansible_env, PYTHONPATH=str(HIDE_CORE), **{variable: value}))
    assert proc.returncode == 0, describe_run(proc)
