"""Guards a first-week user runs into, through the installed collection's site playbook: a role
variable with a typo fails naming the closest valid one, no identity proof means no start, and an
SQS outage fails only the nodes that wait for a certificate."""

from __future__ import annotations

import socket
import uuid

from collection_helpers import describe_run, play_recap, run, tool, write_fleet


def assert_nothing_done(fleet) -> None:
    """The playbook stopped before the CA play: no CA, no root, no node directory."""
    made = [p for p in (fleet.ca_dir, fleet.offline_root_dir, fleet.root_ca, *(n["path"] for n in fleet.nodes.values())) if p.exists()]
    assert not made, f"the playbook changed things before failing: {made}"


def test_a_role_variable_typo_fails_the_site_before_anything_naming_the_closest(make_fleet):
    fleet = make_fleet(2)
    proc = fleet.site("-e", '{"mtls_client_subject_alt_names": ["DNS:typo.fleet.internal"]}')
    assert proc.returncode != 0, describe_run(proc)
    out = proc.stdout + proc.stderr
    assert "mtls_client_subject_alt_names is not a variable of any fleetpki.mtls role: did you mean mtls_client_subject_alt_name?" in out, describe_run(proc)
    assert_nothing_done(fleet)


def test_a_role_refuses_an_unknown_variable_of_another_role_too(make_fleet):
    """Run on its own (not through the site playbook), mtls_client refuses a misspelt ca_worker_ variable."""
    fleet = make_fleet(1)
    playbook = fleet.dir / "client.yml"
    playbook.write_text(
        "- name: Enrol\n  hosts: fleet\n  gather_facts: false\n  roles:\n    - role: fleetpki.mtls.mtls_client\n"
        f"      vars:\n        mtls_client_ca_cert_src: {fleet.root_ca}\n",
        encoding="utf-8",
    )
    proc = run([tool("ansible-playbook"), "-i", str(fleet.inventory), str(playbook), "-e", "ca_worker_enrolment_secrets={}"], env=fleet.env, cwd=fleet.dir)
    assert proc.returncode != 0, describe_run(proc)
    expected = "ca_worker_enrolment_secrets is not a variable of any fleetpki.mtls role: did you mean ca_worker_enrollment_secrets?"
    assert expected in proc.stdout, describe_run(proc)
    assert "TASK [fleetpki.mtls.mtls_client : Submit" not in proc.stdout, "the role went on after the unknown variable"


def test_the_site_without_an_identity_proof_fails_before_anything_naming_the_choices(make_fleet):
    fleet = make_fleet(2)
    text = fleet.inventory.read_text(encoding="utf-8")
    assert "    ca_worker_identity_proof: enrollment_secret\n" in text
    fleet.inventory.write_text(text.replace("    ca_worker_identity_proof: enrollment_secret\n", ""), encoding="utf-8")
    proc = fleet.site()
    assert proc.returncode != 0, describe_run(proc)
    assert "ca_worker_identity_proof is not set" in proc.stdout, describe_run(proc)
    for choice in ("sqs_sender_id", "enrollment_secret", "none"):
        assert choice in proc.stdout.split("ca_worker_identity_proof is not set", 1)[1][:800], describe_run(proc)
    assert_nothing_done(fleet)


def test_sqs_down_leaves_nodes_that_are_not_due_green(tmp_path, ansible_env, own_sqs):
    prefix = f"t{uuid.uuid4().hex[:10]}"
    queues = own_sqs.create_queues(prefix)
    env = dict(ansible_env)
    env.update(own_sqs.env)
    fleet = write_fleet(tmp_path / "fleet", 3, queues, env)
    hosts = {"ca1", *fleet.nodes}
    enrolled = fleet.site()
    assert enrolled.returncode == 0, describe_run(enrolled)
    inventory = fleet.inventory.read_text(encoding="utf-8")

    # 1. SQS down, nobody due: every host green, although the CA drain cannot reach SQS.
    own_sqs.kill()
    quiet = fleet.site()
    recap = play_recap(quiet.stdout)
    assert set(recap) == hosts, describe_run(quiet)
    assert quiet.returncode == 0 and not any(r["failed"] for r in recap.values()), describe_run(quiet)
    assert "The CA drain on ca1 failed" in quiet.stdout, "the drain's failure was not reported"

    # 2. SQS back (empty, its queues re-created), but the CA host cannot reach it; node1 is due
    #    (a forced rotation) and submits: it fails for want of the drain, the others stay green.
    own_sqs.start()
    assert own_sqs.create_queues(prefix) == queues
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
        fleet.inventory.write_text(
            inventory.replace("  vars:\n", f"  vars:\n    ca_worker_aws_endpoint_url: {closed}\n", 1).replace(
                "        node1:\n", "        node1:\n          mtls_client_force: true\n"
            ),
            encoding="utf-8",
        )
        due = fleet.site()
    recap = play_recap(due.stdout)
    assert due.returncode != 0, describe_run(due)
    assert {h: r["failed"] for h, r in recap.items()} == {"ca1": 0, "node1": 1, "node2": 0, "node3": 0}, describe_run(due)
    failed_task = due.stdout.split("fatal: [node1]", 1)[0].rsplit("TASK [", 1)[1].split("]", 1)[0]
    assert failed_task == "fleetpki.mtls.mtls_client : Fail the nodes whose request waits for the failed drain", describe_run(due)
    assert "The CA drain on ca1 failed" in due.stdout
    for node in fleet.nodes.values():
        assert (node["path"] / "current" / "cert.pem").exists()
