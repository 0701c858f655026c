"""The `error` return value is documented once in substance: the four modules that call SQS, and
the two that call KMS or ACM PCA only, describe it alike (Ansible has no doc fragments for RETURN),
each with a sample of its own call; the error kinds they list are the ones the code returns."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SQS_MODULES = ("mtls_csr_submit", "mtls_cert_fetch", "mtls_ca_sign", "mtls_reply_queues")
SIGNER_ONLY_MODULES = ("mtls_ca_init", "mtls_ca_revoke")


def documented_return(module: str) -> dict:
    source = (REPO_ROOT / "collection" / "plugins" / "modules" / f"{module}.py").read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "RETURN" for t in node.targets):
            return yaml.safe_load(node.value.value)
    raise AssertionError(f"{module}.py has no RETURN")


def test_every_sqs_module_documents_the_error_value_alike():
    entries = {m: documented_return(m).get("error") for m in SQS_MODULES}
    missing = [m for m, e in entries.items() if e is None]
    assert not missing, f"no `error` in RETURN of {missing}"
    without_sample = {m: {k: v for k, v in e.items() if k != "sample"} for m, e in entries.items()}
    first = without_sample[SQS_MODULES[0]]
    differ = [m for m, e in without_sample.items() if e != first]
    assert not differ, f"the `error` RETURN entry of {differ} differs from {SQS_MODULES[0]}'s"
    for module, entry in entries.items():
        sample = entry["sample"]
        assert set(sample) == {"kind", "code", "message", "operation"}, (module, sample)
        assert f"sqs:{sample['operation']}" in sample["message"], (module, sample)


def test_the_signer_only_modules_describe_the_error_value_as_the_sqs_modules_do():
    reference = documented_return(SQS_MODULES[0])["error"]
    for module in SIGNER_ONLY_MODULES:
        entry = documented_return(module).get("error")
        assert entry is not None, f"no `error` in RETURN of {module}"
        assert entry["description"] == reference["description"] and entry["type"] == reference["type"], module
        assert "KMS" in entry["returned"] and set(entry["sample"]) == {"kind", "code", "message", "operation"}, module


def rust_error_kinds() -> set[str]:
    """The `error.kind` values the modules can return: AwsErrorKind::name() of every kind
    (modules/fleetpki-aws/src/error_kind.rs), and the region check's own kind (fleetpki-sqs)."""
    import re

    source = (REPO_ROOT / "modules" / "fleetpki-aws" / "src" / "error_kind.rs").read_text(encoding="utf-8")
    body = source.split("pub fn name(self)", 1)[1].split("\n    }\n", 1)[0]
    kinds = set(re.findall(r'AwsErrorKind::\w+ => "([a-z_]+)"', body))
    variants = set(re.findall(r"^    (\w+),$", source.split("pub enum AwsErrorKind {", 1)[1].split("\n}\n", 1)[0], re.MULTILINE))
    assert kinds and len(kinds) == len(variants), f"AwsErrorKind::name() names {sorted(kinds)} for the variants {sorted(variants)}"
    sqs = (REPO_ROOT / "modules" / "fleetpki-sqs" / "src" / "lib.rs").read_text(encoding="utf-8")
    assert '"region_mismatch"' in sqs
    return kinds | {"region_mismatch"}


def test_the_documented_error_kinds_are_the_ones_the_code_returns():
    import re

    expected = rust_error_kinds()
    for module in SQS_MODULES + SIGNER_ONLY_MODULES:
        text = " ".join(documented_return(module)["error"]["description"])
        listed = set(re.findall(r"V\(([a-z_]+)\)", text.split("C(kind)", 1)[1].split("the service's", 1)[0]))
        assert listed == expected, f"{module}: error.kind documented {sorted(listed)}, the code returns {sorted(expected)}"
