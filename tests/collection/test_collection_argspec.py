"""Each module's documentation (as `ansible-doc --json` reports it from the installed collection)
states exactly the argument spec the binary enforces (`<binary> --argument-spec`).

Ansible neither validates a binary module's options against its docs nor masks the options the
docs call secret: the binary does both, so the docs must say what it does.
Convention for secrets: an option with no_log in the spec says "(no_log)" in its description.
"""

from __future__ import annotations

import json
import re

import pytest

from collection_helpers import MODULES, assert_run_ok, describe_run, run, tool

# What the comparison covers. A spec key outside this set fails the test, so a new kind of
# constraint in the binary cannot go unchecked silently.
COMPARED = ("type", "elements", "required", "default", "choices", "aliases")
SPEC_KEYS = set(COMPARED) | {"no_log"}
SPEC_TOP_KEYS = {"argument_spec", "mutually_exclusive", "required_one_of", "required_if"}
NO_LOG_MARK = "(no_log)"


@pytest.fixture(scope="module")
def docs(ansible_env) -> dict[str, dict]:
    out = {}
    for m in MODULES:
        proc = assert_run_ok(run([tool("ansible-doc"), "--json", f"fleetpki.mtls.{m}"], env=ansible_env, timeout=120))
        data = json.loads(proc.stdout)
        assert list(data) == [f"fleetpki.mtls.{m}"], describe_run(proc)
        out[m] = data[f"fleetpki.mtls.{m}"]
    return out


@pytest.fixture(scope="module")
def specs(ansible_env, installed) -> dict[str, dict]:
    """The argument spec of each installed (shipped) binary."""
    out = {}
    for m in MODULES:
        proc = assert_run_ok(run([str(installed / "plugins" / "modules" / m), "--argument-spec"], env=ansible_env, timeout=30))
        spec = json.loads(proc.stdout)
        assert set(spec) == SPEC_TOP_KEYS, f"{m} --argument-spec has keys {sorted(spec)}"
        out[m] = spec
    return out


def normalised(option: dict) -> dict:
    """The compared attributes with Ansible's defaults made explicit (type str, not required, ...)."""
    return {
        "type": option.get("type", "str"),
        "elements": option.get("elements"),
        "required": bool(option.get("required", False)),
        "default": option.get("default"),
        "choices": option.get("choices"),
        "aliases": option.get("aliases") or [],
    }


def description(option: dict) -> str:
    text = option.get("description", "")
    return " ".join(text) if isinstance(text, list) else str(text)


@pytest.mark.parametrize("module", MODULES)
def test_documented_options_equal_the_argument_spec(module, docs, specs):
    spec = specs[module]["argument_spec"]
    documented = docs[module]["doc"]["options"]
    assert sorted(documented) == sorted(spec), (
        f"{module}: only in the spec {sorted(set(spec) - set(documented))}, "
        f"only in the docs {sorted(set(documented) - set(spec))}"
    )
    problems = []
    for name in sorted(spec):
        unknown = set(spec[name]) - SPEC_KEYS
        assert not unknown, f"{module}.{name}: spec keys {sorted(unknown)} are not compared by this test: extend it"
        want, got = normalised(spec[name]), normalised(documented[name])
        for key in COMPARED:
            if want[key] != got[key]:
                problems.append(f"{name}.{key}: binary {want[key]!r}, docs {got[key]!r}")
        # Suboptions are not used by these modules; a doc that grows some must be compared too.
        assert "suboptions" not in documented[name], f"{module}.{name} has suboptions: compare them here"
    assert not problems, f"{module}: the docs disagree with the binary's argument spec:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("module", MODULES)
def test_secret_options_are_marked_in_the_docs(module, docs, specs):
    spec = specs[module]["argument_spec"]
    documented = docs[module]["doc"]["options"]
    secret = {name for name, o in spec.items() if o.get("no_log")}
    marked = {name for name, o in documented.items() if NO_LOG_MARK in description(o)}
    assert secret == marked, f"{module}: no_log in the spec {sorted(secret)}, marked {NO_LOG_MARK} in the docs {sorted(marked)}"
    # Every module that talks to AWS has the two AWS secrets.
    if "secret_key" in spec:
        assert {"secret_key", "session_token"} <= secret


@pytest.mark.parametrize("module", MODULES)
def test_option_constraints_are_stated_in_the_docs(module, docs, specs):
    """mutually_exclusive / required_one_of cannot be expressed in DOCUMENTATION's schema: each
    option of such a group must say so in its description, naming the others with O(...)."""
    documented = docs[module]["doc"]["options"]
    for kind, phrase in (("mutually_exclusive", r"mutually exclusive with"), ("required_one_of", r"one of them is required")):
        for group in specs[module][kind]:
            for name in group:
                text = description(documented[name])
                assert re.search(phrase, text, re.I), f"{module}.{name} is in a {kind} group {group} but its docs do not say so: {text!r}"
                for other in group:
                    if other != name:
                        assert f"O({other})" in text, f"{module}.{name}: docs do not name O({other}) of its {kind} group"
    # required_if: each required option says when, as "Required when O(signer=file)".
    for name, value, requirements in specs[module]["required_if"]:
        for required in requirements:
            text = description(documented[required])
            assert f"O({name}={value})" in text and re.search(r"required", text, re.I), (
                f"{module}.{required} is required when {name}={value} but its docs do not say O({name}={value}): {text!r}"
            )


@pytest.mark.parametrize("module", MODULES)
def test_docs_declare_check_mode_and_the_module_name(module, docs):
    doc = docs[module]["doc"]
    assert doc["module"] == module
    assert doc["collection"] == "fleetpki.mtls"
    assert doc["attributes"]["check_mode"]["support"] == "full"
    assert docs[module]["examples"].strip(), f"{module} has no EXAMPLES"
    assert docs[module]["return"], f"{module} has no RETURN"
