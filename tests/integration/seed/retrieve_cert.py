#!/usr/bin/env python3
# The seed article's roles/mtls-client/templates/retrieve_cert.py.j2. The article shows its core
# logic (retrieve_certificate, verbatim below); the imports, argument parsing and main are
# completed minimally, with the options its Ansible task passes. The endpoint comes from the
# environment (AWS_ENDPOINT_URL_SQS), which boto3 honours, so the script itself is unchanged.
import argparse
import json
import logging
import sys
import time

import boto3

logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(levelname)s - %(message)s")


def retrieve_certificate(queue_url, region, instance_id, cert_path, chain_path, timeout):
    sqs_client = boto3.client("sqs", region_name=region)
    start_time = time.time()
    while time.time() - start_time < timeout:
        response = sqs_client.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=5, MessageAttributeNames=["InstanceId"]
        )
        if "Messages" not in response:
            logging.info("No messages in queue, polling again.")
            continue
        for message in response["Messages"]:
            msg_attrs = message.get("MessageAttributes", {})
            msg_instance_id = msg_attrs.get("InstanceId", {}).get("StringValue")
            if msg_instance_id == instance_id:
                logging.info(f"Found matching certificate message for instance {instance_id}")
                body = json.loads(message["Body"])
                with open(cert_path, "w") as f:
                    f.write(body["certificate_pem"])
                with open(chain_path, "w") as f:
                    f.write(body["ca_chain_pem"])
                logging.info(f"Certificate and chain written to disk.")
                # Acknowledge and delete message
                sqs_client.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
                return True
    logging.error(f"Timed out after {timeout} seconds waiting for certificate.")
    return False


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Retrieve this instance's signed certificate from an AWS SQS queue.")
    parser.add_argument("--queue-url", required=True, help="The URL of the signed certificates queue.")
    parser.add_argument("--region", required=True, help="The AWS region.")
    parser.add_argument("--instance-id", required=True, help="The EC2 instance ID to look for.")
    parser.add_argument("--cert-path", required=True, help="Where to write the certificate.")
    parser.add_argument("--chain-path", required=True, help="Where to write the CA chain.")
    parser.add_argument("--timeout", type=int, default=300, help="Seconds to wait for the certificate.")
    args = parser.parse_args()
    if retrieve_certificate(
        args.queue_url, args.region, args.instance_id, args.cert_path, args.chain_path, args.timeout
    ):
        # The article's task reports changed_when "'Certificate installed' in stdout".
        print("Certificate installed")
        sys.exit(0)
    sys.exit(1)
