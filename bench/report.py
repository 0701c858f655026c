#!/usr/bin/env python3
"""Combines the results of bench/run-all (one directory of JSON files) into Markdown tables and
checks them against the benchmarks' acceptance criteria (the `checks` below).

    .venv/bin/python bench/report.py RESULTS_DIR            Markdown on stdout
    .venv/bin/python bench/report.py RESULTS_DIR --json F   also the combined figures and checks as JSON

Files read (each optional): fleet-local-aws-sqs-100.json, fleet-local-aws-sqs-1000.json,
fleet-moto-200.json (bench/fleet.py), fleet-local-aws-sqs-100-package.json (the package's own
receive semantics), openssl-speed.txt (`openssl speed -seconds 3 ecdsap256`), sign-rate.json (the
`sign_rate` example), ssh-play.json (bench/ssh_play.py), binaries.json (sizes, newest GLIBC symbol),
drain.json (bench/drain.py: concurrency 1 and 16, the default, with and without 10 ms per SQS call),
node-cpu.json (bench/node_cpu.py: CPU per run of the node modules).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

# The seed article's own scripts against moto on this kind of machine.
SEED_200 = {"nodes": 200, "installed": 80, "timeouts": 120, "wall_seconds": 2415.0, "calls_per_installed": 74.5}


def load(path: Path) -> Any:
    if not path.is_file():
        return None
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    return path.read_text(encoding="utf-8")


def parse_openssl_speed(text: str | None) -> dict[str, float] | None:
    """`256 bits ecdsa (nistp256)   0.0000s   0.0000s  73914.3  25222.7` -> sign/s, verify/s."""
    if not text:
        return None
    m = re.search(r"256 bits ecdsa \(nistp256\)\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)", text)
    if not m:
        return None
    sign, verify = float(m.group(1)), float(m.group(2))
    return {"sign_per_second": sign, "verify_per_second": verify, "verify_and_sign_per_second": round(1 / (1 / sign + 1 / verify), 1)}


def fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def fleet_rows(runs: list[dict[str, Any]]) -> list[str]:
    out = [
        (
            "| server | nodes | forks | submit s | sign s | fetch s | total s | ms per certificate | module CPU ms per certificate "
            "| SQS calls | calls per certificate | installed / verified | fetch timeouts |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        ph = {p["phase"]: p for p in r["phases"]}
        engine = r["engine"] + (" (published receive)" if r.get("receive_semantics") == "package" else "")
        c = r["certificates"]
        out.append(
            f"| {engine} | {r['nodes']:,} | {r['forks']} | {fmt(ph['submit']['wall_seconds'])} | {fmt(ph['sign']['wall_seconds'])} | "
            f"{fmt(ph['fetch']['wall_seconds'])} | {fmt(r['wall_seconds'])} | "
            f"{fmt(1000 * r['wall_seconds_per_certificate'], 1) if r['wall_seconds_per_certificate'] else '–'} | "
            f"{fmt(1000 * r['module_cpu_seconds_per_certificate'], 1) if r.get('module_cpu_seconds_per_certificate') else '–'} | "
            f"{r['sqs_calls_total']:,} | {fmt(r['sqs_calls_per_installed_certificate'], 3)} | {c['installed']:,} / {c['verified']:,} | {r['timeouts']} |"
        )
    return out


def calls_rows(runs: list[dict[str, Any]]) -> list[str]:
    ops = sorted({op for r in runs for op in r["sqs_calls"]})
    out = ["| server | nodes | " + " | ".join(ops) + " |", "|---|---:|" + "---:|" * len(ops)]
    for r in runs:
        out.append(f"| {r['engine']} | {r['nodes']:,} | " + " | ".join(f"{r['sqs_calls'].get(op, 0):,}" for op in ops) + " |")
    return out


def sign_rate_figures(data: Any) -> list[dict[str, Any]] | None:
    """The sign_rate example's JSON (modules/fleetpki-modules/examples/sign_rate.rs): per setting
    (one core, all cores) the worker's rate, the raw verify+sign rate, and their ratio."""
    if not isinstance(data, dict):
        return None
    out = []
    for suffix, label in (("1core", "one core"), ("all_cores", f"all {data.get('cores', '?')} cores")):
        worker, raw = data.get(f"worker_per_s_{suffix}"), data.get(f"raw_verify_sign_per_s_{suffix}")
        if isinstance(worker, (int, float)) and isinstance(raw, (int, float)) and raw > 0:
            out.append({"setting": label, "worker_per_second": worker, "raw_per_second": raw, "ratio": round(worker / raw, 3)})
    return out or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    d = args.results

    las100 = load(d / "fleet-local-aws-sqs-100.json")
    las1000 = load(d / "fleet-local-aws-sqs-1000.json")
    moto200 = load(d / "fleet-moto-200.json")
    package100 = load(d / "fleet-local-aws-sqs-100-package.json")
    moto200f5 = load(d / "fleet-moto-200-forks5.json")
    speed = parse_openssl_speed(load(d / "openssl-speed.txt"))
    sign_rate = load(d / "sign-rate.json")
    ssh = load(d / "ssh-play.json")
    binaries = load(d / "binaries.json")
    drain = load(d / "drain.json")
    node_cpu = load(d / "node-cpu.json")
    meta = load(d / "meta.json") or {}

    lines: list[str] = []
    lines.append(f"Measured {meta.get('date', '?')} on {meta.get('cpu_model', '?')} ({meta.get('cpus', '?')} cores), "
                 f"load average before the run {meta.get('load_average_at_start', '?')}; commit {meta.get('commit', '?')}.")
    lines.append("")
    runs = [r for r in (las100, las1000, moto200, moto200f5, package100) if r]
    if runs:
        lines.append("### Fleet: submit, sign, fetch (bench/fleet.py, forks 20, one worker, fetch timeout 60 s)")
        lines.append("")
        lines += fleet_rows(runs)
        lines.append("")
        lines.append("Per module run (one node's task; the worker's whole drain), median: wall ms / CPU ms (user + system, from wait4):")
        lines.append("")
        lines.append("| server | nodes | submit | sign (one run) | fetch |")
        lines.append("|---|---:|---:|---:|---:|")

        def cell(p):
            return f"{1000 * p['run_seconds_p50']:,.0f} / {1000 * p.get('run_cpu_seconds_p50', 0):,.1f}"

        for r in runs:
            ph = {p["phase"]: p for p in r["phases"]}
            lines.append(f"| {r['engine']} | {r['nodes']:,} | {cell(ph['submit'])} | {cell(ph['sign'])} | {cell(ph['fetch'])} |")
        lines.append("")
        lines.append("SQS calls by operation (every call each module made, from its `sqs_calls`):")
        lines.append("")
        lines += calls_rows(runs)
        lines.append("")
    if moto200:
        lines.append("### Against the seed's pipeline (moto, 200 nodes)")
        lines.append("")
        lines.append("| pipeline | installed | fetch timeouts | wall time s | SQS calls per installed certificate |")
        lines.append("|---|---:|---:|---:|---:|")
        lines.append(
            f"| seed article's scripts (5 at a time) | {SEED_200['installed']} / 200 | {SEED_200['timeouts']} | "
            f"{SEED_200['wall_seconds']:,.0f} | {SEED_200['calls_per_installed']} |"
        )
        for r in (moto200f5, moto200):
            if r:
                lines.append(
                    f"| fleetpki.mtls ({r['forks']} at a time) | {r['certificates']['installed']} / {r['nodes']} | {r['timeouts']} | "
                    f"{r['wall_seconds']:,.1f} | {r['sqs_calls_per_installed_certificate']} |"
                )
        lines.append("")
        for r in (moto200f5, moto200):
            if r:
                lines.append(f"At {r['forks']} at a time: {SEED_200['wall_seconds'] / r['wall_seconds']:,.0f}× less wall time, "
                             f"{SEED_200['calls_per_installed'] / r['sqs_calls_per_installed_certificate']:.1f}× fewer calls per installed certificate.  ")
        lines.append("")
    if speed or sign_rate or las1000:
        lines.append("### Signing rate")
        lines.append("")
        lines.append("| what | per second |")
        lines.append("|---|---:|")
        if speed:
            lines.append(f"| `openssl speed -seconds 3 ecdsap256`, one core: sign | {speed['sign_per_second']:,.0f} |")
            lines.append(f"| same: verify | {speed['verify_per_second']:,.0f} |")
            lines.append(f"| same: one verify + one sign (a CSR's work) | {speed['verify_and_sign_per_second']:,.0f} |")
        srf = sign_rate_figures(sign_rate)
        if srf:
            for f in srf:
                lines.append(
                    "| worker's CPU path per request (`judge_batch`: JSON, CSR parse + verify, policy, sign, PEM; no queue), "
                    f"{f['setting']} | {f['worker_per_second']:,.0f} |"
                )
                lines.append(f"| raw aws-lc-rs P-256 verify + sign, {f['setting']}, same run | {f['raw_per_second']:,.0f} |")
                lines.append(f"| ratio worker / raw, {f['setting']} | {f['ratio']:.3f} |")
        elif sign_rate is not None:
            lines.append(f"| `sign_rate` example (raw output) | `{json.dumps(sign_rate)[:200]}` |")
        else:
            lines.append("| worker's signing vs raw library rate (`sign_rate` example) | not measured: example missing |")
        for r in (las1000, moto200):
            if r:
                ph = {p["phase"]: p for p in r["phases"]}
                lines.append(
                    f"| sign phase end to end, {r['engine']} {r['nodes']:,} nodes (receive, check, sign, answer, delete) | "
                    f"{r['sign_phase_certificates_per_second']:,.0f} |"
                )
        lines.append("")
    if ssh:
        lines.append(f"### SSH play: {ssh['hosts']} hosts over SSH on 127.0.0.1, -f {ssh['forks']}, median of {ssh['repeat']}")
        lines.append("")
        lines.append(f"| connections | {ssh['module']} check mode, s | ansible.builtin.ping, s | ratio | runs module / ping, s |")
        lines.append("|---|---:|---:|---:|---|")
        names = {"warm": "kept open (ControlPersist), Ansible's ssh_args", "cold": "new per run", "warm-nc": "kept open, no SSH compression"}
        for mode, m in ssh["modes"].items():
            runs = ", ".join(f"{x:.1f}" for x in m["runs_seconds"]["module"]) + " / " + ", ".join(f"{x:.1f}" for x in m["runs_seconds"]["ping"])
            lines.append(
                f"| {names.get(mode, mode)} | {m['median_seconds']['module']:.2f} | {m['median_seconds']['ping']:.2f} | "
                f"{m['ratio_module_to_ping']:.2f} | {runs} |"
            )
        lines.append("")
        lines.append(f"Module binary {ssh['module_binary_bytes']:,} bytes.")
        lines.append("")
    if drain:
        lines.append(f"### The worker's drain of {drain['requests']:,} queued requests (bench/drain.py, {drain['engine']}, medians)")
        lines.append("")
        lines.append("| drain | certificates/s | worker CPU s | server CPU s | cores busy (worker + server) |")
        lines.append("|---|---:|---:|---:|---:|")
        for key, r in drain["results"].items():
            lines.append(f"| {key} | {r['median_per_s']:,.0f} | {r['median_cpu_s']:.2f} | {r['median_server_cpu_s']:.2f} | {r['median_cores_busy']:.2f} |")
        lines.append("")
    if node_cpu:
        lines.append("### CPU per module run (bench/node_cpu.py, medians, ms of user + system CPU)")
        lines.append("")
        labels = list(node_cpu["figures"])
        lines.append("| run | " + " | ".join(labels) + " |")
        lines.append("|---|" + "---:|" * len(labels))
        for module in next(iter(node_cpu["figures"].values())):
            lines.append(f"| {module} | " + " | ".join(f"{node_cpu['figures'][lab][module]['cpu_ms_median']:.2f}" for lab in labels) + " |")
        lines.append("")
    if binaries:
        lines.append("### Module binaries")
        lines.append("")
        lines.append("| binary | bytes | newest GLIBC symbol |")
        lines.append("|---|---:|---|")
        for name, b in binaries.items():
            lines.append(f"| {name} | {b['bytes']:,} | {b['newest_glibc']} |")
        lines.append("")

    # Acceptance criteria.
    checks: list[tuple[str, bool | None, str]] = []
    for r in (las100, las1000):
        if r:
            ok = r["certificates"]["installed"] == r["nodes"] and r["certificates"]["verified"] == r["nodes"] and r["timeouts"] == 0
            checks.append((f"local-aws-sqs N={r['nodes']}: every node installed a verified certificate, no fetch timed out", ok,
                           f"{r['certificates']['verified']}/{r['nodes']} verified, {r['timeouts']} timeouts"))
            cpc = r["sqs_calls_per_installed_certificate"]
            checks.append((f"local-aws-sqs N={r['nodes']}: SQS calls per installed certificate ≤ 6", cpc is not None and cpc <= 6, f"{cpc}"))
    if las100 and las1000:
        a, b = las100["sqs_calls_per_installed_certificate"], las1000["sqs_calls_per_installed_certificate"]
        spread = abs(a - b) / min(a, b)
        checks.append(("calls per certificate at N=100 and N=1000 within 10 % of each other", spread <= 0.10, f"{a} vs {b} ({100 * spread:.1f} %)"))
        t1, t2 = las100["wall_seconds_per_certificate"], las1000["wall_seconds_per_certificate"]
        checks.append(("wall time per certificate at N=1000 within 1.5× of N=100", t2 <= 1.5 * t1,
                       f"{1000 * t2:.1f} ms vs {1000 * t1:.1f} ms ({t2 / t1:.2f}×)"))
    if moto200:
        ok = moto200["certificates"]["installed"] == moto200["nodes"] and moto200["timeouts"] == 0
        checks.append(("moto N=200: every node installed", ok, f"{moto200['certificates']['installed']}/{moto200['nodes']}"))
        checks.append(("moto N=200: at least 50× less wall time than the seed's 2,415 s", SEED_200["wall_seconds"] / moto200["wall_seconds"] >= 50,
                       f"{moto200['wall_seconds']:.1f} s ({SEED_200['wall_seconds'] / moto200['wall_seconds']:.0f}×)"))
        checks.append(("moto N=200: calls per certificate flat (vs the seed's 74.5)", moto200["sqs_calls_per_installed_certificate"] <= 6,
                       f"{moto200['sqs_calls_per_installed_certificate']}"))
    srf = sign_rate_figures(sign_rate)
    if srf:
        for f in srf:
            checks.append((f"worker's signing rate ≥ 80 % of the raw verify+sign rate ({f['setting']})", f["ratio"] >= 0.8,
                           f"{f['worker_per_second']:,.0f}/s vs {f['raw_per_second']:,.0f}/s ({f['ratio']:.3f})"))
        one_core = next((f for f in srf if f["setting"] == "one core"), None)
        if one_core and speed:
            ratio = one_core["worker_per_second"] / speed["verify_and_sign_per_second"]
            checks.append(("worker's CPU path per certificate, one core, ≥ 0.8 × openssl speed's verify+sign rate", ratio >= 0.8,
                           f"{one_core['worker_per_second']:,.0f}/s vs {speed['verify_and_sign_per_second']:,.0f}/s ({ratio:.2f})"))
    else:
        checks.append(("worker's signing rate ≥ 80 % of the raw verify+sign rate", None, "not measured (sign_rate example missing or unreadable)"))
    if drain:
        res = drain["results"]
        fast, slow = res.get("c16 @ 0 ms"), res.get("c1 @ 0 ms")
        if fast and slow:
            checks.append(("drain, local queue: worker and server keep ≥ 1.7 of 2 cores busy", fast["median_cores_busy"] >= 1.7,
                           f"{fast['median_cores_busy']:.2f} cores"))
            ratio = fast["median_per_s"] / slow["median_per_s"]
            checks.append(("drain, local queue: ≥ 3× the rate at concurrency 1", ratio >= 3,
                           f"{fast['median_per_s']:,.0f}/s vs {slow['median_per_s']:,.0f}/s ({ratio:.2f}×)"))
        far, far1 = res.get("c16 @ 10 ms"), res.get("c1 @ 10 ms")
        if far:
            beside = f"; concurrency 1 through the same proxy: {far1['median_per_s']:,.0f}/s" if far1 else ""
            checks.append(("drain, 10 ms added per SQS call: ≥ 1,000 certificates/s", far["median_per_s"] >= 1000,
                           f"{far['median_per_s']:,.0f}/s{beside}"))
    if node_cpu:
        last = node_cpu["figures"][list(node_cpu["figures"])[-1]]
        submit = last["mtls_csr_submit"]["cpu_ms_median"]
        checks.append(("mtls_csr_submit (new key, one SendMessage) ≤ 5 ms CPU per run", submit <= 5.0,
                       (f"{submit:.2f} ms; mtls_cert_fetch {last['mtls_cert_fetch']['cpu_ms_median']:.2f} ms, "
                       f"mtls_ca_init {last['mtls_ca_init']['cpu_ms_median']:.2f} ms, start-up alone {last['startup']['cpu_ms_median']:.2f} ms")))
    if binaries:
        # The CA host is one machine, not the fleet: its worker may be larger (metrics server).
        small = all(b["bytes"] <= (8_000_000 if n == "mtls_ca_sign" else 6_000_000) for n, b in binaries.items())
        glibc = all(tuple(int(x) for x in b["newest_glibc"].split(".")) <= (2, 17) for b in binaries.values() if b["newest_glibc"] != "none")
        checks.append(("mtls_ca_sign ≤ 8,000,000 bytes, every other module binary ≤ 6,000,000, no GLIBC symbol newer than 2.17", small and glibc,
                       ", ".join(f"{n} {b['bytes'] / 1e6:.2f} MB {b['newest_glibc']}" for n, b in binaries.items())))
    if ssh:
        for mode in ("warm", "cold"):
            m = ssh["modes"].get(mode)
            if m:
                checks.append((f"SSH play ({mode} connections): module play ≤ ping play", m["ratio_module_to_ping"] <= 1.0,
                               f"{m['median_seconds']['module']:.2f} s vs {m['median_seconds']['ping']:.2f} s ({m['ratio_module_to_ping']:.2f}×)"))
    lines.append("### Acceptance")
    lines.append("")
    lines.append("| criterion | met | figure |")
    lines.append("|---|---|---|")
    for what, ok, figure in checks:
        lines.append(f"| {what} | {'yes' if ok else ('not measured' if ok is None else '**no**')} | {figure} |")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"openssl_speed": speed, "sign_rate": sign_rate, "checks": [{"criterion": w, "met": ok, "figure": f} for w, ok, f in checks]},
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
