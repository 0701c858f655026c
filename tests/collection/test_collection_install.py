"""The tarball installs into an empty collections path and is usable from there alone:
ansible-doc lists and shows every module (and the roles), and a playbook using the FQCNs works."""

from __future__ import annotations

import json
import os
import re
import tarfile
import textwrap

import pytest
import yaml

import helpers
from collection_helpers import MODULES, REPO_ROOT, ROLES, assert_run_ok, describe_run, play_recap, run, tool


def galaxy_version() -> str:
    text = (REPO_ROOT / "galaxy.yml").read_text(encoding="utf-8")
    m = re.search(r"^version:\s*(\S+)", text, re.M)
    assert m, "no version in galaxy.yml"
    return m.group(1)


def test_module_lists_agree():
    """The modules documented in the collection are the ones scripts/build-collection ships and the
    ones these tests (helpers.MODULES) check: a new module cannot be documented but left out."""
    documented = {p.stem for p in (REPO_ROOT / "collection" / "plugins" / "modules").glob("*.py")}
    script = (REPO_ROOT / "scripts" / "build-collection").read_text(encoding="utf-8")
    m = re.search(r"^modules=\(([^)]*)\)", script, re.M)
    assert m, "no modules=(...) list in scripts/build-collection"
    shipped = set(m.group(1).split())
    assert documented == shipped == set(MODULES), (
        f"docs {sorted(documented)}, scripts/build-collection {sorted(shipped)}, helpers.MODULES {sorted(MODULES)}"
    )


def test_tarball_holds_the_binaries_and_docs_and_no_build_junk(tarball, tarball_members):
    assert tarball.name == f"fleetpki-mtls-{galaxy_version()}.tar.gz"
    members = set(tarball_members)
    with tarfile.open(tarball) as tar:
        for m in MODULES:
            assert f"plugins/modules/{m}.py" in members, f"docs {m}.py missing from {tarball.name}"
            assert f"bin/{m}" in members, f"binary bin/{m} missing from {tarball.name}"
            binary = tar.getmember(f"bin/{m}")
            assert binary.isfile() and binary.mode & 0o111, f"bin/{m} is not an executable file in the tarball"
            link = tar.getmember(f"plugins/modules/{m}")
            assert link.issym() and link.linkname == f"../../bin/{m}", (
                f"plugins/modules/{m} must be a symlink to ../../bin/{m} (see scripts/build-collection)"
            )
    for role in ROLES:
        assert f"roles/{role}/tasks/main.yml" in members
        assert f"roles/{role}/meta/argument_specs.yml" in members
    assert "playbooks/site.yml" in members
    # build_ignore in galaxy.yml: caches, tool configs, scenarios and nested tarballs stay out.
    junk = [
        name
        for name in members
        if re.search(r"(^|/)(\.ansible|\.ansible-lint|extensions|tests/output|__pycache__|\.pytest_cache)(/|$)", name)
        or name.endswith((".tar.gz", ".pyc"))
    ]
    assert not junk, f"build output or caches in the tarball: {sorted(junk)}"


def test_tarball_holds_the_license_texts(tarball, tarball_members):
    """LICENSE and the text of every license galaxy.yml lists (LICENSES/<SPDX id>.txt) travel in the
    tarball as regular files with the repository's bytes (collection/ holds symlinks to them)."""
    licenses = yaml.safe_load((REPO_ROOT / "galaxy.yml").read_text(encoding="utf-8"))["license"]
    members = set(tarball_members)
    with tarfile.open(tarball) as tar:
        for name in ["LICENSE", *(f"LICENSES/{spdx}.txt" for spdx in licenses)]:
            assert name in members, f"{name} missing from {tarball.name}"
            member = tar.getmember(name)
            assert member.isfile(), f"{name} is not a regular file in {tarball.name}"
            assert tar.extractfile(member).read() == (REPO_ROOT / name).read_bytes(), f"{name} in {tarball.name} differs from the repository's"


def test_installed_collection_runs_the_built_binaries(installed):
    manifest = json.loads((installed / "MANIFEST.json").read_text(encoding="utf-8"))["collection_info"]
    assert (manifest["namespace"], manifest["name"], manifest["version"]) == ("fleetpki", "mtls", galaxy_version())
    for m in MODULES:
        shipped = installed / "plugins" / "modules" / m
        assert shipped.is_file() and os.access(shipped, os.X_OK), f"{shipped} is not an executable file"
        # The tarball carries the binaries the other tests run (helpers.BIN_DIR), byte for byte.
        assert shipped.read_bytes() == helpers.binary_path(m).read_bytes(), (
            f"{shipped} differs from {helpers.binary_path(m)}: rebuild the collection (scripts/build-collection)"
        )


def test_only_docs_files_are_listed_as_modules(installed):
    """ansible-doc -l maps each module name to the LAST file of that name os.listdir() returns,
    symlinks excepted: a regular binary next to its .py would win or lose by directory order and,
    when it wins, drop the module from the list ("documentation formatting error"). So apart from
    symlinks, plugins/modules/ holds only the docs-only .py files, whatever the filesystem's order."""
    modules_dir = installed / "plugins" / "modules"
    regular = sorted(p.name for p in modules_dir.iterdir() if not p.is_symlink())
    assert regular == sorted(f"{m}.py" for m in MODULES), f"plugins/modules/ holds {regular}"
    for m in MODULES:
        link = modules_dir / m
        assert link.is_symlink() and os.readlink(link) == f"../../bin/{m}", f"{link} is not the symlink to ../../bin/{m}"


