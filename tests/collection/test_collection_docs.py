"""A Galaxy user reaches every document from the installed collection alone.

- The user documentation travels in the tarball under docs/ (scripts/build-collection copies the
  pages `user_docs` names from the repository's docs/, their one source), byte for byte.
- Every pointer in a shipped text file resolves inside the installed collection: a path that
  starts with a top-level name of the repository or of the collection (`docs/aws.md`,
  `aws/fleetpki-mtls.cfn.yaml`, `plugins/action/<module>.py`; `tests/aws` or `scripts/...` never
  do), a Markdown file named bare (`signers.md`), a relative Markdown link and its `#anchor`, a
  section named after a file (`docs/aws.md`, "Credentials"; README, "Signers") or as "X" above or
  below, and nothing sends the reader to "the source repository".
- The same for the module binaries' messages: the string literals of the Rust sources.
- `ansible-doc fleetpki.mtls.mtls_ca_sign` documents every key of the signing policy, exactly the
  fields of the policy's serde structs in modules/fleetpki-core/src/policy.rs; the real binary
  accepts a policy holding every documented key and refuses a key that is not documented.
- The modules' notes say what the binaries are: dynamically linked against glibc (no newer symbol
  version than the notes name), not static.
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
from functools import cache
from pathlib import Path, PurePosixPath

import pytest

import helpers
from collection_helpers import MODULES, REPO_ROOT, assert_run_ok, describe_run, run, tool

BUILD_COLLECTION = REPO_ROOT / "scripts" / "build-collection"
POLICY_RS = REPO_ROOT / "modules" / "fleetpki-core" / "src" / "policy.rs"
RUST_SOURCES = REPO_ROOT / "modules"

# Shipped files that are not the project's prose: legal texts and what ansible-galaxy writes.
NOT_SCANNED = {"LICENSE", "MANIFEST.json", "FILES.json"}
NOT_SCANNED_DIRS = ("LICENSES/", "bin/")

# A path-like token: a name, a slash, more. Not inside another path or URL (~/.aws/config,
# https://host/x, $root/docs, ansible_collections/...: the character before it is one of these).
PATH_TOKEN = re.compile(r"(?<![\w.\-/~$@:%+=\\])(?P<first>[A-Za-z0-9_.\-]+)/(?P<rest>[A-Za-z0-9_.<>*\-/]*)")
BARE_MARKDOWN = re.compile(r"(?<![\w.\-/])[\w.\-]*[\w\-]\.md\b")
MARKDOWN_LINK = re.compile(r"\[[^\]\n]*\]\((?P<target>[^)\s]+)\)")
# A section named after its file: `docs/aws.md`, "Credentials" / C(docs/aws.md), "X" /
# docs/aws.md ("X") / docs/aws.md in the collection, "X" / README, "X" / README: X / README, X.
SECTION_REF = re.compile(
    r"(?P<file>(?<![\w.\-/])(?:[\w.\-]+/)*[\w.\-]+\.md|\bREADME\b(?!\.md))[`)]?(?: in the collection)?"
    r"(?:\s*(?:,|\()\s*\"(?P<quoted>[^\"\n]+)\"|(?<=README)[,:] (?P<bare>[A-Za-z][\w ]*[\w])(?=[)\"]|\.?$))"
)
SAME_FILE_REF = re.compile(r"\"(?P<a>[^\"\n]+)\" (?:above|below)\b|\b(?:above|below), \"(?P<b>[^\"\n]+)\"")
UNREACHABLE = re.compile(r"\b(source (?:repository|tree)|project's README|this repository|repository's README)\b", re.IGNORECASE)


# --------------------------------------------------------------------------------------------
# What is shipped, and how a pointer resolves
# --------------------------------------------------------------------------------------------


def user_docs() -> list[str]:
    """The pages scripts/build-collection ships (its user_docs=(...) list)."""
    m = re.search(r"^user_docs=\(([^)]*)\)", BUILD_COLLECTION.read_text(encoding="utf-8"), re.M)
    assert m, "no user_docs=(...) list in scripts/build-collection"
    return m.group(1).split()


@cache
def repo_top_level() -> frozenset[str]:
    out = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files"], capture_output=True, text=True, check=True).stdout
    return frozenset(line.split("/", 1)[0] for line in out.splitlines() if line)


def shipped_texts(root: Path) -> dict[str, str]:
    """rel path -> text of every shipped text file (binaries and NOT_SCANNED aside)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or rel in NOT_SCANNED or rel.startswith(NOT_SCANNED_DIRS):
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue
        out[rel] = data.decode("utf-8")
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def headings(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)  # no "# comment" of a code block
    return [m.group(1).replace("`", "").strip() for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)]


