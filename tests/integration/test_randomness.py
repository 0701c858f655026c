"""Where the binaries' randomness comes from: keys, serials and request ids are drawn from aws-lc's
generator, which the build seeds from the kernel's CSPRNG alone (`getrandom`; aws-lc's CPU-jitter
source is built out, see `.cargo/config.toml` and docs/interfaces.md, "Randomness"). Under strace
a run that makes a key asks the kernel for a seed; processes started at the same moment, which
share no state, still make keys that all differ.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization

import helpers
from helpers import assert_ok, describe

# getrandom(buf, 48, flags) = 48: aws-lc's seed is 48 bytes (its CTR-DRBG's entropy input); the
# other calls in a run (Rust's hash keys, 8 or 16 bytes) are not a generator's seed.
SEED_CALL = re.compile(r"getrandom\(.*, (\d+), [^)]*\) = (\d+)")
SEED_BYTES = 48


def ca_init_args(directory) -> dict[str, str]:
    """mtls_ca_init's options for a new root and intermediate (two keys) in `directory`."""
    return {
        "root_cert_path": str(directory / "root.pem"),
        "root_privatekey_path": str(directory / "root.key"),
        "intermediate_cert_path": str(directory / "intermediate.pem"),
        "intermediate_privatekey_path": str(directory / "intermediate.key"),
        "chain_path": str(directory / "chain.pem"),
    }


def getrandom_calls(trace: str) -> list[tuple[int, int]]:
    """(bytes asked, bytes returned) of each getrandom in an strace log."""
    return [(int(m.group(1)), int(m.group(2))) for m in SEED_CALL.finditer(trace)]


@pytest.mark.parametrize("module", ["mtls_csr_submit", "mtls_ca_init"])
def test_a_run_that_makes_a_key_seeds_from_the_kernel(module, make_node, ca, tmp_path, module_env):
    if module == "mtls_csr_submit":
        node = make_node(1)
        args = node.submit_args(key_rotation="rotate")
        made = node.pending_key
    else:
        made_ca = tmp_path / "ca"
        args = ca_init_args(made_ca)
        made = made_ca / "intermediate.key"
    args_file = helpers.write_args(tmp_path / f"{module}.json", module, args)
    trace = tmp_path / "trace"
    result, proc = helpers.run_args_file(module, args_file, env=module_env, strace=("getrandom", trace))
    assert_ok(result, proc)
    assert result["changed"] and made.is_file(), describe(result, proc)
    calls = getrandom_calls(trace.read_text())
    seeds = [c for c in calls if c == (SEED_BYTES, SEED_BYTES)]
    assert seeds, f"{module} made a key without asking the kernel for a {SEED_BYTES}-byte seed; getrandom calls: {calls}"


def test_keys_made_by_processes_started_together_all_differ(tmp_path, module_env):
    """16 mtls_ca_init runs started in one burst, each making a root and an intermediate key:
    the 32 public keys are all different (no shared or time-derived seed)."""
    runs = []
    for n in range(16):
        d = tmp_path / f"ca{n}"
        d.mkdir()
        runs.append((d, helpers.write_args(d / "args.json", "mtls_ca_init", ca_init_args(d))))
    procs = [
        subprocess.Popen([str(helpers.binary_path("mtls_ca_init")), str(args_file)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=module_env, cwd=str(d))
        for d, args_file in runs
    ]  # fmt: skip
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{out.decode()}{err.decode()}"
    public_keys = []
    for d, _ in runs:
        for name in ("root.key", "intermediate.key"):
            key = helpers.load_private_key(d / name)
            public_keys.append(key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert len(public_keys) == 32
    assert len(set(public_keys)) == 32, "two processes made the same key"