def test_ansible_doc_lists_every_module(ansible_env):
    proc = assert_run_ok(run([tool("ansible-doc"), "-l", "fleetpki.mtls"], env=ansible_env, timeout=120))
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert listed == {f"fleetpki.mtls.{m}" for m in MODULES}, describe_run(proc)
    # 2.19 skips a module whose docs it cannot read with only a warning: there must be none.
    assert "documentation formatting error" not in proc.stderr, describe_run(proc)
    assert "[WARNING]" not in proc.stderr, describe_run(proc)


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_shows_every_option(module, ansible_env, installed):
    proc = assert_run_ok(run([tool("ansible-doc"), f"fleetpki.mtls.{module}"], env=ansible_env, timeout=120))
    out = proc.stdout
    # The header names the docs file of the installed copy, not the source tree (2.16-2.18 print
    # the name in capitals).
    assert f"fleetpki.mtls.{module}" in out.splitlines()[0].lower(), out[:500]
    assert str(installed / "plugins" / "modules") in out.splitlines()[0], out[:500]
    assert "OPTIONS" in out and "EXAMPLES" in out and "RETURN VALUES" in out, out[:3000]
    spec = json.loads(assert_run_ok(run([str(installed / "plugins" / "modules" / module), "--argument-spec"], env=ansible_env, timeout=30)).stdout)
    options_text = out.split("OPTIONS", 1)[1].split("ATTRIBUTES", 1)[0]
    for option in spec["argument_spec"]:
        # Each option as "- name" ("= name" when required) at the start of a line.
        assert re.search(rf"^[-=] {re.escape(option)}\b", options_text, re.M), f"ansible-doc {module} does not show option {option}"


def test_ansible_doc_lists_the_roles_with_their_entry_points(ansible_env):
    proc = assert_run_ok(run([tool("ansible-doc"), "-t", "role", "-l", "--json", "fleetpki.mtls"], env=ansible_env, timeout=120))
    listed = json.loads(proc.stdout)
    assert set(listed) == {f"fleetpki.mtls.{r}" for r in ROLES}, describe_run(proc)
    for role, info in listed.items():
        # meta/argument_specs.yml gives each role a documented main entry point.
        assert info["entry_points"].get("main", "").strip(), f"{role}: no documented main entry point: {info}"


def test_playbook_with_fqcns_runs_from_the_installed_path(ansible_env, tmp_path):
    """A playbook outside the source tree, with only the installed copy on the collections path:
    a module by its FQCN (twice: the second run changes nothing) and a role by its FQCN (check mode)."""
    work = tmp_path / "play"
    work.mkdir()
    ca = work / "ca"
    playbook = work / "fqcn.yml"
    playbook.write_text(
        textwrap.dedent(
            f"""\
            ---
            - name: Use the installed collection by its FQCNs
              hosts: localhost
              connection: local
              gather_facts: false
              vars:
                ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
              tasks:
                - name: Create a CA with the module's FQCN
                  fleetpki.mtls.mtls_ca_init:
                    root_cert_path: {ca}/root.cert.pem
                    root_privatekey_path: {ca}/root.key.pem
                    intermediate_cert_path: {ca}/intermediate.cert.pem
                    intermediate_privatekey_path: {ca}/intermediate.key.pem
                    chain_path: {ca}/chain.pem
                  register: init

                - name: Check the role's argument spec by its FQCN (check mode, fresh directory)
                  ansible.builtin.include_role:
                    name: fleetpki.mtls.ca_setup
                  vars:
                    ca_setup_dir: {work}/role-ca
                    ca_setup_owner: ""
                  when: ansible_check_mode

                - name: Record the result
                  ansible.builtin.copy:
                    content: "{{{{ init | to_json }}}}"
                    dest: {work}/result-{{{{ 'check' if ansible_check_mode else 'run' }}}}.json
                    mode: "0600"
                  check_mode: false
            """
        ),
        encoding="utf-8",
    )

    def play(*args: str):
        proc = assert_run_ok(run([tool("ansible-playbook"), str(playbook), *args], env=ansible_env, cwd=work))
        recap = play_recap(proc.stdout)
        assert recap["localhost"]["failed"] == 0 and recap["localhost"]["unreachable"] == 0, describe_run(proc)
        return json.loads((work / f"result-{'check' if '--check' in args else 'run'}.json").read_text())

    first = play()
    assert first["changed"] is True and first["root_created"] is True, first
    for name in ("root.cert.pem", "root.key.pem", "intermediate.cert.pem", "intermediate.key.pem", "chain.pem"):
        assert (ca / name).is_file(), f"{name} not written"
    assert helpers.file_mode(ca / "intermediate.key.pem") == 0o600
    helpers.assert_openssl_verifies(ca / "intermediate.cert.pem", ca / "root.cert.pem", ca / "root.cert.pem", "any")

    second = play()
    assert second["changed"] is False, second

    snapshot = helpers.tree_snapshot(work / "role-ca")
    checked = play("--check")
    assert checked["changed"] is False, checked
    assert helpers.tree_snapshot(work / "role-ca") == snapshot == {}, "check mode created the role's CA directory"
