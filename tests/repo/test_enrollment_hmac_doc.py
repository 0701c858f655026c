"""A client in another language can be written from the docs: the enrollment HMAC v2 of
docs/interfaces.md, computed here in Python from the text's own rules (the Rust implementation is
held to the same example by modules/fleetpki-core/tests/docs.rs)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_documented_example_follows_the_documented_rules():
    doc = (REPO_ROOT / "docs" / "interfaces.md").read_text(encoding="utf-8")
    section = doc[doc.index("## Enrollment HMAC") :]
    request = json.loads(re.search(r"```json\n(.*?)\n```", section, re.S).group(1))
    canonical_shown = re.search(r"```text\n(.*?)\n```", section, re.S).group(1)
    secret = re.search(r"Secret `([^`]+)`", section).group(1)
    hmac_shown = re.search(r"hmac: `([^`]+)`", section).group(1)

    reply_mode = request.get("reply_mode") or ("per_node" if "version" in request else "shared")
    fields = [
        "fleetpki-enrollment-v2",
        request.get("version"),
        request.get("request_id"),
        request.get("timestamp"),
        request["instance_id"],
        request.get("profile") or "mtls",
        request.get("lifetime_days"),
        reply_mode,
        request["csr_pem"],
    ]
    canonical = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
    assert canonical == canonical_shown
    tag = hmac.new(secret.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    assert hmac_shown == "v2:" + tag
