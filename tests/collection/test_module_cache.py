"""The module cache of the collection's action plugin (plugins/plugin_utils/cached_binary.py).

A binary module is transferred on every task by Ansible; our action keeps one copy per host,
named by its SHA-256, and runs it with the arguments on stdin in one command. These tests run the
real ansible-playbook on the installed collection (local connection: it sends stdin as SSH does)
with their own remote_tmp, and read Ansible's -vvv log for what was transferred and run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collection_helpers import assert_run_ok, describe_run, run, tool

INSTANCE_ID = "i-0cac4e0000000000a"
CACHE_DIR_NAME = "fleetpki.mtls-modules"


def fetch_task(path: str | Path, ca_path: Path, keywords: str) -> str:
    """The play's "Fetch" task: mtls_cert_fetch on a node with no pending request (it answers at
    once, without SQS), plus `keywords`, task-level YAML lines indented by 6; no final newline."""
    return (
        "    - name: Fetch\n"
        "      fleetpki.mtls.mtls_cert_fetch:\n"
        f"        instance_id: {INSTANCE_ID}\n"
        f"        path: {path}\n"
        f"        ca_path: {ca_path}\n"
        + keywords
    ).rstrip("\n")


@pytest.fixture
def cache_play(tmp_path, ansible_env, installed):
    """play(*extra_args) runs mtls_cert_fetch in check mode on a node with no pending request (it
    answers without SQS) and returns (CompletedProcess, the task's result)."""
    (tmp_path / "ca.pem").write_text("", encoding="utf-8")
    result_file = tmp_path / "result.json"
    playbook = tmp_path / "play.yml"
    fetch = fetch_task(
        tmp_path / "pki",
        tmp_path / "ca.pem",
        "      check_mode: true\n"
        "      environment:\n"
        "        FLEETPKI_TEST_MARKER: from-the-environment-keyword\n"
        "      register: fetched\n",
    )
    playbook.write_text(
        f"""
- name: Fetch in check mode
  hosts: all
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
  tasks:
{fetch}
    - name: Keep the result
      ansible.builtin.copy:
        content: "{{{{ fetched | to_json }}}}"
        dest: {result_file}
        mode: "0600"
      check_mode: false
""",
        encoding="utf-8",
    )
    env = dict(ansible_env, ANSIBLE_REMOTE_TEMP=str(tmp_path / "remote-tmp"))

    def play(*extra: str, **more_env: str):
        result_file.unlink(missing_ok=True)
        proc = run([tool("ansible-playbook"), "-i", "node1,", "-c", "local", "-vvv", *extra, str(playbook)], env=dict(env, **more_env), cwd=tmp_path)
        assert_run_ok(proc)
        return proc, json.loads(result_file.read_text(encoding="utf-8"))

    play.cache_dir = tmp_path / "remote-tmp" / CACHE_DIR_NAME
    play.binary = installed / "plugins" / "modules" / "mtls_cert_fetch"
    return play


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_task_log(proc) -> list[str]:
    """The -vvv lines of the module's task (the play's copy task transfers files of its own)."""
    section = proc.stdout.split("TASK [Fetch]")[1].split("TASK [")[0]
    return section.splitlines()


def transferred_binary(proc) -> bool:
    """Ansible's standard path: the binary is PUT into its temporary directory."""
    return any(line.startswith("<node1> PUT ") and "mtls_cert_fetch" in line for line in fetch_task_log(proc))


def sent_binary(proc) -> bool:
    """The cache's miss path: the binary goes on the stdin of the command that caches and runs it."""
    return any("fleetpki.mtls: mtls_cert_fetch is not cached on this host: sending it" in line for line in fetch_task_log(proc))


def remote_commands(proc) -> list[str]:
    """The task's remote commands as -vvv logs them: an EXEC line and the lines of the command
    that follow it (ours span several), up to the next line -vvv starts itself."""
    commands, current = [], None
    for line in fetch_task_log(proc):
        if line.startswith(("<node1> ", "ok: [", "changed: [", "fatal: [", "skipping: [")):
            if current is not None:
                commands.append("\n".join(current))
            current = [line] if line.startswith("<node1> EXEC ") else None
        elif current is not None:
            current.append(line)
    if current is not None:
        commands.append("\n".join(current))
    return commands


def test_first_run_caches_the_binary_and_later_runs_transfer_nothing(cache_play):
    digest = sha256(cache_play.binary.resolve())
    cache_play.cache_dir.mkdir(parents=True, mode=0o700)
    older_release = cache_play.cache_dir / f"mtls_cert_fetch-{'0' * 64}"
    recent_release = cache_play.cache_dir / f"mtls_cert_fetch-{'1' * 64}"
    for copy, age_hours in ((older_release, 25), (recent_release, 23)):
        copy.write_bytes(b"another release of the module")
        copy.chmod(0o700)
        stamp = time.time() - age_hours * 3600
        os.utime(copy, (stamp, stamp))

    first, first_result = cache_play()
    assert sent_binary(first), describe_run(first)
    # Two commands (the check, then cache-and-run with the binary on stdin): no temporary
    # directory, no sftp, no chmod, no clean-up.
    assert len(remote_commands(first)) == 2, remote_commands(first)
    assert not any(line.startswith("<node1> PUT ") for line in fetch_task_log(first)), describe_run(first)
    assert first_result["status"] == "no_request", first_result
    cached = cache_play.cache_dir / f"mtls_cert_fetch-{digest}"
    assert cached.is_file()
    assert sha256(cached) == digest
    assert stat.S_IMODE(cached.stat().st_mode) == 0o700
    assert stat.S_IMODE(cache_play.cache_dir.stat().st_mode) == 0o700
    assert not older_release.exists(), "the copy of a release cached over a day ago was left behind"
    # A copy cached within the day may be in use by a controller on that release: it stays.
    assert sorted(p.name for p in cache_play.cache_dir.iterdir()) == sorted([cached.name, recent_release.name]), "a partial copy was left behind"
    assert [p.name for p in cache_play.cache_dir.parent.iterdir()] == [CACHE_DIR_NAME], "something was left in remote_tmp"

    second, second_result = cache_play()
    assert "ran mtls_cert_fetch from the module cache" in second.stdout, describe_run(second)
    assert not any(line.startswith("<node1> PUT ") for line in fetch_task_log(second)), describe_run(second)
    assert second_result["status"] == "no_request", second_result
    assert second_result["changed"] is False
    # One command for the task: no temporary directory, no chmod, no args file.
    assert len(remote_commands(second)) == 1, remote_commands(second)


def test_arguments_travel_on_stdin_not_on_the_command_line(cache_play):
    """Options can hold secrets (AWS keys): a command line is visible to every user of the host."""
    for _ in range(2):  # the transferring run and the cached run
        proc, result = cache_play()
        exec_lines = remote_commands(proc)
        assert exec_lines, describe_run(proc)
        assert not any(INSTANCE_ID in line for line in exec_lines), exec_lines
        assert result["status"] == "no_request"
        # The task's `environment` still reaches the module, on the command line as Ansible puts it.
        assert any("FLEETPKI_TEST_MARKER=from-the-environment-keyword" in line for line in exec_lines), exec_lines


def test_a_swapped_cached_copy_is_never_run(cache_play, tmp_path):
    cache_play()
    digest = sha256(cache_play.binary.resolve())
    cached = cache_play.cache_dir / f"mtls_cert_fetch-{digest}"
    ran = tmp_path / "impostor-ran"
    cached.write_text(f'#!/bin/sh\ntouch {ran}\necho \'{{"changed": true, "status": "impostor"}}\'\n', encoding="utf-8")
    cached.chmod(0o700)

    proc, result = cache_play()
    assert not ran.exists(), "a cached file whose SHA-256 is not the module's was run"
    assert result["status"] == "no_request", result
    assert sent_binary(proc), describe_run(proc)
    assert sha256(cached) == digest, "the swapped copy was not replaced by the module"


def test_a_cache_directory_others_can_enter_is_neither_run_from_nor_written(cache_play):
    """A directory that is not 0700 could be written by others between the check and the run."""
    cache_play()
    cached = cache_play.cache_dir / f"mtls_cert_fetch-{sha256(cache_play.binary.resolve())}"
    before = cached.stat()
    cache_play.cache_dir.chmod(0o755)
    for _ in range(2):
        proc, result = cache_play()
        assert "ran mtls_cert_fetch from the module cache" not in proc.stdout, describe_run(proc)
        assert sent_binary(proc), describe_run(proc)
        assert result["status"] == "no_request", result
    after = cached.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "the copy in a directory open to others was replaced"
    assert [p.name for p in cache_play.cache_dir.iterdir()] == [cached.name], "something was written into a directory open to others"
    assert stat.S_IMODE(cache_play.cache_dir.stat().st_mode) == 0o755, "the directory's mode was changed behind the user's back"
    # The runs' private directories are gone too.
    assert sorted(p.name for p in cache_play.cache_dir.parent.iterdir()) == [CACHE_DIR_NAME]


def test_a_cached_copy_others_can_read_or_run_is_replaced(cache_play):
    cache_play()
    cached = cache_play.cache_dir / f"mtls_cert_fetch-{sha256(cache_play.binary.resolve())}"
    cached.chmod(0o755)
    inode = cached.stat().st_ino
    proc, result = cache_play()
    assert "ran mtls_cert_fetch from the module cache" not in proc.stdout, describe_run(proc)
    assert sent_binary(proc), describe_run(proc)
    assert result["status"] == "no_request", result
    assert cached.stat().st_ino != inode and stat.S_IMODE(cached.stat().st_mode) == 0o700


def test_the_module_runs_with_the_login_umask(tmp_path, ansible_env, installed):
    """The cache's own files are made under umask 077; the module's directories are not."""
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        """
- name: Create a CA
  hosts: all
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - name: CA
      fleetpki.mtls.mtls_ca_init:
        root_cert_path: "{{ ca_dir }}/root/root.pem"
        root_privatekey_path: "{{ ca_dir }}/root/root.key"
        intermediate_cert_path: "{{ ca_dir }}/intermediate/intermediate.pem"
        intermediate_privatekey_path: "{{ ca_dir }}/intermediate/intermediate.key"
        chain_path: "{{ ca_dir }}/chain/chain.pem"
""",
        encoding="utf-8",
    )
    modes = {}
    # The first run caches the binary (the command that sends it runs it too); the second runs
    # the cached copy; the third takes Ansible's standard path. All three must agree.
    for label, cache in (("sent", "true"), ("cached", "true"), ("standard", "false")):
        ca_dir = tmp_path / label
        proc = subprocess.run(
            [tool("ansible-playbook"), "-i", "node1,", "-c", "local", "-e", f"ca_dir={ca_dir}", "-e", f"fleetpki_mtls_module_cache={cache}", str(playbook)],
            env=dict(ansible_env, ANSIBLE_REMOTE_TEMP=str(tmp_path / "remote-tmp")),
            cwd=tmp_path, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
            preexec_fn=lambda: os.umask(0o022),
        )
        assert proc.returncode == 0, describe_run(proc)
        modes[label] = {str(p.relative_to(ca_dir)): stat.S_IMODE(p.stat().st_mode) for p in sorted(ca_dir.rglob("*"))}
    assert modes["sent"] == modes["cached"] == modes["standard"], modes
    assert modes["cached"]["chain"] == 0o755, modes


