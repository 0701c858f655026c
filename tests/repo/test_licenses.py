"""The license metadata agrees with the files: LICENSE, LICENSES/, galaxy.yml and the headers.

- LICENSE is the Apache-2.0 text (the project's license, as Cargo.toml says), identical to
  LICENSES/Apache-2.0.txt.
- galaxy.yml's `license` lists exactly the SPDX ids whose texts are in LICENSES/, and
  collection/ (what the tarball is built from) carries LICENSE and every one of those texts with
  the same bytes.
- Every Python file of collection/plugins names its license in its header, and the license is the
  one the rule gives: GPL-3.0-or-later for the controller-side plugins that import ansible-core's
  code (directly, or through a plugin of this collection that does), Apache-2.0 for the rest.
- Any header anywhere in the repository that names a license names one of galaxy.yml's.

    .venv/bin/python -m pytest -q tests/repo
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COLLECTION = REPO_ROOT / "collection"
HEADER_LINES = 12

# How a header names its license (community collections' two forms), mapped to the SPDX id.
SPDX_LINE = re.compile(r"SPDX-License-Identifier:\s*([\w.+-]+)")
PROSE = {
    "GPL-3.0-or-later": re.compile(r"GNU General Public License v3\.0\+"),
    "Apache-2.0": re.compile(r"Apache License(,)? (Version )?2\.0"),
}
# ansible-core's own packages (GPL-3.0-or-later), not ansible_collections.
IMPORTS_CORE = re.compile(r"^\s*(from\s+ansible(\.\w+)*\s+import|import\s+ansible(\.|\s|$))", re.M)
IMPORTS_OWN_PLUGIN = re.compile(r"ansible_collections\.fleetpki\.mtls\.plugins\.(\w+)\.(\w+)")


def galaxy_licenses() -> list[str]:
    galaxy = yaml.safe_load((REPO_ROOT / "galaxy.yml").read_text(encoding="utf-8"))
    assert "license_file" not in galaxy, "galaxy.yml: `license` and `license_file` exclude each other"
    return list(galaxy["license"])


def header_licenses(path: Path) -> set[str]:
    """The SPDX ids a file's first lines name (an SPDX line or the usual prose line)."""
    head = "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[:HEADER_LINES])
    found = set(SPDX_LINE.findall(head))
    found |= {spdx for spdx, prose in PROSE.items() if prose.search(head)}
    return found


def test_license_is_apache_and_matches_its_licenses_copy():
    license_text = (REPO_ROOT / "LICENSE").read_bytes()
    assert b"Apache License" in license_text and b"Version 2.0, January 2004" in license_text
    assert license_text == (REPO_ROOT / "LICENSES" / "Apache-2.0.txt").read_bytes()
    cargo = (REPO_ROOT / "Cargo.toml").read_text(encoding="utf-8")
    assert re.search(r'^license\s*=\s*"Apache-2\.0"', cargo, re.M), "Cargo.toml's workspace license is not Apache-2.0"


def test_galaxy_lists_the_license_texts_and_the_collection_carries_them():
    listed = galaxy_licenses()
    texts = sorted(p.stem for p in (REPO_ROOT / "LICENSES").glob("*.txt"))
    assert sorted(listed) == texts, f"galaxy.yml license {listed}, LICENSES/ holds {texts}"
    assert "GPL-3.0-or-later" in listed and "Apache-2.0" in listed
    assert (COLLECTION / "LICENSE").read_bytes() == (REPO_ROOT / "LICENSE").read_bytes()
    for spdx in listed:
        shipped = COLLECTION / "LICENSES" / f"{spdx}.txt"
        assert shipped.is_file(), f"{shipped} is missing: the tarball would lack the {spdx} text"
        assert shipped.read_bytes() == (REPO_ROOT / "LICENSES" / f"{spdx}.txt").read_bytes()
    # The license texts are tracked (scripts/check-collection copies what git lists of collection/).
    tracked = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "ls-files", "--", "LICENSE", "LICENSES", "collection/LICENSE", "collection/LICENSES"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    expected = ["LICENSE", "collection/LICENSE"] + [f"{d}/{spdx}.txt" for d in ("LICENSES", "collection/LICENSES") for spdx in listed]
    assert sorted(tracked) == sorted(expected)


def test_each_plugin_file_carries_the_license_the_rule_gives():
    plugins = sorted((COLLECTION / "plugins").rglob("*.py"))
    assert plugins
    sources = {p: p.read_text(encoding="utf-8") for p in plugins}
    # GPL-3.0-or-later: imports ansible-core, or a plugin of ours that needs GPL-3.0-or-later.
    gpl = {p for p, src in sources.items() if IMPORTS_CORE.search(src)}
    grew = True
    while grew:
        grew = False
        for p, src in sources.items():
            if p in gpl:
                continue
            for kind, name in IMPORTS_OWN_PLUGIN.findall(src):
                if COLLECTION / "plugins" / kind / f"{name}.py" in gpl:
                    gpl.add(p)
                    grew = True
                    break
    wrong = []
    for p in plugins:
        want = "GPL-3.0-or-later" if p in gpl else "Apache-2.0"
        have = header_licenses(p)
        if have != {want}:
            wrong.append(f"{p.relative_to(REPO_ROOT)}: header names {sorted(have) or 'no license'}, the rule gives {want}")
    assert not wrong, "\n".join(wrong)


def test_every_license_a_header_names_is_listed_in_galaxy():
    listed = set(galaxy_licenses())
    out = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout.decode()
    unlisted = []
    for rel in filter(None, out.split("\0")):
        path = REPO_ROOT / rel
        if rel.startswith(("LICENSES/", "collection/LICENSES/")) or rel in ("LICENSE", "collection/LICENSE"):
            continue  # the texts themselves
        if not path.is_file() or b"\0" in path.read_bytes()[:8192]:
            continue  # deleted in the work tree, or binary
        extra = header_licenses(path) - listed
        if extra:
            unlisted.append(f"{rel}: {sorted(extra)}")
    assert not unlisted, "licenses named in headers but not in galaxy.yml:\n" + "\n".join(unlisted)
