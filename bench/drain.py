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
"""

from __future__ import annotations

import argparse
import json
import statistics
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", action="append", required=True, help="LABEL=PATH of an mtls_ca_sign binary")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engine", default="local-aws-sqs", choices=["local-aws-sqs", "moto"])
    parser.add_argument("--options", action="append", default=[], help="LABEL=JSON: module options added for that label")
    args = parser.parse_args()
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
        ca_opts = {"root_cert_path": str(ca / "root.pem"), "root_privatekey_path": str(ca / "root.key"),
                   "intermediate_cert_path": str(ca / "intermediate.pem"), "intermediate_privatekey_path": str(ca / "intermediate.key"),
                   "chain_path": str(ca / "chain.pem")}  # fmt: skip
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
        results: dict[str, list[dict[str, float]]] = {label: [] for label in binaries}
        for rnd in range(args.rounds):
            for label, binary in binaries.items():
                fill(sqs, csr_queue, nodes)
                opts = {"csr_queue_url": csr_queue, "ownca_path": ca_opts["intermediate_cert_path"],
                        "ownca_privatekey_path": ca_opts["intermediate_privatekey_path"], "ca_chain_path": ca_opts["chain_path"],
                        "policy_path": str(ca / "policy.json"), "audit_log_path": str(base / f"record-{label}.jsonl"),
                        **extra.get(label, {})}  # fmt: skip
                fleet.BIN_DIR = Path(binary).parent
                args_file = fleet.write_args(base / f"sign-{label}-{rnd}.json", "mtls_ca_sign", opts)
                result = fleet.run_binary(Path(binary).name, args_file, env, 1800)
                if result.get("failed") or result.get("issued") != args.requests:
                    raise SystemExit(f"{label}: {json.dumps(result)[:2000]}")
                rate = args.requests / result["_elapsed"]
                results[label].append({"wall_s": result["_elapsed"], "cpu_s": result["_cpu"], "per_s": rate})
                fleet.log(f"round {rnd + 1} {label}: {args.requests} in {result['_elapsed']:.2f} s = {rate:.0f}/s, CPU {result['_cpu']:.2f} s")
        summary = {label: {"median_per_s": round(statistics.median(r["per_s"] for r in runs), 1),
                           "median_cpu_s": round(statistics.median(r["cpu_s"] for r in runs), 3), "runs": runs}
                   for label, runs in results.items()}  # fmt: skip
        print(json.dumps({"requests": args.requests, "engine": args.engine, "options": extra, "results": summary}, indent=2))
    finally:
        fleet.stop_sqs(base / "sqs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
