#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetpki contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

# Documentation only. The module itself is the Rust binary "mtls_ca_sign" next to this
# file (built from modules/ in the source tree); Ansible runs the extension-less binary.

from __future__ import annotations

DOCUMENTATION = r"""
module: mtls_ca_sign
short_description: Sign the certificate signing requests waiting on the CSR queue (one-shot CA drain)
version_added: 0.1.0
author:
  - fleetpki contributors (!UNKNOWN)
description:
  - Receives certificate signing requests from the CSR queue in batches, validates each one against the
    signing policy and signs the accepted ones with the intermediate CA.
  - Checks the CSR's self-signature, that its subject and subject alternative names are allowed for the
    instance it names, the key type and size, that no CA or unexpected extension is requested, the requested
    lifetime and, where the policy asks for one, the sender's identity proof.
  - Publishes the certificate with the CA chain, or a rejection with its reason, on the node's reply queue
    (derived from the verified instance id, never from the message text) and deletes the CSR message only
    after publishing. Messages that cannot be processed at all go to the dead-letter queue.
  - Requests without a C(version) field come from the seed article's scripts and are answered on
    O(shared_cert_queue_url).
  - In check mode no message is received, sent or deleted; the result reports the queue depth instead.
options:
  csr_queue_url:
    description:
      - URL of the SQS queue the nodes send their CSRs to.
    type: str
    required: true
  ownca_path:
    description:
      - Path of the intermediate CA certificate (PEM) that signs the node certificates.
    type: path
    required: true
  ownca_privatekey_path:
    description:
      - Path of the intermediate CA private key, PKCS#8, PKCS#1 or SEC1 PEM.
    type: path
    required: true
  ca_chain_path:
    description:
      - Path of the CA chain (PEM, intermediate then root) published to the nodes with each certificate.
    type: path
    required: true
  policy_path:
    description:
      - Path of the signing policy, a JSON file.
      - Mutually exclusive with O(policy); one of them is required.
    type: path
  policy:
    description:
      - The signing policy inline, with the same keys as the O(policy_path) file.
      - Mutually exclusive with O(policy_path); one of them is required.
    type: dict
  reply_queue_prefix:
    description:
      - Name prefix of the per-node reply queues; must match the nodes' setting.
    type: str
    default: fleetpki-reply-
  shared_cert_queue_url:
    description:
      - URL of the shared certificate queue, for nodes using O(fleetpki.mtls.mtls_csr_submit#module:reply_mode=shared)
        and for requests sent by the seed article's scripts.
    type: str
  dead_letter_queue_url:
    description:
      - URL of the dead-letter queue for messages that cannot be processed.
      - When not set, the target of the CSR queue's redrive policy is used.
    type: str
  batch_size:
    description:
      - Number of messages received per call, 1 to 10.
    type: int
    default: 10
  wait_time_seconds:
    description:
      - Long-polling wait of each receive call in seconds, 0 to 20.
    type: int
    default: 1
  max_requests:
    description:
      - Stop after this many requests; V(0) drains until the queue is empty.
    type: int
    default: 0
  visibility_timeout:
    description:
      - Seconds a received message stays hidden from other workers while it is processed.
    type: int
    default: 60
  audit_log_path:
    description:
      - Path of an audit log that receives one JSON line per issued, rejected or dead-lettered request.
    type: path
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - fleetpki.mtls.aws
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
notes:
  - The module is a static Linux x86_64 binary; the CA host needs no Python.
  - The signing policy is a JSON object; C(identity_proof) (V(none), V(sqs_sender_id) or V(enrollment_secret))
    is required, and C(instances) lists the allowed instance ids (exact or glob pattern) with their allowed
    DNS names, DNS suffixes, IP addresses and IP networks. The P(fleetpki.mtls.ca_worker#role) role writes
    it from the inventory.
seealso:
  - module: fleetpki.mtls.mtls_csr_submit
  - module: fleetpki.mtls.mtls_cert_fetch
  - module: fleetpki.mtls.mtls_ca_init
"""

EXAMPLES = r"""
- name: Sign every request waiting on the CSR queue
  fleetpki.mtls.mtls_ca_sign:
    csr_queue_url: https://sqs.eu-west-1.amazonaws.com/123456789012/fleetpki-csr
    ownca_path: /etc/fleetpki/ca/intermediate.cert.pem
    ownca_privatekey_path: /etc/fleetpki/ca/intermediate.key.pem
    ca_chain_path: /etc/fleetpki/ca/chain.pem
    policy_path: /etc/fleetpki/ca/policy.json
    audit_log_path: /etc/fleetpki/ca/audit.jsonl
    region: eu-west-1
  register: drain

- name: Sign at most 50 requests with an inline policy
  fleetpki.mtls.mtls_ca_sign:
    csr_queue_url: https://sqs.eu-west-1.amazonaws.com/123456789012/fleetpki-csr
    ownca_path: /etc/fleetpki/ca/intermediate.cert.pem
    ownca_privatekey_path: /etc/fleetpki/ca/intermediate.key.pem
    ca_chain_path: /etc/fleetpki/ca/chain.pem
    max_requests: 50
    policy:
      identity_proof: none
      max_lifetime_days: 30
      instances:
        - instance_id_pattern: i-*
          dns_suffixes:
            - .fleet.internal
          ip_networks:
            - 10.0.0.0/8
"""

RETURN = r"""
issued:
  description:
    - Number of certificates issued.
  returned: always
  type: int
  sample: 5
rejected:
  description:
    - Number of requests rejected by the policy (the node received a rejection with the reason).
  returned: always
  type: int
  sample: 0
dead_lettered:
  description:
    - Number of messages moved to the dead-letter queue because they could not be processed.
  returned: always
  type: int
  sample: 0
left_for_retry:
  description:
    - Number of requests left in the queue for a later attempt (for example, an answer could not be published).
  returned: when not in check mode
  type: int
  sample: 0
serials:
  description:
    - Serial numbers of the issued certificates, hexadecimal.
  returned: always
  type: list
  elements: str
  sample: ["4f1c2a9e0b7d3c51"]
queue_depth:
  description:
    - Approximate number of messages waiting on the CSR queue.
  returned: in check mode
  type: int
  sample: 5
sqs_calls:
  description:
    - Number of SQS API calls made, by operation.
  returned: always
  type: dict
  sample: {"ReceiveMessage": 2, "SendMessage": 5, "DeleteMessageBatch": 1, "GetQueueUrl": 5}
"""