def test_the_cache_can_be_turned_off(cache_play):
    proc, result = cache_play("-e", "fleetpki_mtls_module_cache=false")
    assert "module cache not used: fleetpki_mtls_module_cache is false" in proc.stdout, describe_run(proc)
    assert transferred_binary(proc), describe_run(proc)
    assert any(line.startswith("<node1> PUT ") and line.rstrip().endswith("/args") for line in fetch_task_log(proc)), describe_run(proc)
    assert result["status"] == "no_request", result
    assert not cache_play.cache_dir.exists()


def test_an_async_task_takes_the_standard_path(tmp_path, ansible_env, installed):
    (tmp_path / "ca.pem").write_text("", encoding="utf-8")
    playbook = tmp_path / "play.yml"
    fetch = fetch_task(tmp_path / "pki", tmp_path / "ca.pem", "      async: 60\n      poll: 1\n      register: fetched\n")
    playbook.write_text(
        f"""
- name: Fetch asynchronously
  hosts: all
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
  tasks:
{fetch}
    - name: The module ran
      ansible.builtin.assert:
        that: fetched.status == "no_request"
""",
        encoding="utf-8",
    )
    env = dict(ansible_env, ANSIBLE_REMOTE_TEMP=str(tmp_path / "remote-tmp"), ANSIBLE_ASYNC_DIR=str(tmp_path / "async"))
    proc = run([tool("ansible-playbook"), "-i", "node1,", "-c", "local", "-vvv", str(playbook)], env=env, cwd=tmp_path)
    assert_run_ok(proc)
    assert "module cache not used: async task" in proc.stdout, describe_run(proc)
    assert not (tmp_path / "remote-tmp" / CACHE_DIR_NAME).exists()