def has_section(path: Path, section: str) -> bool:
    want = section.replace("`", "").strip().lower()
    return any(h.lower().startswith(want) for h in headings(path))


def resolve(root: Path, ref: str, base: str = "") -> list[Path]:
    """The files a path pointer names inside root: from the root, from the naming file's directory
    or one above it (a role's `meta/argument_specs.yml`), else the tail of an installed path (each
    role's `meta/argument_specs.yml`). <placeholder> and * match any name."""
    ref = ref.rstrip("/")
    pattern = re.sub(r"<[^>]*>", "*", ref)
    if not pattern or pattern.startswith(("/", "..")):
        return []
    starts = [root, *(root / parent for parent in PurePosixPath(base).parents if str(parent) != "."), root / base]
    found: list[Path] = []
    for start in starts:
        found += [p for p in start.glob(pattern) if p.exists()] if "*" in pattern else [start / pattern] if (start / pattern).exists() else []
    if not found:
        found = [p for p in root.glob(f"**/{pattern}") if p.exists()]
    return [p for p in found if p.resolve().is_relative_to(root.resolve())]


def pointer_problems(root: Path, where: str, text: str, base: str = "", own: Path | None = None) -> tuple[list[str], int]:
    """(problems, number of pointers checked) for one text: `where` names it in messages, `base`
    is its directory inside root, `own` its installed file (for "X" above/below)."""
    problems: list[str] = []
    checked = 0
    tops = repo_top_level() | {p.name for p in root.iterdir()}
    names = {p.name for p in root.rglob("*") if p.is_file()}

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    for m in PATH_TOKEN.finditer(text):
        if m.group("first") not in tops:
            continue
        ref = m.group(0).rstrip(".,;:")
        checked += 1
        if not resolve(root, ref, base):
            problems.append(f"{where}:{line_of(m.start())}: {ref!r} is not in the installed collection")
    for name in sorted(repo_top_level()):
        if "." in name and not (root / name).exists() and not name.startswith("."):  # Cargo.toml, galaxy.yml, ...
            for m in re.finditer(rf"(?<![\w.\-/]){re.escape(name)}(?![\w\-])", text):
                checked += 1
                problems.append(f"{where}:{line_of(m.start())}: {name!r} is a file of the source tree only")
    for m in BARE_MARKDOWN.finditer(text):
        if "/" in text[max(0, m.start() - 1) : m.start()]:
            continue
        checked += 1
        if m.group(0) not in names:
            problems.append(f"{where}:{line_of(m.start())}: {m.group(0)!r} is in no file of the installed collection")
    for m in MARKDOWN_LINK.finditer(text):
        target = m.group("target")
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        checked += 1
        path_part, _, anchor = target.partition("#")
        files = resolve(root, path_part, base) if path_part else ([own] if own else [])
        if not files:
            problems.append(f"{where}:{line_of(m.start())}: link {target!r} is not in the installed collection")
        elif anchor and not any(anchor == slug(h) for h in headings(files[0])):
            problems.append(f"{where}:{line_of(m.start())}: link {target!r}: no heading with anchor #{anchor}")
    for m in SECTION_REF.finditer(text):
        section = m.group("quoted") or m.group("bare")
        ref = "README.md" if m.group("file") == "README" else m.group("file")
        checked += 1
        files = [p for p in resolve(root, ref, base) if p.is_file()] or [p for p in root.rglob(ref) if p.is_file()]
        if not files:
            problems.append(f"{where}:{line_of(m.start())}: {ref!r} (section {section!r}) is not in the installed collection")
        elif not has_section(files[0], section):
            problems.append(f"{where}:{line_of(m.start())}: {files[0].relative_to(root)} has no section {section!r} (its headings: {headings(files[0])})")
    if own is not None and own.suffix == ".md":
        for m in SAME_FILE_REF.finditer(text):
            section = m.group("a") or m.group("b")
            checked += 1
            if not has_section(own, section):
                problems.append(f"{where}:{line_of(m.start())}: no section {section!r} in this file")
    for m in UNREACHABLE.finditer(text):
        checked += 1
        problems.append(f"{where}:{line_of(m.start())}: {m.group(0)!r}: a Galaxy user has only the installed collection")
    return problems, checked


