#!/usr/bin/python
# Copyright: fleetpki contributors
# Apache License 2.0 (see LICENSES/Apache-2.0.txt or https://www.apache.org/licenses/LICENSE-2.0)
# SPDX-License-Identifier: Apache-2.0

# Documentation only. The module itself is the Rust binary "mtls_cert_fetch" next to this
# file (a symlink to bin/mtls_cert_fetch); Ansible runs the extension-less binary.

# Python 2 boilerplate that ansible-test 2.16 still asks of every module file.
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: mtls_cert_fetch
short_description: Fetch this node's signed certificate from AWS SQS and install it atomically
version_added: 0.1.0
author:
  - fleetpki contributors (!UNKNOWN)
description:
  - Waits for the answer to the node's pending request (made by M(fleetpki.mtls.mtls_csr_submit)) on its
    reply queue, verifies the certificate and installs it with its key and chain.
  - A certificate is installed only if its public key is the pending key's and it chains to the pinned
    CA in O(ca_path); anything else is refused.
  - Key, certificate, chain and full chain are written to a new C(<path>/versions/<serial>/) directory and
    the C(<path>/current) symlink is switched atomically, so a service reading C(<path>/current/) always
    sees a matching key and certificate. The certificate message is deleted after the install.
  - Reports C(changed) only when a new certificate was installed, which makes it a good trigger for a
    handler that reloads the service.
  - In check mode no message is received or deleted and nothing is written.
options:
  instance_id:
    description:
      - Identity of the node, as given to M(fleetpki.mtls.mtls_csr_submit).
    type: str
    required: true
  path:
    description:
      - Directory of the node's install layout, as given to M(fleetpki.mtls.mtls_csr_submit).
    type: path
    required: true
  ca_path:
    description:
      - Path of the pinned CA bundle (PEM). Its certificates are the only trust anchors the received
        certificate chain is verified against.
    type: path
    required: true
  wait:
    description:
      - Wait up to O(timeout) seconds for the certificate.
      - When V(false), return RV(status=pending) at once if the certificate has not arrived yet.
    type: bool
    default: true
  timeout:
    description:
      - Seconds to wait for the certificate when O(wait=true).
    type: int
    default: 300
  reply_mode:
    description:
      - Where to look for the answer; must match the mode the request was submitted with.
    type: str
    choices: [per_node, shared]
    default: per_node
  reply_queue_prefix:
    description:
      - Name prefix of the per-node reply queues; must match the CA worker's setting.
    type: str
    default: fleetpki-reply-
  shared_cert_queue_url:
    description:
      - URL of the shared certificate queue.
      - Required when O(reply_mode=shared).
    type: str
  owner:
    description:
      - Owner of the installed files.
    type: str
  group:
    description:
      - Group of the installed files.
    type: str
  mode:
    description:
      - Permissions of the installed private key file, as an octal string such as V('0600') or a number.
      - Certificates and chains are installed world-readable.
    type: raw
    default: "0600"
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - fleetpki.mtls.aws
  - fleetpki.mtls.binary
  - fleetpki.mtls.node_metrics
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - Before and after, the installed certificate's serial number, subject alternative names, C(not_after) and public key fingerprint (SHA-256).
  platform:
    platforms: posix
seealso:
  - module: fleetpki.mtls.mtls_csr_submit
  - module: fleetpki.mtls.mtls_ca_sign
"""

EXAMPLES = r"""
- name: Install this node's certificate once the CA has signed it
  fleetpki.mtls.mtls_cert_fetch:
    instance_id: i-0123456789abcdef0
    path: /etc/fleetpki/tls
    ca_path: /etc/fleetpki/root-ca.pem
    timeout: 120
    region: eu-west-1
  register: fetch

- name: Look for the certificate without waiting
  fleetpki.mtls.mtls_cert_fetch:
    instance_id: i-0123456789abcdef0
    path: /etc/fleetpki/tls
    ca_path: /etc/fleetpki/root-ca.pem
    wait: false
  register: fetch

- name: Show the outcome
  ansible.builtin.debug:
    msg: "{{ fetch.status }}: {{ fetch.certificate_path | default('') }}"
"""

RETURN = r"""
error:
  description:
    - When an AWS call failed, what amazon.aws returns beside C(msg) - C(kind) (V(no_credentials),
      V(bad_credentials), V(access_denied), V(throttling), V(unreachable), V(untrusted_certificate), V(not_found), V(region_mismatch) or
      V(other)), the service's C(code) (null when it gave none) and C(message) (or the SDK's whole error chain,
      which C(msg) leaves out), and the C(operation) that failed, when a call did.
  returned: when an SQS call, or a KMS or ACM PCA call that finds, creates or describes the signer, failed, or a queue URL names another region
  type: dict
  sample: {"kind": "access_denied", "code": "AccessDenied", "operation": "ReceiveMessage",
           "message": "AccessDenied: User: arn:aws:iam::123456789012:user/node is not authorized to perform: sqs:ReceiveMessage"}
status:
  description:
    - V(installed) when a new certificate was installed, V(pending) when the request is not answered yet
      (O(wait=false)), or its certificate is kept until it is valid (the node's clock is behind), V(unchanged) when
      the current certificate stays, V(no_request) when no request is pending (or it was just ended because its
      reply queue no longer exists), V(refused) when the CA refused the request (the task fails).
    - A refusal from the CA ends the request and fails the task naming the reason code; the next
      M(fleetpki.mtls.mtls_csr_submit) sends a new request at once. A certificate this node refuses is set aside
      (named in C(msg) and the warnings) and never ends the request.
  returned: always
  type: str
  sample: installed
privatekey_path:
  description:
    - Path of the private key, through the C(current) symlink.
  returned: success
  type: str
  sample: /etc/fleetpki/tls/current/privkey.pem
certificate_path:
  description:
    - Path of the certificate, through the C(current) symlink.
  returned: success
  type: str
  sample: /etc/fleetpki/tls/current/cert.pem
chain_path:
  description:
    - Path of the CA chain, through the C(current) symlink.
  returned: success
  type: str
  sample: /etc/fleetpki/tls/current/chain.pem
fullchain_path:
  description:
    - Path of the certificate followed by the CA chain, through the C(current) symlink.
  returned: success
  type: str
  sample: /etc/fleetpki/tls/current/fullchain.pem
serial:
  description:
    - Serial number of the installed certificate, hexadecimal.
  returned: when a new certificate was installed
  type: str
  sample: 4f1c2a9e0b7d3c51
not_after:
  description:
    - Expiry time of the installed certificate.
  returned: when a new certificate was installed
  type: str
  sample: "2026-12-27T22:30:00Z"
request_id:
  description:
    - Id of the request the certificate answers.
  returned: when a request was pending
  type: str
  sample: 5d1c7f0e-8b0e-4f3a-9a57-4d3f2b8c9e10
sqs_calls:
  description:
    - Number of SQS API calls made, by operation.
  returned: always
  type: dict
  sample: {"GetQueueUrl": 1, "ReceiveMessage": 1, "DeleteMessage": 1}
"""
