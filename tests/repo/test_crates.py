"""Every Rust crate of the workspace takes the workspace's crate-level lints (Cargo.toml,
[workspace.lints]: unsafe code forbidden), so a new crate cannot opt out by omission."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_every_workspace_crate_uses_the_workspace_lints():
    workspace = tomllib.loads((REPO_ROOT / "Cargo.toml").read_text(encoding="utf-8"))
    assert workspace["workspace"]["lints"]["rust"]["unsafe_code"] == "forbid"
    members = workspace["workspace"]["members"]
    assert members, "no workspace members"
    for member in members:
        manifest = tomllib.loads((REPO_ROOT / member / "Cargo.toml").read_text(encoding="utf-8"))
        assert manifest.get("lints", {}).get("workspace") is True, f"{member}/Cargo.toml lacks [lints] workspace = true"
