"""Every key a module documents in RETURN is one it returns: checked against the results of
this whole integration session (helpers.RETURNED_KEYS, filled by every module run). Runs last
(pytest takes the files in name order), so run it with the whole suite: a module that did not
run at all fails it, saying so."""

from __future__ import annotations

import ast

import pytest
import yaml

import helpers


def documented_return_keys(module: str) -> set[str]:
    source = (helpers.REPO_ROOT / "collection" / "plugins" / "modules" / f"{module}.py").read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "RETURN" for t in node.targets):
            return set(yaml.safe_load(node.value.value) or {})
    raise AssertionError(f"{module}.py has no RETURN")


@pytest.mark.parametrize("module", helpers.MODULES)
def test_every_documented_return_key_was_returned(module):
    returned = helpers.RETURNED_KEYS.get(module)
    assert returned, f"{module} did not run in this session: run the whole integration suite for this check"
    never = documented_return_keys(module) - returned
    assert not never, f"{module} documents RETURN keys no run returned: {sorted(never)}"