def test_become_uses_the_cache_only_with_pipelining(cache_play, tmp_path):
    """Through sudo, stdin needs what pipelining needs (no requiretty): Ansible makes that opt-in.
    A stand-in sudo (the tests run as root, without sudo) makes Ansible wrap the commands as it
    does for a real one, BECOME-SUCCESS line included."""
    sudo_log = tmp_path / "sudo.log"
    stand_in = tmp_path / "stand-in-sudo"
    stand_in.write_text(
        "#!/bin/sh\n"
        f"echo \"$*\" >> {sudo_log}\n"
        'while [ $# -gt 0 ]; do case "$1" in -u|-p) shift 2 ;; -*) shift ;; *) break ;; esac; done\n'
        'exec "$@"\n',
        encoding="utf-8",
    )
    stand_in.chmod(0o755)
    become = ("--become", "-e", f"ansible_become_exe={stand_in}")

    proc, result = cache_play(*become, ANSIBLE_BECOME_ALLOW_SAME_USER="true")
    assert "module cache not used: become without pipelining" in proc.stdout, describe_run(proc)
    assert result["status"] == "no_request", result
    assert not cache_play.cache_dir.exists()

    for _ in range(2):
        proc, result = cache_play(*become, "-e", "ansible_pipelining=true", ANSIBLE_BECOME_ALLOW_SAME_USER="true")
        assert result["status"] == "no_request", result
    assert "ran mtls_cert_fetch from the module cache" in proc.stdout, describe_run(proc)
    assert "fleetpki.mtls-modules" in sudo_log.read_text(encoding="utf-8"), "the cache commands did not go through become"


