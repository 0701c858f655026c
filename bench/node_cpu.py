#!/usr/bin/env python3
"""CPU per run of the node-side modules and of `mtls_ca_init`, one build against another in the
same run: user + system CPU of each process from wait4 (getrusage of the child; `/usr/bin/time`
counts in 10 ms steps), medians over --runs runs per module, rounds alternating between the
builds so a busy machine slows both alike.

    .venv/bin/python bench/node_cpu.py --bin-dir before=/path/to/old/release --bin-dir after=target/x86_64-unknown-linux-gnu/release
                                       [--runs 20] [--engine local-aws-sqs] [--out FILE]

What is run, each time on a node or CA of its own, against a local SQS server on 127.0.0.1:
- `startup`: `mtls_csr_submit` on an args file with an unknown option; it stops at the argument
  check, so this is the process start-up alone;
- `mtls_ca_init`: a new root and intermediate (two P-256 keys, two certificates), no network;
- `mtls_csr_submit`: the default key type, `key_rotation: rotate`, a new key, one SendMessage;
- `mtls_cert_fetch`: after one drain by the build's own `mtls_ca_sign` (not counted), the fetch
  that receives, verifies and installs the node's certificate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fleet  # bench/fleet.py: the SQS server, args files, wait4 runs

MODULES = ("startup", "mtls_ca_init", "mtls_csr_submit", "mtls_cert_fetch")


def run(bin_dir: Path, module: str, args_file: Path, env: dict[str, str]) -> dict:
    fleet.BIN_DIR = bin_dir
    return fleet.run_binary(module, args_file, env, timeout=120)


def one_round(label: str, bin_dir: Path, base: Path, runs: int, env: dict[str, str], csr_queue: str, first_instance: int) -> dict[str, list[float]]:
    """CPU seconds of each module's runs in this round."""
    cpu: dict[str, list[float]] = {m: [] for m in MODULES}
    work = base / label

    def checked(module: str, args_file: Path) -> dict:
        result = run(bin_dir, module, args_file, env)
        if result.get("failed"):
            raise SystemExit(f"{label}: {module} failed: {result.get('msg')}")
        return result

    for i in range(runs):
        bad = fleet.write_args(work / f"startup-{i}.json", "mtls_csr_submit", {"no_such_option": True})
        result = run(bin_dir, "mtls_csr_submit", bad, env)
        if not result.get("failed") or "no_such_option" not in str(result.get("msg")):
            raise SystemExit(f"{label}: the start-up run did not stop at its unknown option: {result}")
        cpu["startup"].append(result["_cpu"])

    ca = work / "ca"
    for i in range(runs):
        d = work / f"ca-init-{i}"
        opts = fleet.ca_init_options(d)
        cpu["mtls_ca_init"].append(checked("mtls_ca_init", fleet.write_args(d / "args.json", "mtls_ca_init", opts))["_cpu"])
        if i == 0:
            ca_opts = opts
    policy = ca / "policy.json"
    policy.parent.mkdir(parents=True, exist_ok=True)
    policy.write_text(json.dumps(fleet.POLICY), encoding="utf-8")

    nodes = [fleet.Node(n, work, first_instance) for n in range(runs)]
    for node in nodes:
        opts = {
            "instance_id": node.instance_id,
            "path": str(node.path),
            "csr_queue_url": csr_queue,
            "subject_alt_name": node.sans,
            "key_rotation": "rotate",
        }
        result = checked("mtls_csr_submit", fleet.write_args(node.dir / "submit.json", "mtls_csr_submit", opts))
        sent = (result.get("sqs_calls") or {}).get("SendMessage", 0)
        if not result.get("changed") or sent != 1:
            raise SystemExit(f"{label}: mtls_csr_submit on {node.instance_id} did not send one request: {result}")
        cpu["mtls_csr_submit"].append(result["_cpu"])

    drain = {
        "csr_queue_url": csr_queue,
        "policy_path": str(policy),
        "ownca_path": ca_opts["intermediate_cert_path"],
        "ownca_privatekey_path": ca_opts["intermediate_privatekey_path"],
        "ca_chain_path": ca_opts["chain_path"],
        "audit_log_path": str(ca / "issued.jsonl"),
    }
    signed = checked("mtls_ca_sign", fleet.write_args(ca / "sign.json", "mtls_ca_sign", drain))
    if signed.get("issued") != runs:
        raise SystemExit(f"{label}: the drain issued {signed.get('issued')} of {runs}: {signed.get('msg')}")

    for node in nodes:
        opts = {
            "instance_id": node.instance_id,
            "path": str(node.path),
            "ca_path": ca_opts["root_cert_path"],
            "wait": True,
            "timeout": 30,
        }
        result = checked("mtls_cert_fetch", fleet.write_args(node.dir / "fetch.json", "mtls_cert_fetch", opts))
        if result.get("status") != "installed":
            raise SystemExit(f"{label}: mtls_cert_fetch on {node.instance_id} did not install: {result}")
        cpu["mtls_cert_fetch"].append(result["_cpu"])
    return cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin-dir", action="append", default=[], metavar="LABEL=DIR", help="a build to measure (repeatable; default: this tree's build)")
    parser.add_argument("--runs", type=int, default=20, help="runs of each module per round (default 20)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per build, alternated (default 2)")
    parser.add_argument("--engine", default="local-aws-sqs", choices=["local-aws-sqs", "moto"])
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    args = parser.parse_args(argv)
    builds = []
    for item in args.bin_dir or [f"this={fleet.BIN_DIR}"]:
        label, sep, directory = item.partition("=")
        if not sep or not label:
            parser.error(f"--bin-dir takes LABEL=DIR, not {item!r}")
        if not (Path(directory) / "mtls_csr_submit").is_file():
            parser.error(f"--bin-dir {label}: {directory} has no mtls_csr_submit")
        builds.append((label, Path(directory).resolve()))

    with tempfile.TemporaryDirectory(prefix="fleetpki-node-cpu-") as tmp:
        base = Path(tmp)
        sqs_values = fleet.start_sqs(args.engine, base / "sqs", "aws")
        try:
            env = fleet.module_env({k: sqs_values[k] for k in fleet.SQS_ENV_KEYS})
            cpu: dict[str, dict[str, list[float]]] = {label: {m: [] for m in MODULES} for label, _ in builds}
            instance = 0x100000
            for r in range(args.rounds):
                for label, directory in builds:
                    fleet.log(f"round {r + 1}/{args.rounds}: {label}")
                    got = one_round(f"{label}-{r}", directory, base, args.runs, env, sqs_values["FLEETPKI_CSR_QUEUE_URL"], instance)
                    instance += args.runs
                    for m in MODULES:
                        cpu[label][m].extend(got[m])
        finally:
            fleet.stop_sqs(base / "sqs")

    figures = {
        label: {
            m: {"runs": len(v), "cpu_ms_median": round(statistics.median(v) * 1000, 2), "cpu_ms_mean": round(statistics.fmean(v) * 1000, 2)}
            for m, v in per.items()
        }
        for label, per in cpu.items()
    }
    print(f"{'module':<18}" + "".join(f"{label + ' (ms CPU, median)':>28}" for label, _ in builds))
    for m in MODULES:
        print(f"{m:<18}" + "".join(f"{figures[label][m]['cpu_ms_median']:>28.2f}" for label, _ in builds))
    if args.out:
        report = {"benchmark": "node_cpu", "machine": fleet.machine_info(), "builds": {k: str(v) for k, v in builds}, "figures": figures}
        args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