# --------------------------------------------------------------------------------------------
# The documentation is in the tarball
# --------------------------------------------------------------------------------------------


def test_user_docs_are_in_the_tarball_and_installed_as_in_the_repository(tarball, tarball_members, installed):
    docs = user_docs()
    assert {"aws.md", "signers.md", "rollover.md", "interfaces.md", "reason-codes.md"} <= set(docs), docs
    members = set(tarball_members)
    with tarfile.open(tarball) as tar:
        for name in docs:
            assert f"docs/{name}" in members, f"docs/{name} missing from {tarball.name}"
            assert tar.getmember(f"docs/{name}").isfile()
    installed_docs = sorted(p.name for p in (installed / "docs").iterdir())
    assert installed_docs == sorted(docs), f"installed docs/ holds {installed_docs}, scripts/build-collection ships {docs}"
    for name in docs:
        assert (installed / "docs" / name).read_bytes() == (REPO_ROOT / "docs" / name).read_bytes(), (
            f"docs/{name} of the installed collection differs from the repository's: rebuild (scripts/build-collection)"
        )


def test_the_collection_readme_lists_every_shipped_doc(installed):
    readme = (installed / "README.md").read_text(encoding="utf-8")
    missing = [name for name in user_docs() if f"docs/{name}" not in readme]
    assert not missing, f"the collection's README.md does not name {missing}"


# --------------------------------------------------------------------------------------------
# Every pointer resolves inside the installed collection
# --------------------------------------------------------------------------------------------


def test_every_pointer_in_a_shipped_file_resolves_inside_the_installed_collection(installed):
    texts = shipped_texts(installed)
    # The scan reads what matters: the docs, the READMEs, the module docs, the roles.
    for rel in ["README.md", "aws/README.md", "plugins/modules/mtls_ca_sign.py", "roles/ca_worker/templates/policy.json.j2"]:
        assert rel in texts, f"{rel} was not read"
    assert all(f"docs/{name}" in texts for name in user_docs())
    problems: list[str] = []
    checked = 0
    for rel, text in texts.items():
        found, n = pointer_problems(installed, rel, text, base=str(PurePosixPath(rel).parent), own=installed / rel)
        problems += found
        checked += n
    assert checked > 50, f"only {checked} pointers found: is the scan broken?"
    assert not problems, "pointers that do not resolve inside the installed collection:\n" + "\n".join(problems)


def rust_string_literals(text: str) -> list[tuple[int, str]]:
    """(line, content) of each ordinary string literal outside comments, escapes undone."""
    code = re.sub(r"//[^\n]*", lambda m: "" if m.group(0).count('"') % 2 == 0 else m.group(0), text)
    code = "\n".join("" if line.lstrip().startswith("//") else line for line in code.splitlines())
    out = []
    for m in re.finditer(r'(?<![\w#\'])"((?:[^"\\]|\\.)*)"', code, re.S):
        body = re.sub(r"\\\n\s*", "", m.group(1))  # a string continued on the next line
        body = body.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        out.append((code.count("\n", 0, m.start()) + 1, body))
    return out


def test_module_messages_point_inside_the_installed_collection(installed):
    sources = sorted(p for p in RUST_SOURCES.glob("*/src/**/*.rs"))
    assert len(sources) > 20, f"only {len(sources)} Rust sources under {RUST_SOURCES}"
    problems: list[str] = []
    pointers = 0
    for path in sources:
        rel = path.relative_to(REPO_ROOT)
        for line, literal in rust_string_literals(path.read_text(encoding="utf-8")):
            if not re.search(r"\bsee\b|README|\.md\b|docs/|source (?:repository|tree)", literal):
                continue
            found, n = pointer_problems(installed, f"{rel}:{line}", literal)
            problems += found
            pointers += n
    # The binaries do point at the documentation (the SQS and IAM hints at least).
    assert pointers >= 3, f"only {pointers} pointers in the Rust messages: is the scan broken?"
    assert not problems, "module messages that point outside the installed collection:\n" + "\n".join(problems)