def test_a_binary_that_arrives_altered_is_neither_run_nor_cached(cache_play, tmp_path, ansible_env):
    """The host's sha256sum disagrees with the controller (what a corrupted transfer looks like):
    the task fails naming the problem, nothing runs and nothing is cached."""
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    (fake_bin / "sha256sum").write_text("#!/bin/sh\ncat > /dev/null\necho '" + "ab" * 32 + "  -'\n", encoding="utf-8")
    (fake_bin / "sha256sum").chmod(0o755)
    proc = run(
        [tool("ansible-playbook"), "-i", "node1,", "-c", "local", "-vvv", str(tmp_path / "play.yml")],
        env=dict(ansible_env, ANSIBLE_REMOTE_TEMP=str(tmp_path / "remote-tmp"), PATH=f"{fake_bin}:{ansible_env['PATH']}"),
        cwd=tmp_path,
    )
    assert proc.returncode != 0, describe_run(proc)
    assert "arrived on the host with another SHA-256 than the controller's binary" in proc.stdout, describe_run(proc)
    assert "no request is pending" not in proc.stdout, "the module ran although its SHA-256 did not match"
    assert not any(cache_play.cache_dir.iterdir()), "a binary whose SHA-256 did not match was cached"
    assert sorted(p.name for p in cache_play.cache_dir.parent.iterdir()) == [CACHE_DIR_NAME]


def test_a_host_without_the_tools_takes_the_standard_path(cache_play, tmp_path):
    """No sha256sum on the host: nothing can be checked, so nothing is cached or run from a cache;
    Ansible's own way still works."""
    tools = tmp_path / "host-tools"
    tools.mkdir()
    for name in ("stat", "head", "cut", "id", "mktemp", "find", "cat", "mkdir", "chmod", "rm", "mv", "sleep"):
        found = shutil.which(name)
        assert found, name
        (tools / name).symlink_to(found)
    proc, result = cache_play(PATH=f"{tools}:{Path(tool('ansible-playbook')).parent}")
    assert "module cache not used: the host cannot keep it" in proc.stdout, describe_run(proc)
    assert transferred_binary(proc), describe_run(proc)
    assert result["status"] == "no_request", result
    assert not cache_play.cache_dir.exists()


