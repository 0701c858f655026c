"""The IAM policies of the CloudFormation template: exact, minimal, and clean for parliament.

Each managed policy is resolved for a fake account and region and compared statement by statement
with the expectation below, so any widening (an action, a resource, a wildcard) fails a test. The
node and worker policies are also checked, in both directions, against the SQS calls the module
binaries make (read from the Rust sources), and every policy document is fed to parliament.
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys

import pytest
from parliament import analyze_policy_string

from fleetpki_cfn import ACCOUNT, REGION, ROOT, Stack, load_template, role_arn, sqs_arn

CSR = sqs_arn("fleetpki-csr")
DLQ = sqs_arn("fleetpki-csr-dlq")
SHARED = sqs_arn("fleetpki-certs-shared")
REPLY = sqs_arn("fleetpki-reply-*")

# Sid -> (actions, resources); every statement is Effect Allow with no Condition.
EXPECTED = {
    "NodePolicy": {
        "SendCertificateRequests": ({"sqs:SendMessage"}, {CSR}),
        "UseReplyQueue": (
            {
                "sqs:CreateQueue",
                "sqs:GetQueueUrl",
                "sqs:GetQueueAttributes",
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
            },
            {REPLY},
        ),
    },
    "SharedCertQueueConsumerPolicy": {
        "ConsumeSharedCertificateQueue": (
            {"sqs:GetQueueAttributes", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"},
            {SHARED},
        ),
    },
    "CaWorkerPolicy": {
        "ConsumeCertificateRequests": (
            {"sqs:GetQueueAttributes", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"},
            {CSR},
        ),
        "DeadLetter": ({"sqs:GetQueueUrl", "sqs:SendMessage"}, {DLQ}),
        "AnswerOnReplyQueues": ({"sqs:SendMessage"}, {REPLY}),
    },
    "CaWorkerSharedCertQueuePolicy": {
        "AnswerOnSharedCertificateQueue": ({"sqs:SendMessage"}, {SHARED}),
    },
    "OperatorPolicy": {
        "ListQueues": ({"sqs:ListQueues"}, {"*"}),
        "ReadQueueAttributes": (
            {"sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:ListDeadLetterSourceQueues"},
            {CSR, DLQ, REPLY, SHARED},
        ),
        "ManageDeadLetterQueue": (
            {
                "sqs:ReceiveMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:DeleteMessage",
                "sqs:PurgeQueue",
                "sqs:StartMessageMoveTask",
                "sqs:ListMessageMoveTasks",
                "sqs:CancelMessageMoveTask",
            },
            {DLQ},
        ),
        "RedriveToCsrQueue": ({"sqs:SendMessage"}, {CSR}),
        "DeleteRetiredReplyQueues": ({"sqs:DeleteQueue"}, {REPLY}),
    },
}
SHARED_ONLY = {"SharedCertQueueConsumerPolicy", "CaWorkerSharedCertQueuePolicy"}
# Which managed policies each role carries.
ROLE_POLICIES = {
    "NodeRole": ["NodePolicy", "SharedCertQueueConsumerPolicy"],
    "CaWorkerRole": ["CaWorkerPolicy", "CaWorkerSharedCertQueuePolicy"],
}


def as_list(value):
    return value if isinstance(value, list) else [value]


@pytest.fixture(scope="module")
def template():
    return load_template()


@pytest.fixture(params=["false", "true"], ids=["no-shared-queue", "shared-queue"])
def stack(request, template):
    return Stack(template, {"CreateSharedCertQueue": request.param})


def managed_policies(stack: Stack) -> dict[str, dict]:
    return {name: r["Properties"]["PolicyDocument"] for name, r in stack.resources("AWS::IAM::ManagedPolicy").items()}


def role_statements(stack: Stack, role: str) -> list[dict]:
    docs = managed_policies(stack)
    arns = stack.properties(role)["ManagedPolicyArns"]
    names = [name for name in docs if stack.ref(name) in arns]
    assert len(names) == len(arns)
    return [s for name in names for s in docs[name]["Statement"]]


def allowed(statements: list[dict], action: str, resource: str) -> bool:
    """Does one of these Allow statements (no conditions) grant `action` on `resource`?"""
    return any(
        s["Effect"] == "Allow"
        and action in as_list(s["Action"])
        and any(fnmatch.fnmatchcase(resource, pattern) for pattern in as_list(s["Resource"]))
        for s in statements
    )


# ---------------------------------------------------------------------------- exact policies
def test_each_managed_policy_is_exactly_as_expected(stack):
    docs = managed_policies(stack)
    want = set(EXPECTED) if stack.conditions["CreateShared"] else set(EXPECTED) - SHARED_ONLY
    assert set(docs) == want
    for name, doc in docs.items():
        assert doc["Version"] == "2012-10-17", name
        got = {}
        for statement in doc["Statement"]:
            assert set(statement) == {"Sid", "Effect", "Action", "Resource"}, (name, statement)
            assert statement["Effect"] == "Allow", (name, statement)
            assert statement["Sid"] not in got, (name, statement["Sid"])
            actions = as_list(statement["Action"])
            assert len(actions) == len(set(actions)), (name, statement["Sid"])
            got[statement["Sid"]] = (set(actions), set(as_list(statement["Resource"])))
        assert got == EXPECTED[name], name


def test_no_action_wildcards_and_star_only_where_unavoidable(stack):
    for name, doc in managed_policies(stack).items():
        for statement in doc["Statement"]:
            for action in as_list(statement["Action"]):
                assert re.fullmatch(r"sqs:[A-Za-z]+", action), (name, action)
            if "*" in as_list(statement["Resource"]):
                # ListQueues has no resource type: IAM accepts only "*" for it.
                assert as_list(statement["Action"]) == ["sqs:ListQueues"], (name, statement)


def test_roles_carry_their_policies_and_trust_ec2(stack, template):
    shared = stack.conditions["CreateShared"]
    for role, policies in ROLE_POLICIES.items():
        props = stack.properties(role)
        want = [stack.ref(p) for p in policies if p not in SHARED_ONLY or shared]
        assert props["ManagedPolicyArns"] == want, role
        assert "Policies" not in props, f"{role}: inline policies would escape the exact-policy test"
        trust = props["AssumeRolePolicyDocument"]["Statement"]
        assert trust == [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}], role
        profile = [p for p in stack.resources("AWS::IAM::InstanceProfile").values() if p["Properties"]["Roles"] == [stack.ref(role)]]
        assert len(profile) == 1, role
    # The operator policy is attached by the operator to their own group, role or permission set.
    assert not any(stack.ref("OperatorPolicy") in r["Properties"].get("ManagedPolicyArns", []) for r in stack.resources("AWS::IAM::Role").values())
    assert set(stack.resources("AWS::IAM::Role")) == set(ROLE_POLICIES)


def test_ca_worker_role_can_be_assumed_by_an_extra_principal_when_asked(template):
    other = f"arn:aws:iam::{ACCOUNT}:role/onprem-ca"
    trust = Stack(template, {"CaWorkerTrustedPrincipalArn": other}).properties("CaWorkerRole")["AssumeRolePolicyDocument"]
    assert trust["Statement"] == [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com", "AWS": other}, "Action": "sts:AssumeRole"}
    ]
    node_trust = Stack(template, {"CaWorkerTrustedPrincipalArn": other}).properties("NodeRole")["AssumeRolePolicyDocument"]
    assert node_trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}


def test_prefix_parameters_move_every_resource(template):
    stack = Stack(template, {"QueueNamePrefix": "pki", "ReplyQueuePrefix": "pki-answer-", "CreateSharedCertQueue": "true"})
    text = json.dumps(managed_policies(stack))
    assert "fleetpki" not in text
    for name in ("pki-csr", "pki-csr-dlq", "pki-certs-shared", "pki-answer-*"):
        assert sqs_arn(name) in text


# ---------------------------------------------------------------------------- who can do what
def test_least_privilege_matrix(stack):
    node = role_statements(stack, "NodeRole")
    worker = role_statements(stack, "CaWorkerRole")
    operator = managed_policies(stack)["OperatorPolicy"]["Statement"]
    reply = sqs_arn("fleetpki-reply-i-0123456789abcdef0")
    everything = [
        f"sqs:{a}"
        for a in (
            "SendMessage ReceiveMessage DeleteMessage ChangeMessageVisibility GetQueueAttributes GetQueueUrl "
            "CreateQueue DeleteQueue PurgeQueue SetQueueAttributes AddPermission TagQueue StartMessageMoveTask"
        ).split()
    ]
    # A node sends only to the CSR queue; it may not answer, dead-letter or read requests.
    assert allowed(node, "sqs:SendMessage", CSR)
    for queue in (reply, DLQ, SHARED):
        assert not allowed(node, "sqs:SendMessage", queue)
    for action in everything:
        if action != "sqs:SendMessage":
            assert not allowed(node, action, CSR), action
        assert not allowed(node, action, DLQ), action
    # It creates and consumes reply queues, and changes nothing else about them.
    for action in ("sqs:CreateQueue", "sqs:ReceiveMessage", "sqs:DeleteMessage"):
        assert allowed(node, action, reply)
    for action in ("sqs:DeleteQueue", "sqs:PurgeQueue", "sqs:SetQueueAttributes", "sqs:AddPermission", "sqs:TagQueue"):
        assert not allowed(node, action, reply), action
    # The worker alone consumes the CSR queue; it answers on reply queues but cannot read them.
    for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage"):
        assert allowed(worker, action, CSR)
        assert not allowed(node, action, CSR)
        assert not allowed(operator, action, CSR)
        assert not allowed(worker, action, reply)
    assert allowed(worker, "sqs:SendMessage", reply) and allowed(worker, "sqs:SendMessage", DLQ)
    assert not allowed(worker, "sqs:SendMessage", CSR)
    for action in ("sqs:CreateQueue", "sqs:DeleteQueue", "sqs:PurgeQueue", "sqs:SetQueueAttributes"):
        assert not any(allowed(worker, action, q) for q in (CSR, DLQ, reply, SHARED)), action
    assert allowed(worker, "sqs:SendMessage", SHARED) == stack.conditions["CreateShared"]
    assert allowed(node, "sqs:ReceiveMessage", SHARED) == stack.conditions["CreateShared"]
    # The operator redrives and purges the dead-letter queue and cleans up reply queues.
    for action in ("sqs:StartMessageMoveTask", "sqs:PurgeQueue", "sqs:ReceiveMessage"):
        assert allowed(operator, action, DLQ)
    assert allowed(operator, "sqs:DeleteQueue", reply)
    assert not any(allowed(operator, "sqs:DeleteQueue", q) for q in (CSR, DLQ, SHARED))
    assert not allowed(operator, "sqs:PurgeQueue", CSR)


def test_only_the_ca_worker_role_may_consume_the_csr_queue_whatever_else_allows_it(stack):
    doc = stack.properties("CsrQueuePolicy")["PolicyDocument"]
    deny = {s["Sid"]: s for s in doc["Statement"]}["OnlyTheCaWorkerConsumes"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*"
    assert set(deny["Action"]) == {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"}
    assert deny["Resource"] == CSR
    assert deny["Condition"] == {"ArnNotEquals": {"aws:PrincipalArn": role_arn("CaWorkerRole")}}
    # Every queue of the stack refuses plain HTTP.
    for policy in stack.resources("AWS::SQS::QueuePolicy").values():
        tls = {s["Sid"]: s for s in policy["Properties"]["PolicyDocument"]["Statement"]}["DenyInsecureTransport"]
        assert tls["Effect"] == "Deny" and tls["Action"] == "sqs:*"
        assert tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    covered = {q for p in stack.resources("AWS::SQS::QueuePolicy").values() for q in p["Properties"]["Queues"]}
    assert covered == {stack.ref(q) for q in stack.resources("AWS::SQS::Queue")}


# ---------------------------------------------------------------------------- against the code
def sqs_operations_by_method() -> dict[str, set[str]]:
    """fleetpki-sqs: the SQS operations each `Sqs` method calls (directly or through another)."""
    source = (ROOT / "modules" / "fleetpki-sqs" / "src" / "lib.rs").read_text()
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"\bfn\s+(\w+)\s*[<(]", source)]
    bodies = {name: source[start : (starts[i + 1][0] if i + 1 < len(starts) else len(source))] for i, (start, name) in enumerate(starts)}
    direct = {name: set(re.findall(r'calls\.add\("(\w+)"\)', body)) for name, body in bodies.items()}
    calls = {name: set(re.findall(r"\bself\s*\.\s*(\w+)\s*\(", body)) & set(bodies) for name, body in bodies.items()}
    ops: dict[str, set[str]] = {}
    for name in bodies:
        seen, todo, found = set(), [name], set()
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            found |= direct[current]
            todo.extend(calls[current])
        ops[name] = found
    assert ops["send"] == {"SendMessage"} and ops["create_queue"] == {"CreateQueue"}, "lib.rs parse went wrong"
    return ops


def iam_actions_used_by(*module_files: str) -> set[str]:
    """The IAM actions the SQS calls of these module sources need."""
    ops = sqs_operations_by_method()
    used = set()
    for file in module_files:
        source = (ROOT / "modules" / "fleetpki-modules" / "src" / file).read_text()
        for method in re.findall(r"\bsqs\s*\.\s*(\w+)\s*\(", source):
            if method in ("calls",):
                continue
            assert method in ops, f"{file}: unknown Sqs method {method}"
            used |= ops[method]
    # DeleteMessageBatch is authorised as sqs:DeleteMessage.
    return {"sqs:" + ("DeleteMessage" if op == "DeleteMessageBatch" else op) for op in used}


def test_node_policies_grant_exactly_what_the_node_modules_call(template):
    used = iam_actions_used_by("csr_submit.rs", "cert_fetch.rs")
    stack = Stack(template, {"CreateSharedCertQueue": "true"})
    granted = {a for s in role_statements(stack, "NodeRole") for a in as_list(s["Action"])}
    assert granted == used, f"missing {sorted(used - granted)}, unused {sorted(granted - used)}"
    # Without the shared queue the node still needs all of them, on its reply queue.
    granted = {a for s in role_statements(Stack(template), "NodeRole") for a in as_list(s["Action"])}
    assert granted == used


def test_worker_policies_grant_exactly_what_the_worker_calls(template):
    used = iam_actions_used_by("ca_sign.rs", "ca_service.rs")
    stack = Stack(template, {"CreateSharedCertQueue": "true"})
    granted = {a for s in role_statements(stack, "CaWorkerRole") for a in as_list(s["Action"])}
    assert granted == used, f"missing {sorted(used - granted)}, unused {sorted(granted - used)}"


# ---------------------------------------------------------------------------- parliament
def all_policy_documents(stack: Stack) -> dict[str, dict]:
    docs = {f"{name} (managed policy)": doc for name, doc in managed_policies(stack).items()}
    for name, policy in stack.resources("AWS::SQS::QueuePolicy").items():
        docs[f"{name} (queue policy)"] = policy["Properties"]["PolicyDocument"]
    # Trust policies are not checked: parliament reads them as identity policies and reports
    # them MALFORMED (no Resource). They are pinned by test_roles_carry_their_policies_and_trust_ec2.
    return docs


def test_parliament_reports_no_finding(stack):
    for name, doc in all_policy_documents(stack).items():
        findings = analyze_policy_string(json.dumps(doc)).findings
        assert not findings, f"{name}: {[(f.issue, f.detail) for f in findings]}"


def test_parliament_community_auditors_flag_only_the_nodes_create_queue(stack):
    # Policy Sentry (which parliament's community auditors use) ranks sqs:CreateQueue as
    # "Permissions management": CreateQueue can set a queue policy. A node needs it because it
    # creates its own reply queue at runtime; docs/aws.md ("Reply queues") says what that allows
    # and how to take it away. Anything else the community auditors find fails this test.
    for name, doc in all_policy_documents(stack).items():
        findings = analyze_policy_string(json.dumps(doc), include_community_auditors=True).findings
        got = {f.issue for f in findings}
        if name == "NodePolicy (managed policy)":
            assert got == {"PERMISSIONS_MANAGEMENT_ACTIONS"}, got
        else:
            assert not got, f"{name}: {[(f.issue, f.detail) for f in findings]}"


def test_parliament_cli_accepts_the_resolved_policy_files(template, tmp_path):
    stack = Stack(template, {"CreateSharedCertQueue": "true"})
    for name, doc in managed_policies(stack).items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(doc, indent=2))
        # The CLI reads a policy from stdin when stdin is not a terminal (and then refuses --file).
        with path.open() as stdin:
            result = subprocess.run(
                [sys.executable, "-m", "parliament.cli"], stdin=stdin, capture_output=True, text=True, timeout=120
            )
        assert result.returncode == 0 and not result.stdout.strip(), f"{name}: {result.stdout}{result.stderr}"


def test_the_unresolvable_ec2_instance_id_variable_is_not_used(template):
    # ${ec2:InstanceID} is a key of EC2 requests only: in an SQS request it has no value and a
    # statement using it matches nothing (and parliament reports RESOURCE_MISMATCH). docs/aws.md.
    text = json.dumps(template)
    assert "ec2:InstanceId" not in text and "ec2:InstanceID" not in text
    bad = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sqs:ReceiveMessage",
           "Resource": f"arn:aws:sqs:{REGION}:{ACCOUNT}:fleetpki-reply-${{ec2:InstanceId}}"}]}
    assert {f.issue for f in analyze_policy_string(json.dumps(bad)).findings} == {"RESOURCE_MISMATCH"}
