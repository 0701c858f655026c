"""Every module's EXAMPLES block is real: taken from the installed docs (`ansible-doc --json`), its
placeholders substituted in a copy, and run with ansible-playbook against the local SQS server.

Substitutions, and nothing else:
  - an SQS queue URL `https://sqs.<region>.amazonaws.com/<account>/<name>` becomes the local
    server's URL of the queue <name>, created beforehand in <region> (as a user creates them on AWS);
  - absolute paths under /etc/ and /srv/ move under the test's directory;
  - the owner/group `www-data` becomes the current user, unless the tests run as root on a system
    that has www-data.
The examples that name no region rely on the environment, as on a real node: AWS_REGION is the
examples' region. The setup a user does outside the examples is done by the test between plays:
the pinned root CA certificate on the node and the signing policy file on the CA host.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import secrets
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

import helpers
from collection_helpers import MODULES, assert_run_ok, describe_run, openssl_verify_crl, play_recap, run, tool

EXAMPLES_REGION = "eu-west-1"
QUEUE_URL = re.compile(r"https://sqs\.(?P<region>[a-z0-9-]+)\.amazonaws\.com/(?P<account>\d{12})/(?P<name>[A-Za-z0-9_-]+)")
ABS_PATH = re.compile(r"(?<![\w/.:-])/(?P<top>etc|srv)/")

# The order the examples run in, as plays; each (module, index) is one task of that module's
# EXAMPLES. Every example task must appear exactly once (test_every_example_task_is_run).
PLAYS = {
    "ca": [("mtls_ca_init", 0), ("mtls_ca_init", 1)],
    "node": [
        ("mtls_csr_submit", 0), ("mtls_ca_sign", 0), ("mtls_cert_fetch", 0), ("mtls_cert_fetch", 1), ("mtls_cert_fetch", 2),
        ("mtls_cert_info", 0), ("mtls_cert_info", 1),
    ],
    "web": [("mtls_csr_submit", 1), ("mtls_ca_sign", 1)],
    "revoke": [("mtls_ca_revoke", 0), ("mtls_ca_revoke", 1)],
    # On the inventory's fleet group (its example reads groups['fleet']): see FLEET_INVENTORY.
    "reply-queues": [("mtls_reply_queues", 0)],
    # The node is retired (what mtls_client_state=absent does with its queue).
    "retire": [("mtls_reply_queues", 1)],
}
# For the plays that need an inventory: the node of the examples is the fleet; the web node left it.
FLEET_INVENTORY = {
    "all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"},
        "children": {"fleet": {"hosts": {"node1": {"mtls_client_instance_id": "i-0123456789abcdef0"}}}},
    }
}


@pytest.fixture(scope="module")
def examples(ansible_env) -> dict[str, list[dict]]:
    """module -> its EXAMPLES as a list of tasks (the installed docs, as ansible-doc reports them)."""
    out = {}
    for m in MODULES:
        proc = assert_run_ok(run([tool("ansible-doc"), "--json", f"fleetpki.mtls.{m}"], env=ansible_env, timeout=120))
        text = json.loads(proc.stdout)[f"fleetpki.mtls.{m}"]["examples"]
        tasks = yaml.safe_load(text)
        assert isinstance(tasks, list) and tasks, f"{m}: EXAMPLES is not a non-empty YAML list of tasks"
        out[m] = tasks
    return out


@pytest.fixture(scope="module")
def specs(installed, ansible_env) -> dict[str, dict]:
    out = {}
    for m in MODULES:
        proc = assert_run_ok(run([str(installed / "plugins" / "modules" / m), "--argument-spec"], env=ansible_env, timeout=30))
        out[m] = json.loads(proc.stdout)["argument_spec"]
    return out


def test_every_example_task_is_run(examples):
    planned = [item for tasks in PLAYS.values() for item in tasks]
    assert len(planned) == len(set(planned)), "an example task is planned twice"
    present = {(m, i) for m, tasks in examples.items() for i in range(len(tasks))}
    assert set(planned) == present, (
        f"examples not run: {sorted(present - set(planned))}; planned but missing: {sorted(set(planned) - present)} "
        "(place new EXAMPLES tasks in PLAYS)"
    )


@pytest.mark.parametrize("module", MODULES)
def test_examples_use_fqcns_and_documented_options(module, examples, specs):
    spec = specs[module]
    names = set(spec) | {a for o in spec.values() for a in o.get("aliases") or []}
    used_self = False
    for task in examples[module]:
        assert task.get("name"), f"{module}: an example task has no name: {task}"
        actions = [k for k in task if "." in k and k.split(".")[0] in ("fleetpki", "ansible")]
        assert len(actions) == 1, f"{module}: example {task['name']!r} must use one action by its FQCN: {sorted(task)}"
        action = actions[0]
        if action == f"fleetpki.mtls.{module}":
            used_self = True
            unknown = set(task[action]) - names
            assert not unknown, f"{module}: example {task['name']!r} uses undocumented options {sorted(unknown)}"
            for option in spec:
                if spec[option].get("required"):
                    assert option in task[action], f"{module}: example {task['name']!r} lacks required {option}"
        else:
            assert action.startswith("ansible.builtin."), f"{module}: example uses {action}"
    assert used_self, f"{module}: no example uses fleetpki.mtls.{module}"


class Substitution:
    def __init__(self, base: Path, sqs_endpoint: str):
        self.base = base
        self.sqs_endpoint = sqs_endpoint
        self.queue_urls: dict[str, str] = {}  # placeholder URL -> local URL
        self.owner_swap = not (os.geteuid() == 0 and _user_exists("www-data"))
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.group = grp.getgrgid(os.getegid()).gr_name

    def path(self, text: str) -> Path:
        """Where an example's absolute path lives in this test."""
        return Path(ABS_PATH.sub(lambda m: f"{self.base}/{m['top']}/", text))

    def apply(self, text: str) -> str:
        text = QUEUE_URL.sub(lambda m: self.queue_urls[m.group(0)], text)
        text = ABS_PATH.sub(lambda m: f"{self.base}/{m['top']}/", text)
        if self.owner_swap:
            text = re.sub(r"(?m)^(\s*owner:\s*)www-data\s*$", rf"\g<1>{self.user}", text)
            text = re.sub(r"(?m)^(\s*group:\s*)www-data\s*$", rf"\g<1>{self.group}", text)
        return text


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def test_examples_run_against_the_local_sqs_server(examples, ansible_env, sqs_server, tmp_path):
    base = tmp_path / "root"
    sub = Substitution(base, sqs_server.endpoint)

    # The queues the examples name, created in the examples' region (CSR queue with its DLQ).
    client = helpers.sqs_admin.make_client(sqs_server.endpoint, EXAMPLES_REGION)
    created = helpers.sqs_admin.create_default(client)
    by_name = {url.rstrip("/").rsplit("/", 1)[1]: url for url in created.values()}
    texts = {m: yaml.safe_dump(tasks, sort_keys=False) for m, tasks in examples.items()}
    for text in texts.values():
        for m in QUEUE_URL.finditer(text):
            assert m["region"] == EXAMPLES_REGION, f"an example uses region {m['region']}, the others {EXAMPLES_REGION}"
            assert m["name"] in by_name, f"an example names queue {m['name']}, not one of {sorted(by_name)}"
            sub.queue_urls[m.group(0)] = by_name[m["name"]]

    env = dict(ansible_env)
    env.update(sqs_server.env)
    env["AWS_REGION"] = EXAMPLES_REGION

    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump(FLEET_INVENTORY, sort_keys=False), encoding="utf-8")
    web_secret = secrets.token_hex(16)

    def play(name: str, tasks: list[dict] | None = None, hosts: str = "localhost"):
        """Run PLAYS[name] (the examples), or the given tasks, as one play (localhost, or hosts of
        FLEET_INVENTORY)."""
        tasks = tasks if tasks is not None else [examples[m][i] for m, i in PLAYS[name]]
        text = sub.apply(yaml.safe_dump(tasks, sort_keys=False))
        playbook = tmp_path / f"examples-{name}.yml"
        # The examples' vault variable (the web node's enrollment secret, in its submit and the CA's policy).
        header = {"name": f"EXAMPLES: {name}", "hosts": hosts, "gather_facts": False, "vars": {"web_enrollment_secret": web_secret}}
        if hosts == "localhost":
            header.update(connection="local", vars={**header["vars"], "ansible_python_interpreter": "{{ ansible_playbook_python }}"})
        playbook.write_text(
            "---\n" + yaml.safe_dump([{**header, "tasks": yaml.safe_load(text)}], sort_keys=False), encoding="utf-8"
        )
        cmd = [tool("ansible-playbook"), str(playbook)]
        if hosts != "localhost":
            cmd[1:1] = ["-i", str(inventory)]
        proc = run(cmd, env=env, cwd=tmp_path)
        (tmp_path / f"examples-{name}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
        recap = play_recap(proc.stdout)
        assert proc.returncode == 0 and not any(r["failed"] or r["unreachable"] for r in recap.values()), describe_run(proc)
        return proc

    # 1. The CA examples: the CA the other examples use, and a P-384 one in another place.
    play("ca")
    ca_dir = sub.path("/etc/fleetpki/ca")
    root_cert = ca_dir / "root.cert.pem"
    for name in ("root.cert.pem", "intermediate.cert.pem", "intermediate.key.pem", "chain.pem"):
        assert (ca_dir / name).is_file(), f"mtls_ca_init example 1 did not write {name}"
    assert helpers.file_mode(ca_dir / "intermediate.key.pem") == 0o400, "example 1 asks for mode 0400"
    assert "Example Corp" in helpers.load_cert(root_cert).subject.rfc4514_string()
    offline = sub.path("/srv/offline-ca")
    p384 = helpers.load_cert(offline / "issued" / "intermediate.cert.pem")
    assert isinstance(p384.public_key(), ec.EllipticCurvePublicKey) and p384.public_key().curve.name == "secp384r1"
    assert helpers.common_name(p384) == "Example Fleet Intermediate CA"
    lifetime = p384.not_valid_after_utc - p384.not_valid_before_utc
    assert 364 <= lifetime.days <= 366, f"intermediate_lifetime_days: 365 gave {lifetime}"

    # What a user sets up beside the examples: the pinned CA on the node, the policy on the CA host.
    pinned = sub.path("/etc/fleetpki/root-ca.pem")
    pinned.write_bytes(root_cert.read_bytes())
    helpers.write_policy(
        ca_dir / "policy.json",
        instances=[{"instance_id_pattern": "i-*", "dns_suffixes": [".fleet.internal"], "ip_networks": ["10.0.0.0/8"]}],
    )

    # 2. A node: submit, the CA drains, the node fetches (waiting, then without waiting) and shows it.
    proc = play("node")
    tls = sub.path("/etc/fleetpki/tls")
    current = tls / "current"
    for purpose in ("sslclient", "sslserver"):
        helpers.assert_openssl_verifies(current / "cert.pem", root_cert, current / "chain.pem", purpose)
    cert = helpers.load_cert(current / "cert.pem")
    assert helpers.common_name(cert) == "i-0123456789abcdef0"
    assert helpers.cert_sans(cert) == ["DNS:node1.fleet.internal", "IP:10.0.0.11"]
    audit = (ca_dir / "audit.jsonl").read_text(encoding="utf-8").splitlines()
    # The certificate recorded before it was sent (`signed`), then its delivery (`issued`).
    assert [json.loads(line)["decision"] for line in audit] == ["signed", "issued"], f"audit log of example 1: {audit}"
    assert re.search(r'"msg": "unchanged: ', proc.stdout), f"the debug example did not show the status:\n{describe_run(proc)}"

    # 3. A web node: RSA server certificate, its key owned by the web server; the inline-policy
    #    drain signs it.
    play("web")
    web = sub.path("/etc/fleetpki/web-tls")
    pending_key = web / "pending" / "privkey.pem"
    want_owner = sub.user if sub.owner_swap else "www-data"
    want_group = sub.group if sub.owner_swap else "www-data"
    assert pwd.getpwuid(os.stat(pending_key).st_uid).pw_name == want_owner, "owner: of the example's key"
    assert grp.getgrgid(os.stat(pending_key).st_gid).gr_name == want_group, "group: of the example's key"
    assert helpers.file_mode(pending_key) == 0o600
    # Its fetch: mtls_cert_fetch's first example with this node's values and, as the owner option
    # of mtls_csr_submit says, the same owner and group (not an example itself).
    fetch_web = {
        "name": "Install the web node's certificate",
        "fleetpki.mtls.mtls_cert_fetch": {
            "instance_id": "i-0fedcba9876543210",
            "path": str(web),
            "ca_path": str(pinned),
            "timeout": 120,
            "owner": want_owner,
            "group": want_group,
        },
    }
    play("web-fetch", [fetch_web])
    cert = helpers.load_cert(web / "current" / "cert.pem")
    assert helpers.common_name(cert) == "i-0fedcba9876543210"
    assert helpers.cert_sans(cert) == ["DNS:web.fleet.internal"]
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 3072
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH], f"certificate_profile: server gave {list(eku)}"
    helpers.assert_openssl_verifies(web / "current" / "cert.pem", root_cert, web / "current" / "chain.pem", "sslserver")
    key_file = web / "current" / "privkey.pem"
    assert helpers.file_mode(key_file) == 0o600
    assert pwd.getpwuid(os.stat(key_file).st_uid).pw_name == want_owner, "owner of the installed key"

    # 4. Revoke the node's certificates by instance id (from the audit log), then refresh the CRL.
    play("revoke")
    crl_path = ca_dir / "crl.pem"
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    node_serial = helpers.load_cert(current / "cert.pem").serial_number
    web_serial = helpers.load_cert(web / "current" / "cert.pem").serial_number
    revoked = {r.serial_number for r in crl}
    assert node_serial in revoked, f"the node's certificate is not in the CRL: {sorted(revoked)}"
    assert web_serial not in revoked, "the web node's certificate was revoked too"
    assert crl.is_signature_valid(helpers.load_cert(ca_dir / "intermediate.cert.pem").public_key())
    refused = openssl_verify_crl(current / "cert.pem", root_cert, current / "chain.pem", crl_path)
    assert refused.returncode != 0 and "revoked" in refused.stdout + refused.stderr, refused.stdout + refused.stderr

    # 5. The web node left the fleet: its reply queue goes, the node's stays.
    reply_queues_before = {u.rsplit("/", 1)[1] for u in client.list_queues(QueueNamePrefix="fleetpki-reply-").get("QueueUrls", [])}
    assert reply_queues_before == {"fleetpki-reply-i-0123456789abcdef0", "fleetpki-reply-i-0fedcba9876543210"}
    play("reply-queues", hosts="fleet")
    reply_queues_after = {u.rsplit("/", 1)[1] for u in client.list_queues(QueueNamePrefix="fleetpki-reply-").get("QueueUrls", [])}
    assert reply_queues_after == {"fleetpki-reply-i-0123456789abcdef0"}, reply_queues_after

    # 6. The node is retired: its own reply queue goes, looked up by name.
    play("retire", hosts="fleet")
    assert client.list_queues(QueueNamePrefix="fleetpki-reply-").get("QueueUrls", []) == []

    # Nothing is left: every example queue (CSR, DLQ, shared, the reply queue) is empty.
    for url in client.list_queues().get("QueueUrls", []):
        depth = helpers.queue_attributes(client, url)
        assert sum(depth.values()) == 0, f"{url} still holds messages: {depth}"