def test_over_ssh_each_host_gets_the_binary_once(tmp_path, ansible_env, installed):
    """Real SSH (a private sshd on loopback, the SSH play's, from bench/ssh_play.py): the first
    play sends the binary to each host on the stdin of one command, the second sends nothing."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import ssh_play  # the benchmark's private sshd and control-master clean-up

    sshd = ssh_play.PrivateSshd(tmp_path)
    control_root = tmp_path / "control"
    hosts = ("node-a", "node-b")
    try:
        try:
            sshd.start()
        except SystemExit as exc:  # the bench's way of saying sshd is missing or failed
            pytest.fail(f"private sshd: {exc} (.ci/run installs openssh-server)", pytrace=False)
        (tmp_path / "ca.pem").write_text("", encoding="utf-8")
        inventory = tmp_path / "inventory.ini"
        inventory.write_text(
            "\n".join(
                [f"{h} ansible_remote_tmp={tmp_path}/hosts/{h}/remote-tmp" for h in hosts]
                + [
                    "[all:vars]",
                    "ansible_host=127.0.0.1",
                    f"ansible_port={sshd.port}",
                    "ansible_user=root",
                    f"ansible_ssh_private_key_file={sshd.client_key}",
                    "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes -o LogLevel=ERROR'",
                    f"ansible_control_path_dir={control_root}/{{{{ inventory_hostname }}}}",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        for h in hosts:
            (control_root / h).mkdir(parents=True)
        playbook = tmp_path / "play.yml"
        pki = f'"{tmp_path}/hosts/{{{{ inventory_hostname }}}}/pki"'
        fetch = fetch_task(pki, tmp_path / "ca.pem", "      check_mode: true\n      register: fetched\n")
        playbook.write_text(
            f"""
- name: Fetch in check mode over SSH
  hosts: all
  gather_facts: false
  tasks:
{fetch}
    - name: The module answered
      ansible.builtin.assert:
        that: fetched.status == "no_request"
""",
            encoding="utf-8",
        )
        for run_no in (1, 2):
            proc = run([tool("ansible-playbook"), "-i", str(inventory), "-vvv", str(playbook)], env=ansible_env, cwd=tmp_path)
            assert_run_ok(proc)
            sent = proc.stdout.count("fleetpki.mtls: mtls_cert_fetch is not cached on this host: sending it")
            cached = proc.stdout.count("fleetpki.mtls: ran mtls_cert_fetch from the module cache")
            assert (sent, cached) == ((2, 0) if run_no == 1 else (0, 2)), describe_run(proc)
            assert " PUT " not in proc.stdout, describe_run(proc)
        digest = sha256(installed / "plugins" / "modules" / "mtls_cert_fetch")
        for h in hosts:
            copy = tmp_path / "hosts" / h / "remote-tmp" / CACHE_DIR_NAME / f"mtls_cert_fetch-{digest}"
            assert sha256(copy) == digest and stat.S_IMODE(copy.stat().st_mode) == 0o700
    finally:
        ssh_play.close_masters(control_root)
        sshd.stop()


def test_a_module_that_dies_reports_its_own_exit_status(make_fleet):
    """A module killed on the host (here by the test crash switch: SIGABRT, exit status 134 from
    the shell) fails with its own status and stderr, on the path that sends the binary and on the
    one that runs the cached copy: no shell syntax error of the command around it in their place."""
    fleet = make_fleet(1)
    # Run 1 sends mtls_cert_fetch to the host and dies once the answer is staged (point 2); run 2
    # runs the cached copy, which completes the staged install and dies before the switch (point 3).
    # The local connection passes the controller's environment to the module.
    for run_no, point in ((1, 2), (2, 3)):
        proc = run(fleet.site_command(), env=dict(fleet.env, FLEETPKI_TEST_CRASH_AT=str(point)), cwd=fleet.dir)
        fatal = [line for line in proc.stdout.splitlines() if line.startswith("fatal: [") and "test crash at point" in line]
        assert proc.returncode != 0 and len(fatal) == 1, f"run {run_no}: expected one task killed at point {point}\n{describe_run(proc)}"
        result = json.loads(fatal[0].split(" => ", 1)[1])
        assert result["rc"] == 134, f"run {run_no}: exit status {result['rc']} (the module's is 134, SIGABRT): {result}"
        assert result["module_stderr"].strip().splitlines() == [f"fleetpki: test crash at point {point}", "Aborted"], result["module_stderr"]
