#!/usr/bin/env python3
import argparse
import sys
import json
import logging
import boto3
from botocore.exceptions import ClientError
# Set up basic logging for traceability in system logs
logging.basicConfig(level=logging.INFO, format='%(asctime)s - %(levelname)s - %(message)s')
def submit_csr_to_sqs(queue_url, region, instance_id, csr_content):
    """
    Submits a CSR to a specified SQS queue with instance_id as a message attribute.
    Args:
        queue_url (str): The URL of the SQS queue.
        region (str): The AWS region of the queue.
        instance_id (str): The EC2 instance ID to use as a message attribute.
        csr_content (str): The PEM-encoded CSR string.
    Returns:
        str: The MessageId of the sent message, or None on failure.
    """
    sqs_client = boto3.client('sqs', region_name=region)
    message_body = json.dumps({
        'instance_id': instance_id,
        'csr_pem': csr_content
    })
    try:
        response = sqs_client.send_message(
            QueueUrl=queue_url,
            MessageBody=message_body,
            MessageAttributes={
                'InstanceId': {
                    'DataType': 'String',
                    'StringValue': instance_id
                }
            }
        )
        logging.info(f"Successfully sent CSR for instance {instance_id}. MessageId: {response['MessageId']}")
        return response['MessageId']
    except ClientError as e:
        logging.error(f"Failed to send message to SQS queue {queue_url}: {e}")
        return None
if __name__ == '__main__':
    parser = argparse.ArgumentParser(description="Submit a CSR from stdin to an AWS SQS queue.")
    parser.add_argument('--queue-url', required=True, help='The URL of the target SQS queue.')
    parser.add_argument('--region', required=True, help='The AWS region.')
    parser.add_argument('--instance-id', required=True, help='The EC2 instance ID for message attribute.')
    args = parser.parse_args()
    # Read CSR from standard input, which is piped from Ansible
    csr_pem = sys.stdin.read()
    if not csr_pem:
        logging.error("No CSR content received from stdin.")
        sys.exit(1)
    message_id = submit_csr_to_sqs(args.queue_url, args.region, args.instance_id, csr_pem)
    if message_id:
        print(json.dumps({"status": "success", "message_id": message_id}))
        sys.exit(0)
    else:
        print(json.dumps({"status": "error", "message": "Failed to submit CSR to SQS."}))
        sys.exit(1)
