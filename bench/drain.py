#!/usr/bin/env python3
"""The worker's drain rate, one `mtls_ca_sign` binary against another on the same queue server in
the same run: for each round, N version-1 requests (made here with `cryptography`, each for its
own instance with its reply queue) are put on the CSR queue, then the binary drains them (one
process, batches of 10) and its wall time and CPU are taken. Rounds alternate between the binaries
so a busy machine slows both alike; the figure to read is the ratio.

    bench/drain.py --binary before=/path/to/old/mtls_ca_sign --binary after=target/.../mtls_ca_sign
                   [--requests 2000] [--rounds 3] [--engine local-aws-sqs]

One binary under two labels, with `--options LABEL=JSON` adding module options to one of them,
measures what an option costs; the metrics' cost, for instance:

    bench/drain.py --binary off=$B --binary on=$B --options 'on={"metrics_textfile": "METRICS_DIR/ca.prom"}' \
                   --requests 10000 --rounds 5

(METRICS_DIR is replaced by a directory of the run.)

The issuance record (audit_log_path) is given to every binary (it is required since the record is
written before each answer; an older binary writes it after).

`--latency-ms 10` (repeatable; 0 is the server as it is) puts bench/latency_proxy.py between the
worker and the server, adding 10 ms (plus `--jitter-ms`, default 2) to every SQS call, as a queue
in a remote region would; the queue is filled directly. The drain at concurrency 1 against the
default, with and without the proxy:

    bench/drain.py --binary c1=$B --options 'c1={"concurrency": 1}' --binary c16=$B \
                   --latency-ms 0 --latency-ms 10 --requests 10000 --rounds 3

For each drain: the rate, the worker's CPU (wait4), the SQS server's CPU over the drain
(/proc/PID/stat) and the cores they kept busy together, (worker + server CPU-s) / wall-s. A drain
ends with one receive that long-polls the emptied queue for `wait_time_seconds` (1 s by default):
counted in its time, as it is part of every drain. (`wait_time_seconds: 0` would end it sooner,
and too soon: a short poll may come back empty while requests wait, on SQS as on local-aws-sqs
under load, and the drain then stops there.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import boto3
import fleet
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def requests(n: int, base: int) -> list[tuple[str, str]]:
    """(instance id, CSR PEM) of n nodes, as mtls_csr_submit makes them (P-256, CN, one DNS name)."""
    out = []
    for i in range(n):
        instance = f"i-{base + i:017x}"
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, instance)]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"node{i}.fleet.internal")]), critical=False)
            .sign(key, hashes.SHA256())
        )
        out.append((instance, csr.public_bytes(serialization.Encoding.PEM).decode()))
    return out


def fill(sqs, queue: str, nodes: list[tuple[str, str]]) -> None:
    for start in range(0, len(nodes), 10):
        entries = []
        for j, (instance, csr) in enumerate(nodes[start : start + 10]):
            body = {"instance_id": instance, "csr_pem": csr, "version": 1, "request_id": str(uuid.uuid4()),
                    "timestamp": int(time.time()), "profile": "mtls", "reply_mode": "per_node"}  # fmt: skip
            entries.append({"Id": str(j), "MessageBody": json.dumps(body),
                            "MessageAttributes": {"InstanceId": {"DataType": "String", "StringValue": instance}}})  # fmt: skip
        failed = sqs.send_message_batch(QueueUrl=queue, Entries=entries).get("Failed")
        if failed:
            raise SystemExit(f"SendMessageBatch failed: {failed}")


def start_proxy(endpoint: str, delay_ms: float, jitter_ms: float) -> tuple[subprocess.Popen, str]:
    """bench/latency_proxy.py in front of `endpoint` (http://HOST:PORT); returns it and its URL."""
    target = endpoint.split("://", 1)[1].rstrip("/")
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve().parent / "latency_proxy.py"), "--target", target,
         "--delay-ms", str(delay_ms), "--jitter-ms", str(jitter_ms)],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"latency_proxy.py did not start: {line!r}")
    return proc, "http://" + line.removeprefix("listening on ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", action="append", required=True, help="LABEL=PATH of an mtls_ca_sign binary")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engine", default="local-aws-sqs", choices=["local-aws-sqs", "moto"])
    parser.add_argument("--options", action="append", default=[], help="LABEL=JSON: module options added for that label")
    parser.add_argument("--latency-ms", action="append", type=float, help="delay added to every SQS call by a proxy (repeatable; default 0: none)")
    parser.add_argument("--jitter-ms", type=float, default=2.0, help="random extra delay per call with --latency-ms, 0 to this much (default 2)")
    args = parser.parse_args()
    latencies = args.latency_ms or [0.0]
    binaries = {label: str(Path(path).resolve()) for label, path in (b.split("=", 1) for b in args.binary)}
    extra = {label: json.loads(text) for label, text in (o.split("=", 1) for o in args.options)}
    unknown = set(extra) - set(binaries)
    if unknown:
        parser.error(f"--options for labels with no --binary: {sorted(unknown)}")

    base = Path(tempfile.mkdtemp(prefix="fleetpki-drain-"))
    values = fleet.start_sqs(args.engine, base / "sqs", "aws")
    try:
        env = fleet.module_env({k: values[k] for k in fleet.SQS_ENV_KEYS})
        sqs = boto3.client("sqs", endpoint_url=values["AWS_ENDPOINT_URL_SQS"], region_name=values["AWS_REGION"],
                           aws_access_key_id=values["AWS_ACCESS_KEY_ID"], aws_secret_access_key=values["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
        csr_queue = values["FLEETPKI_CSR_QUEUE_URL"]
        ca = base / "ca"
        ca_opts = fleet.ca_init_options(ca)
        init = fleet.run_binary("mtls_ca_init", fleet.write_args(ca / "init.json", "mtls_ca_init", ca_opts), env, 60)
        if init.get("failed"):
            raise SystemExit(f"mtls_ca_init failed: {init}")
        (ca / "policy.json").write_text(json.dumps(fleet.POLICY))
        metrics_dir = base / "metrics"
        metrics_dir.mkdir()
        extra = {label: json.loads(json.dumps(o).replace("METRICS_DIR", str(metrics_dir))) for label, o in extra.items()}
        nodes = requests(args.requests, 0x0D0000000000000)
        for instance, _ in nodes:
            sqs.create_queue(QueueName=f"fleetpki-reply-{instance}")
        server_pid = int((base / "sqs" / "sqs.pid").read_text())
        proxies = {}
        for latency in latencies:
            if latency > 0:
                proc, url = start_proxy(values["AWS_ENDPOINT_URL_SQS"], latency, args.jitter_ms)
                proxies[latency] = (proc, dict(env, AWS_ENDPOINT_URL_SQS=url))
        results: dict[str, list[dict[str, float]]] = {}
        try:
            for rnd in range(args.rounds):
                for latency in latencies:
                    run_env = proxies[latency][1] if latency > 0 else env
                    for label, binary in binaries.items():
                        key = f"{label} @ {latency:g} ms" if len(latencies) > 1 or latency > 0 else label
                        fill(sqs, csr_queue, nodes)
                        opts = {"csr_queue_url": csr_queue, "ownca_path": ca_opts["intermediate_cert_path"],
                                "ownca_privatekey_path": ca_opts["intermediate_privatekey_path"], "ca_chain_path": ca_opts["chain_path"],
                                "policy_path": str(ca / "policy.json"), "audit_log_path": str(base / f"record-{label}.jsonl"),
                                **extra.get(label, {})}  # fmt: skip
                        fleet.BIN_DIR = Path(binary).parent
                        args_file = fleet.write_args(base / f"sign-{label}-{rnd}.json", "mtls_ca_sign", opts)
                        server_before = fleet.process_cpu_seconds(server_pid)
                        result = fleet.run_binary(Path(binary).name, args_file, run_env, 1800)
                        server_cpu = fleet.process_cpu_seconds(server_pid) - server_before
                        if result.get("failed") or result.get("issued") != args.requests:
                            raise SystemExit(f"{key}: {json.dumps(result)[:2000]}")
                        rate = args.requests / result["_elapsed"]
                        busy = (result["_cpu"] + server_cpu) / result["_elapsed"]
                        results.setdefault(key, []).append({"wall_s": result["_elapsed"], "cpu_s": result["_cpu"], "server_cpu_s": server_cpu,
                                                            "cores_busy": busy, "per_s": rate})  # fmt: skip
                        fleet.log(f"round {rnd + 1} {key}: {args.requests} in {result['_elapsed']:.2f} s = {rate:.0f}/s, "
                                  f"CPU worker {result['_cpu']:.2f} s + server {server_cpu:.2f} s = {busy:.2f} cores busy")  # fmt: skip
        finally:
            for proc, _ in proxies.values():
                proc.terminate()
                proc.wait(timeout=30)
        summary = {key: {"median_per_s": round(statistics.median(r["per_s"] for r in runs), 1),
                         "median_cpu_s": round(statistics.median(r["cpu_s"] for r in runs), 3),
                         "median_server_cpu_s": round(statistics.median(r["server_cpu_s"] for r in runs), 3),
                         "median_cores_busy": round(statistics.median(r["cores_busy"] for r in runs), 2), "runs": runs}
                   for key, runs in results.items()}  # fmt: skip
        print(json.dumps({"requests": args.requests, "engine": args.engine, "options": extra, "latency_ms": latencies,
                          "jitter_ms": args.jitter_ms, "results": summary}, indent=2))  # fmt: skip
    finally:
        fleet.stop_sqs(base / "sqs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
