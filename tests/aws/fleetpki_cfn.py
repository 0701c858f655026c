"""Read the CloudFormation template and resolve it for a fake account, as CloudFormation would.

Enough of CloudFormation for this template: parameters with their defaults, conditions, Ref,
Fn::GetAtt, Fn::Sub (with `${!Literal}` escapes), Fn::If / Fn::Equals / Fn::Not and
AWS::NoValue. Anything else raises, so a template change that needs more fails loudly here rather
than being silently mis-resolved.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "collection" / "aws" / "fleetpki-mtls.cfn.yaml"

PARTITION = "aws"
REGION = "eu-west-1"
ACCOUNT = "123456789012"
STACK = "fleetpki-mtls"

_NO_VALUE = object()


def load_template(path: Path = TEMPLATE) -> dict:
    # safe_load: the template uses the long form of the intrinsic functions (no `!Sub` tags), so
    # YAML tools without CloudFormation's tag constructors (yamllint, ansible-lint) read it too.
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def sqs_arn(name: str) -> str:
    return f"arn:{PARTITION}:sqs:{REGION}:{ACCOUNT}:{name}"


def sqs_url(name: str) -> str:
    return f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{name}"


def physical_name(logical_id: str) -> str:
    """The name CloudFormation gives an unnamed resource (without its random suffix)."""
    return f"{STACK}-{logical_id}"


def role_arn(logical_id: str) -> str:
    return f"arn:{PARTITION}:iam::{ACCOUNT}:role/{physical_name(logical_id)}"


def role_id(logical_id: str) -> str:
    return "AROA" + re.sub(r"[^A-Z0-9]", "", logical_id.upper()).ljust(17, "X")[:17]


class Stack:
    """The template resolved with the given parameter values (defaults for the others)."""

    def __init__(self, template: dict, parameters: dict[str, str] | None = None):
        self.template = template
        parameters = dict(parameters or {})
        unknown = set(parameters) - set(template.get("Parameters", {}))
        if unknown:
            raise KeyError(f"unknown parameters {sorted(unknown)}")
        self.parameters: dict[str, Any] = {}
        for name, spec in template.get("Parameters", {}).items():
            value = parameters.get(name, spec.get("Default"))
            if value is None:
                raise KeyError(f"parameter {name} has no default and no value")
            self.parameters[name] = str(value)
        self.pseudo = {
            "AWS::Partition": PARTITION,
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::StackName": STACK,
            "AWS::URLSuffix": "amazonaws.com",
        }
        self.conditions = {name: bool(self.resolve(body)) for name, body in template.get("Conditions", {}).items()}

    # ------------------------------------------------------------------ resources
    def resource_exists(self, logical_id: str) -> bool:
        resource = self.template["Resources"][logical_id]
        condition = resource.get("Condition")
        return condition is None or self.conditions[condition]

    def resources(self, type_: str | None = None) -> dict[str, dict]:
        """Existing resources (of a type), their properties resolved."""
        out = {}
        for logical_id, resource in self.template["Resources"].items():
            if (type_ is None or resource["Type"] == type_) and self.resource_exists(logical_id):
                out[logical_id] = {**resource, "Properties": self.resolve(resource.get("Properties", {}))}
        return out

    def properties(self, logical_id: str) -> dict:
        if not self.resource_exists(logical_id):
            raise KeyError(f"{logical_id} does not exist with these parameters")
        return self.resolve(self.template["Resources"][logical_id].get("Properties", {}))

    def outputs(self) -> dict[str, Any]:
        out = {}
        for name, spec in self.template.get("Outputs", {}).items():
            condition = spec.get("Condition")
            if condition is None or self.conditions[condition]:
                out[name] = self.resolve(spec["Value"])
        return out

    def _queue_name(self, logical_id: str) -> str:
        return self.properties(logical_id)["QueueName"]

    # ------------------------------------------------------------------ intrinsics
    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        resource = self.template["Resources"].get(name)
        if resource is None:
            raise KeyError(f"Ref to unknown {name}")
        if not self.resource_exists(name):
            raise KeyError(f"Ref to {name}, which does not exist with these parameters")
        kind = resource["Type"]
        if kind == "AWS::SQS::Queue":
            return sqs_url(self._queue_name(name))
        if kind == "AWS::IAM::ManagedPolicy":
            return f"arn:{PARTITION}:iam::{ACCOUNT}:policy/{physical_name(name)}"
        if kind in ("AWS::IAM::Role", "AWS::IAM::InstanceProfile", "AWS::CloudWatch::Alarm"):
            return physical_name(name)
        raise NotImplementedError(f"Ref to a {kind}")

    def getatt(self, name: str, attribute: str) -> Any:
        resource = self.template["Resources"].get(name)
        if resource is None or not self.resource_exists(name):
            raise KeyError(f"Fn::GetAtt of missing {name}")
        kind = resource["Type"]
        if kind == "AWS::SQS::Queue" and attribute == "Arn":
            return sqs_arn(self._queue_name(name))
        if kind == "AWS::SQS::Queue" and attribute == "QueueName":
            return self._queue_name(name)
        if kind == "AWS::SQS::Queue" and attribute == "QueueUrl":
            return sqs_url(self._queue_name(name))
        if kind == "AWS::IAM::Role" and attribute == "Arn":
            return role_arn(name)
        if kind == "AWS::IAM::Role" and attribute == "RoleId":
            return role_id(name)
        if kind == "AWS::IAM::InstanceProfile" and attribute == "Arn":
            return f"arn:{PARTITION}:iam::{ACCOUNT}:instance-profile/{physical_name(name)}"
        raise NotImplementedError(f"Fn::GetAtt {kind}.{attribute}")

    def sub(self, argument: Any) -> str:
        if isinstance(argument, list):
            text, variables = argument
            variables = {k: self.resolve(v) for k, v in variables.items()}
        else:
            text, variables = argument, {}

        def replace(match: re.Match) -> str:
            inner = match.group(1)
            if inner.startswith("!"):
                return "${" + inner[1:] + "}"  # ${!Literal} is the literal ${Literal}
            if inner in variables:
                return str(variables[inner])
            if "." in inner:
                resource, attribute = inner.split(".", 1)
                return str(self.getatt(resource, attribute))
            value = self.ref(inner)
            if value is _NO_VALUE:
                raise ValueError("AWS::NoValue inside Fn::Sub")
            return str(value)

        return re.sub(r"\$\{([^}]+)\}", replace, text)

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            items = [self.resolve(item) for item in node]
            return [item for item in items if item is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, argument), = node.items()
            if key == "Ref":
                return self.ref(argument)
            if key == "Fn::GetAtt":
                resource, attribute = argument if isinstance(argument, list) else argument.split(".", 1)
                return self.getatt(resource, attribute)
            if key == "Fn::Sub":
                return self.sub(argument)
            if key == "Fn::If":
                condition, if_true, if_false = argument
                return self.resolve(if_true if self.conditions[condition] else if_false)
            if key == "Fn::Equals":
                left, right = (self.resolve(a) for a in argument)
                return left == right
            if key == "Fn::Not":
                (value,) = argument
                return not self.resolve(value)
            if key == "Condition" and isinstance(argument, str) and argument in self.template.get("Conditions", {}):
                return self.conditions[argument]
            if key.startswith("Fn::"):
                raise NotImplementedError(key)
        out = {}
        for key, value in node.items():
            value = self.resolve(value)
            if value is not _NO_VALUE:
                out[key] = value
        return out
