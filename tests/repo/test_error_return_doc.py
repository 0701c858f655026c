"""The `error` return value is documented once in substance: the four modules that call SQS, and
the two that call KMS or ACM PCA only, describe it alike (Ansible has no doc fragments for RETURN),
each with a sample of its own call."""

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
