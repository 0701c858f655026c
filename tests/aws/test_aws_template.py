"""The CloudFormation template: cfn-lint, the queues and alarms it declares, a deployment into
moto's CloudFormation, and its place in the built collection."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import boto3
import pytest
import yaml
from moto import mock_aws

from fleetpki_cfn import REGION, ROOT, TEMPLATE, Stack, load_template, sqs_arn, sqs_url

DAY = 86400


@pytest.fixture(scope="module")
def template():
    return load_template()


def test_cfn_lint_passes_including_informational_checks():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), str(TEMPLATE), "--include-checks", "I", "--regions", "us-east-1", "eu-west-1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not result.stdout.strip()


def test_plain_yaml_without_cloudformation_tags():
    # ansible-lint and ansible-test's yamllint read every YAML file of the collection; short-form
    # tags (!Sub, !Ref) would be unknown to them.
    text = TEMPLATE.read_text()
    assert yaml.safe_load(text)["AWSTemplateFormatVersion"] == "2010-09-09"
    assert not [t for t in yaml.scan(text) if isinstance(t, yaml.TagToken)]


def test_queue_names_and_prefix_match_the_project_defaults(template):
    stack = Stack(template, {"CreateSharedCertQueue": "true"})
    names = {q: p["Properties"]["QueueName"] for q, p in stack.resources("AWS::SQS::Queue").items()}
    # scripts/sqs-server and README use the same names.
    assert names == {"CsrQueue": "fleetpki-csr", "CsrDeadLetterQueue": "fleetpki-csr-dlq", "SharedCertQueue": "fleetpki-certs-shared"}
    prefix = stack.parameters["ReplyQueuePrefix"]
    for role, var in (("mtls_client", "mtls_client_reply_queue_prefix"), ("ca_worker", "ca_worker_reply_queue_prefix")):
        defaults = yaml.safe_load((ROOT / "collection" / "roles" / role / "defaults" / "main.yml").read_text())
        assert defaults[var] == prefix, var
    # The reply-queue wildcard must not reach the stack's own queues.
    assert not any(name.startswith(prefix) for name in names.values())


@pytest.mark.parametrize("shared", ["false", "true"])
def test_queues(template, shared):
    stack = Stack(template, {"CreateSharedCertQueue": shared})
    queues = {q: r["Properties"] for q, r in stack.resources("AWS::SQS::Queue").items()}
    assert set(queues) == {"CsrQueue", "CsrDeadLetterQueue"} | ({"SharedCertQueue"} if shared == "true" else set())
    for name, props in queues.items():
        assert props["SqsManagedSseEnabled"] is True, name
        assert "KmsMasterKeyId" not in props, f"{name}: SSE-KMS would need kms: permissions in every policy"
        assert template["Resources"][name]["DeletionPolicy"] == "Delete"
    csr, dlq = queues["CsrQueue"], queues["CsrDeadLetterQueue"]
    assert csr["RedrivePolicy"] == {"deadLetterTargetArn": sqs_arn("fleetpki-csr-dlq"), "maxReceiveCount": 5}
    assert dlq["RedriveAllowPolicy"] == {"redrivePermission": "byQueue", "sourceQueueArns": [sqs_arn("fleetpki-csr")]}
    assert "RedrivePolicy" not in dlq
    assert int(csr["VisibilityTimeout"]) == 60  # the worker's visibility_timeout default
    assert int(csr["MessageRetentionPeriod"]) == DAY  # the policy's max_request_age_seconds default
    assert int(csr["MaximumMessageSize"]) == 64 * 1024  # the worker's body limit
    # A message's age counts from its first enqueue, also in the dead-letter queue.
    assert int(dlq["MessageRetentionPeriod"]) == 14 * DAY > int(csr["MessageRetentionPeriod"])
    if shared == "true":
        assert "RedrivePolicy" not in queues["SharedCertQueue"]  # every reader receives every answer


@pytest.mark.parametrize("topic", ["", f"arn:aws:sns:{REGION}:123456789012:pager"])
def test_alarms(template, topic):
    stack = Stack(template, {"AlarmTopicArn": topic})
    alarms = {a: r["Properties"] for a, r in stack.resources("AWS::CloudWatch::Alarm").items()}
    dlq, age = alarms["DeadLetterAlarm"], alarms["CsrAgeAlarm"]
    assert (dlq["Namespace"], dlq["MetricName"]) == ("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    assert dlq["Dimensions"] == [{"Name": "QueueName", "Value": "fleetpki-csr-dlq"}]
    assert (dlq["ComparisonOperator"], dlq["Threshold"]) == ("GreaterThanThreshold", 0)
    assert age["MetricName"] == "ApproximateAgeOfOldestMessage"
    assert age["Dimensions"] == [{"Name": "QueueName", "Value": "fleetpki-csr"}]
    assert int(age["Threshold"]) == 3600
    for alarm in alarms.values():
        assert alarm["TreatMissingData"] == "ignore"
        if topic:
            assert alarm["AlarmActions"] == [topic] and alarm["OKActions"] == [topic]
        else:
            assert "AlarmActions" not in alarm and "OKActions" not in alarm


def test_outputs(template):
    outputs = Stack(template).outputs()
    assert outputs["CsrQueueUrl"] == sqs_url("fleetpki-csr")
    assert outputs["DeadLetterQueueUrl"] == sqs_url("fleetpki-csr-dlq")
    assert outputs["NodeRoleId"].startswith("AROA")  # what sender_role_ids needs
    assert template["Outputs"]["NodeRoleId"]["Value"] == {"Fn::GetAtt": ["NodeRole", "RoleId"]}
    for name in ("NodePolicyArn", "CaWorkerPolicyArn", "OperatorPolicyArn"):
        assert outputs[name].startswith("arn:aws:iam::")
    assert "SharedCertQueueUrl" not in outputs
    shared = Stack(template, {"CreateSharedCertQueue": "true"}).outputs()
    assert shared["SharedCertQueueUrl"] == sqs_url("fleetpki-certs-shared")


@pytest.mark.parametrize("shared", ["false", "true"])
def test_moto_cloudformation_deploys_it_as_resolved_here(template, shared, monkeypatch):
    """An independent resolution of the template: moto's CloudFormation (which skips the queue
    policies and alarms it does not support) must produce the queues and managed policies that
    tests/aws resolves and pins."""
    # Talk to the in-process mock, not to a local SQS server or a real profile from the environment.
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_IAM", "AWS_ENDPOINT_URL_CLOUDFORMATION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    expected = Stack(template, {"CreateSharedCertQueue": shared})
    with warnings.catch_warnings(), mock_aws():
        warnings.simplefilter("ignore")  # "No Moto CloudFormation support for ..."
        cloudformation = boto3.client("cloudformation", region_name=REGION)
        cloudformation.create_stack(
            StackName="fleetpki-mtls",
            TemplateBody=TEMPLATE.read_text(),
            Capabilities=["CAPABILITY_IAM"],
            Parameters=[{"ParameterKey": "CreateSharedCertQueue", "ParameterValue": shared}],
        )
        stack = cloudformation.describe_stacks(StackName="fleetpki-mtls")["Stacks"][0]
        assert stack["StackStatus"] == "CREATE_COMPLETE"
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
        # moto creates no alarms, hence no alarm-name outputs.
        assert set(outputs) == {k for k in expected.outputs() if not k.endswith("AlarmName")}
        sqs = boto3.client("sqs", region_name=REGION)
        csr = sqs.get_queue_attributes(QueueUrl=outputs["CsrQueueUrl"], AttributeNames=["All"])["Attributes"]
        assert json.loads(csr["RedrivePolicy"]) == {"deadLetterTargetArn": outputs["DeadLetterQueueArn"], "maxReceiveCount": 5}
        assert (csr["VisibilityTimeout"], csr["MessageRetentionPeriod"], csr["MaximumMessageSize"]) == ("60", "86400", "65536")
        for url in [v for k, v in outputs.items() if k.endswith("QueueUrl")]:
            assert sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]["SqsManagedSseEnabled"] == "true"
        iam = boto3.client("iam", region_name=REGION)
        for name, resource in expected.resources("AWS::IAM::ManagedPolicy").items():
            arn = outputs[f"{name}Arn"]
            version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
            document = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]
            if isinstance(document, str):
                document = json.loads(document)
            assert document == resource["Properties"]["PolicyDocument"], name
        role_id = iam.get_role(RoleName=outputs["NodeRoleArn"].rsplit("/", 1)[1])["Role"]["RoleId"]
        assert outputs["NodeRoleId"] == role_id


def test_the_template_ships_in_the_collection_tarball(tmp_path):
    # galaxy.yml's build_ignore drops extensions/ (molecule): the template lives in aws/.
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ansible-galaxy"), "collection", "build", str(ROOT / "collection"), "--output-path", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (tarball,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(tarball) as tar:
        member = tar.getmember("aws/fleetpki-mtls.cfn.yaml")
        assert tar.extractfile(member).read() == TEMPLATE.read_bytes()
