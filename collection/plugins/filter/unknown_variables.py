# Copyright: fleetpki contributors
# Apache License 2.0 (see LICENSES/Apache-2.0.txt or https://www.apache.org/licenses/LICENSE-2.0)
# SPDX-License-Identifier: Apache-2.0
"""The roles' typo guard: which of the given variable names no role of this collection knows.

A role variable with a typo (`mtls_client_subject_alt_names`) is otherwise silently ignored, and
the role runs on its default. The known names are derived from the one definition of each role's
variables, its meta/argument_specs.yml, plus the playbook variables below.
"""

from __future__ import annotations

import difflib
import os

import yaml

ROLES = ("ca_setup", "ca_worker", "mtls_client")
# Variables of the collection's playbooks (playbooks/site.yml documents them) and of its action
# plugins; not role options, but a close misspelling of one should point to it.
PLAYBOOK_VARIABLES = (
    "fleetpki_root_ca_file",
    "fleetpki_ca_drain_host",
    "fleetpki_crl_file",
    "fleetpki_mtls_module_cache",
)
CHECKED_PREFIXES = tuple(f"{role}_" for role in ROLES)

_known: frozenset[str] | None = None


def known_variables() -> frozenset[str]:
    """Every option of every entry point of the three roles' argument specs, plus PLAYBOOK_VARIABLES."""
    global _known
    if _known is None:
        roles_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "roles")
        names = set(PLAYBOOK_VARIABLES)
        for role in ROLES:
            with open(os.path.join(roles_dir, role, "meta", "argument_specs.yml"), encoding="utf-8") as f:
                specs = yaml.safe_load(f)["argument_specs"]
            for entry_point in specs.values():
                names.update(entry_point.get("options", {}))
        _known = frozenset(names)
    return _known


def _stem(name: str) -> str:
    """The name without its role or playbook prefix: what the user meant to set."""
    for prefix in (*CHECKED_PREFIXES, "fleetpki_"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def closest(name: str, known) -> str | None:
    """The known name most like `name`, by the whole name or by its stem alone (the right setting
    under another role's prefix); on a tie, one under the same prefix. None below 0.6 alike."""

    def score(candidate: str) -> tuple[float, bool, str]:
        whole = difflib.SequenceMatcher(None, name, candidate).ratio()
        stem = difflib.SequenceMatcher(None, _stem(name), _stem(candidate)).ratio()
        same_prefix = name[: len(name) - len(_stem(name))] == candidate[: len(candidate) - len(_stem(candidate))]
        return (max(whole, stem), same_prefix, candidate)

    best = max(known, key=score, default=None)
    return best if best is not None and score(best)[0] >= 0.6 else None


def unknown_variables(names) -> list[str]:
    """For each name with a role's prefix that no role knows, a sentence naming the closest
    known variable. Names starting with `__` are the roles' internal ones and are not checked."""
    known = known_variables()
    out = []
    for name in sorted(set(names)):
        if not name.startswith(CHECKED_PREFIXES) or name in known:
            continue
        close = closest(name, known)
        hint = f"did you mean {close}?" if close else "see the roles' argument specs (ansible-doc -t role fleetpki.mtls.<role>)"
        out.append(f"{name} is not a variable of any fleetpki.mtls role: {hint}")
    return out


class FilterModule:
    def filters(self):
        return {"unknown_variables": unknown_variables}