# --------------------------------------------------------------------------------------------
# The signing policy's schema in ansible-doc
# --------------------------------------------------------------------------------------------

# A documented key, as the policy_path description lists it: "C(key) (attributes) - meaning";
# the keys of an `instances` entry as C(instances[].key).
DOCUMENTED_KEY = re.compile(r"^C\((?P<key>[a-z_]+(?:\[\]\.[a-z_]+)?)\) \((?P<attrs>.*?)\) - \S")


def rust_struct_fields(name: str) -> dict[str, bool]:
    """field -> required (no #[serde(default...)]) of `pub struct <name>` in policy.rs."""
    text = POLICY_RS.read_text(encoding="utf-8")
    m = re.search(rf"#\[serde\((?P<attrs>[^)]*)\)\]\s*pub struct {name} \{{(?P<body>.*?)\n\}}", text, re.S)
    assert m, f"pub struct {name} {{...}} with a #[serde(...)] attribute not found in {POLICY_RS}"
    assert "deny_unknown_fields" in m.group("attrs"), f"{name} accepts unknown keys: the docs say it refuses them"
    body = re.sub(r"^\s*///[^\n]*\n", "", m.group("body"), flags=re.M)
    assert "rename" not in body and "flatten" not in body and "alias" not in body, (
        f"{name} renames, flattens or aliases a field: teach this test the key it reads"
    )
    fields: dict[str, bool] = {}
    for field in re.finditer(r"(?P<attrs>(?:\s*#\[[^\n]*\]\n)*)\s*pub (?P<name>\w+):", body):
        fields[field.group("name")] = "serde(default" not in field.group("attrs")
    assert fields, f"no fields found in {name}"
    return fields


@pytest.fixture(scope="module")
def ca_sign_doc(ansible_env) -> dict:
    proc = assert_run_ok(run([tool("ansible-doc"), "--json", "fleetpki.mtls.mtls_ca_sign"], env=ansible_env, timeout=120))
    return json.loads(proc.stdout)["fleetpki.mtls.mtls_ca_sign"]["doc"]


def documented_policy_keys(doc: dict) -> dict[str, str]:
    """key -> attributes of every documented policy key (C(instances[].x) for an entry's keys)."""
    items = doc["options"]["policy_path"]["description"]
    keys = {}
    for item in items:
        m = DOCUMENTED_KEY.match(item)
        if m:
            assert m.group("key") not in keys, f"policy key {m.group('key')} documented twice"
            keys[m.group("key")] = m.group("attrs")
    return keys


def test_ansible_doc_documents_every_policy_key_of_the_code(ca_sign_doc):
    documented = documented_policy_keys(ca_sign_doc)
    top = {k: a for k, a in documented.items() if "[]." not in k}
    entry = {k.split("[].", 1)[1]: a for k, a in documented.items() if k.startswith("instances[].")}
    assert not {k for k in documented if "[]." in k and not k.startswith("instances[].")}, documented
    policy, rule = rust_struct_fields("Policy"), rust_struct_fields("InstanceRule")
    assert sorted(top) == sorted(policy), (
        f"mtls_ca_sign's policy_path docs and struct Policy of policy.rs differ: only documented "
        f"{sorted(set(top) - set(policy))}, only in the code {sorted(set(policy) - set(top))}"
    )
    assert sorted(entry) == sorted(rule), (
        f"the documented keys of an instances entry and struct InstanceRule differ: only documented "
        f"{sorted(set(entry) - set(rule))}, only in the code {sorted(set(rule) - set(entry))}"
    )
    # "required" among a key's attributes exactly for the fields serde requires.
    for fields, docs, prefix in ((policy, top, ""), (rule, entry, "instances[].")):
        for name, required in fields.items():
            said = bool(re.search(r"(^|, )required\b", docs[name]))
            assert said == required, f"{prefix}{name}: required in the code {required}, in the docs {said} ({docs[name]!r})"


def test_the_interfaces_example_policy_uses_the_keys_of_the_code():
    """docs/interfaces.md's example policy (the JSON block of "Signing policy") holds every key."""
    text = (REPO_ROOT / "docs" / "interfaces.md").read_text(encoding="utf-8")
    m = re.search(r"^## Signing policy.*?^```json\n(?P<json>.*?)^```", text, re.M | re.S)
    assert m, "no JSON example under docs/interfaces.md's Signing policy heading"
    example = json.loads(m.group("json"))
    assert sorted(example) == sorted(rust_struct_fields("Policy"))
    assert sorted({k for entry in example["instances"] for k in entry}) == sorted(rust_struct_fields("InstanceRule"))


# A valid value for each documented key (a key documented without one here fails the test:
# add it). instance_id and instance_id_pattern exclude each other, so they go to two entries.
SAMPLE_VALUES = {
    "identity_proof": "enrollment_secret",
    "sender_role_ids": ["AROAEXAMPLEROLEID1234"],
    "enrollment_secrets": {"i-0123456789abcdef0": "example-enrollment-secret-0123456789"},
    "enrollment_hmac_versions": [2],
    "max_request_age_seconds": 3600,
    "max_lifetime_days": 14,
    "default_lifetime_days": 7,
    "profiles": ["mtls", "client"],
    "reply_modes": ["per_node"],
    "rsa_min_bits": 3072,
    "ec_curves": ["secp256r1"],
    "instances": [],
}
SAMPLE_ENTRY_VALUES = {
    "instance_id": "i-0123456789abcdef0",
    "instance_id_pattern": "i-*",
    "dns_names": ["web1.example.internal", "*.web1.example.internal"],
    "ip_addresses": ["10.0.0.11", "fd00::11"],
    "dns_suffixes": [".fleet.internal"],
    "ip_networks": ["10.0.0.0/8", "fd00::/64"],
}


def policy_with_every_documented_key(documented: dict[str, str]) -> dict:
    policy = {}
    for key in documented:
        if "[]." not in key:
            assert key in SAMPLE_VALUES, f"documented policy key {key} has no sample value in this test: add one"
            policy[key] = SAMPLE_VALUES[key]
    entry_keys = [k.split("[].", 1)[1] for k in documented if k.startswith("instances[].")]
    for key in entry_keys:
        assert key in SAMPLE_ENTRY_VALUES, f"documented instances key {key} has no sample value in this test: add one"
    by_id = {k: SAMPLE_ENTRY_VALUES[k] for k in entry_keys if k != "instance_id_pattern"}
    by_pattern = {k: SAMPLE_ENTRY_VALUES[k] for k in entry_keys if k != "instance_id"}
    policy["instances"] = [by_id, by_pattern]
    return policy


def write_ca(directory: Path) -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization

    root, inter, inter_key = helpers.make_ca()
    paths = {"ownca_path": directory / "intermediate.pem", "ownca_privatekey_path": directory / "intermediate.key", "ca_chain_path": directory / "chain.pem"}
    paths["ownca_path"].write_text(helpers.pem(inter), encoding="utf-8")
    paths["ca_chain_path"].write_text(helpers.pem(inter) + helpers.pem(root), encoding="utf-8")
    paths["ownca_privatekey_path"].write_bytes(
        inter_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths["ownca_privatekey_path"].chmod(0o600)
    return {k: str(v) for k, v in paths.items()}


def run_installed_ca_sign(installed: Path, args: dict, env: dict[str, str], work: Path) -> dict:
    """The installed mtls_ca_sign binary in check mode (nothing received), as Ansible runs it."""
    args_file = helpers.write_args(work / f"args-{len(list(work.glob('args-*')))}.json", "mtls_ca_sign", args, check=True)
    proc = subprocess.run(
        [str(installed / "plugins" / "modules" / "mtls_ca_sign"), str(args_file)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=helpers.MODULE_TIMEOUT,
        cwd=str(work),
    )
    return helpers.parse_single_json(proc.stdout, f"mtls_ca_sign (rc {proc.returncode}, stderr {proc.stderr[-2000:]})")


def test_the_binary_accepts_every_documented_policy_key_and_refuses_others(ca_sign_doc, installed, queues, sqs_server, tmp_path):
    documented = documented_policy_keys(ca_sign_doc)
    env = helpers.module_env(sqs_server.env)
    base = {"csr_queue_url": queues.csr, "reply_queue_prefix": queues.reply_prefix, "audit_log_path": str(tmp_path / "audit.jsonl"), **write_ca(tmp_path)}
    policy = policy_with_every_documented_key(documented)
    policy_file = tmp_path / "policy.json"

    def with_policy(value: dict) -> dict:
        policy_file.write_text(json.dumps(value), encoding="utf-8")
        return run_installed_ca_sign(installed, {**base, "policy_path": str(policy_file)}, env, tmp_path)

    result = with_policy(policy)
    assert not result.get("failed"), f"a policy with every documented key is refused:\n{json.dumps(policy, indent=2)}\n{helpers.describe(result)}"
    assert result.get("queue_depth") == 0, helpers.describe(result)
    # The same keys inline (the policy option).
    result = run_installed_ca_sign(installed, {**base, "policy": policy}, env, tmp_path)
    assert not result.get("failed"), helpers.describe(result)
    # A key the docs do not list is refused, at the top and in an instances entry.
    for surplus in ({**policy, "undocumented_key": 1}, {**policy, "instances": [{**policy["instances"][0], "undocumented_key": 1}]}):
        result = with_policy(surplus)
        assert result.get("failed") is True, f"an undocumented key was accepted:\n{helpers.describe(result)}"
        assert "unknown field" in result["msg"] and "undocumented_key" in result["msg"], helpers.describe(result)


# --------------------------------------------------------------------------------------------
# What the notes say about the binaries
# --------------------------------------------------------------------------------------------


def elf_is_dynamic(data: bytes) -> bool:
    """Whether a 64-bit little-endian ELF file has a PT_INTERP program header (a dynamic loader)."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not a 64-bit little-endian ELF file"
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3A], "little")
    return any(int.from_bytes(data[phoff + i * phentsize : phoff + i * phentsize + 4], "little") == 3 for i in range(phnum))


@pytest.fixture(scope="module")
def all_docs(ansible_env) -> dict[str, dict]:
    proc = assert_run_ok(run([tool("ansible-doc"), "--json", *(f"fleetpki.mtls.{m}" for m in MODULES)], env=ansible_env, timeout=120))
    data = json.loads(proc.stdout)
    assert sorted(data) == sorted(f"fleetpki.mtls.{m}" for m in MODULES), describe_run(proc)
    return {name.rsplit(".", 1)[1]: value["doc"] for name, value in data.items()}


@pytest.mark.parametrize("module", MODULES)
def test_the_notes_say_how_the_binary_is_linked(module, all_docs, installed):
    notes = " ".join(all_docs[module].get("notes", []))
    assert "static" not in notes.lower(), f"{module}'s notes call the binary static: {notes}"
    m = re.search(r"dynamically linked against glibc (\d+)\.(\d+) or newer", notes)
    assert m, f"{module}'s notes do not say which glibc the binary needs: {notes}"
    documented = (int(m.group(1)), int(m.group(2)))
    data = (installed / "plugins" / "modules" / module).read_bytes()
    assert elf_is_dynamic(data), f"{module} has no dynamic loader, but its notes say it is dynamically linked"
    needed = {(int(a), int(b)) for a, b in re.findall(rb"GLIBC_(\d+)\.(\d+)", data)}
    assert needed, f"{module} names no GLIBC_ symbol version"
    assert max(needed) <= documented, f"{module} needs GLIBC_{max(needed)[0]}.{max(needed)[1]}, its notes say glibc {documented[0]}.{documented[1]}"
    # The module needs no Python, the roles' tasks do: the notes must not promise a Python-free host.
    said = any("Python" in sentence and "roles" in sentence for sentence in notes.split(". "))
    assert said, f"{module}'s notes do not say that the roles' tasks need Python: {notes}"
