#!/usr/bin/python
# Copyright: fleetpki contributors
# Apache License 2.0 (see LICENSES/Apache-2.0.txt or https://www.apache.org/licenses/LICENSE-2.0)
# SPDX-License-Identifier: Apache-2.0

# Documentation only. The module itself is the Rust binary "mtls_csr_submit" next to this
# file (a symlink to bin/mtls_csr_submit); Ansible runs the extension-less binary.

# Python 2 boilerplate that ansible-test 2.16 still asks of every module file.
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: mtls_csr_submit
short_description: Create a node key and submit its certificate signing request through AWS SQS
version_added: 0.1.0
author:
  - fleetpki contributors (!UNKNOWN)
description:
  - Ensures the node has a private key waiting for a certificate and publishes a certificate signing
    request (CSR) for it on the CSR queue, where the CA worker (M(fleetpki.mtls.mtls_ca_sign)) picks it up.
  - The CSR's subject common name is O(instance_id), which is also sent as the C(InstanceId) message
    attribute; O(subject_alt_name) become DNS and IP subject alternative names.
  - Does nothing while the installed certificate is valid and not due for renewal (see O(renew_before)),
    or while a request is already pending; O(force=true) submits a new request regardless.
  - The pending key is kept in C(<path>/pending/) until M(fleetpki.mtls.mtls_cert_fetch) installs the
    matching certificate under C(<path>/versions/) and switches the C(<path>/current) symlink.
  - In check mode nothing is written and no message is sent; the result says whether a request would
    be submitted.
options:
  instance_id:
    description:
      - Identity of the node, for example its EC2 instance id.
      - Used as the CSR's common name and as the C(InstanceId) message attribute; the CA policy must allow it.
    type: str
    required: true
  path:
    description:
      - Directory of the node's install layout (C(current), C(versions/), C(pending/)).
    type: path
    required: true
  csr_queue_url:
    description:
      - URL of the SQS queue the CA worker reads CSRs from.
    type: str
    required: true
  subject_alt_name:
    description:
      - Subject alternative names to request, each V(DNS:name) or V(IP:address).
    type: list
    elements: str
    default: []
  type:
    description:
      - Type of the private key.
    type: str
    choices: [ECC, RSA]
    default: ECC
  curve:
    description:
      - Elliptic curve of the key when O(type=ECC).
    type: str
    choices: [secp256r1, secp384r1]
    default: secp256r1
  size:
    description:
      - Size in bits of the key when O(type=RSA).
    type: int
    choices: [2048, 3072, 4096]
    default: 2048
  certificate_profile:
    description:
      - Certificate profile to request, which decides the extended key usages.
      - V(mtls) asks for both TLS server and client authentication, V(server) and V(client) for one of them.
      - Not to be confused with O(profile), the AWS profile.
    type: str
    choices: [mtls, server, client]
    default: mtls
  key_rotation:
    description:
      - V(rotate) creates a new key for every request.
      - V(reuse) requests the renewal for the key of the current certificate.
    type: str
    choices: [rotate, reuse]
    default: rotate
  renew_before:
    description:
      - When to request a new certificate before the current one expires.
      - A duration such as V(30d), V(12h), V(90m) or V(3600s), or a percentage of the certificate's
        lifetime such as V(33%).
      - Each host renews a little earlier than that, by a fixed share of the lifetime below 10%
        derived from its O(instance_id), so a fleet issued at once does not renew at once.
    type: str
    default: "33%"
  resubmit_after:
    description:
      - A pending request that has had no answer for this long is sent again, with a new request id.
      - A duration such as V(1h), V(30m) or V(600s).
    type: str
    default: "1h"
  force:
    description:
      - Submit a new request even when the current certificate is valid or a request is pending.
      - If the request cannot be sent (the queue unreachable), the next run sends it without O(force) (reason
        V(forced_retry)).
    type: bool
    default: false
  lifetime_days:
    description:
      - Requested certificate lifetime in days.
      - The CA policy caps it; when not set, the policy's default lifetime applies.
    type: int
  reply_mode:
    description:
      - Where the CA sends the answer.
      - V(per_node) uses a reply queue of this node's own, created when missing (O(reply_queue_prefix)
        followed by the sanitised instance id). M(fleetpki.mtls.mtls_cert_fetch) consumes every answer on
        that queue, so use one O(path) per O(instance_id).
      - V(shared) uses the CA's shared certificate queue (compatibility with the seed scripts).
    type: str
    choices: [per_node, shared]
    default: per_node
  reply_queue_prefix:
    description:
      - Name prefix of the per-node reply queues; must match the CA worker's setting.
    type: str
    default: fleetpki-reply-
  enrollment_secret:
    description:
      - Shared secret of this node, used to add an HMAC identity proof to the request when the CA policy
        uses V(enrollment_secret) identity proofs.
      - The proof is the v2 HMAC-SHA256 over every field of the request (C(v2:<hex>)); its canonical form, with a
        worked example, is in C(docs/interfaces.md), "Enrollment HMAC".
      - This value is secret (no_log), the module never returns or logs it.
    type: str
  owner:
    description:
      - Owner of the private key file waiting in C(<path>/pending/).
      - M(fleetpki.mtls.mtls_cert_fetch) sets the owner of the installed files from its own
        O(fleetpki.mtls.mtls_cert_fetch#module:owner), so give both modules the same value.
    type: str
  group:
    description:
      - Group of the private key file waiting in C(<path>/pending/).
      - M(fleetpki.mtls.mtls_cert_fetch) sets the group of the installed files from its own
        O(fleetpki.mtls.mtls_cert_fetch#module:group), so give both modules the same value.
    type: str
  mode:
    description:
      - Permissions of the private key file, as an octal string such as V('0600') or a number.
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
      - Before, the pending request (its id, names and profile) or else the installed certificate; after, the request sent (names, profile, private key).
  platform:
    platforms: posix
seealso:
  - module: fleetpki.mtls.mtls_cert_fetch
  - module: fleetpki.mtls.mtls_ca_sign
"""

EXAMPLES = r"""
- name: Request a certificate for this node
  fleetpki.mtls.mtls_csr_submit:
    instance_id: i-0123456789abcdef0
    path: /etc/fleetpki/tls
    csr_queue_url: https://sqs.eu-west-1.amazonaws.com/123456789012/fleetpki-csr
    subject_alt_name:
      - DNS:node1.fleet.internal
      - IP:10.0.0.11
    region: eu-west-1
  register: submit

- name: Request an RSA server certificate for a web node, reusing the current key, 14 days before expiry
  fleetpki.mtls.mtls_csr_submit:
    instance_id: i-0fedcba9876543210
    path: /etc/fleetpki/web-tls
    csr_queue_url: https://sqs.eu-west-1.amazonaws.com/123456789012/fleetpki-csr
    subject_alt_name:
      - DNS:web.fleet.internal
    type: RSA
    size: 3072
    certificate_profile: server
    key_rotation: reuse
    renew_before: 14d
    owner: www-data
    group: www-data
    mode: "0600"
    # Proves to the CA that the request is this node's (identity_proof enrollment_secret).
    enrollment_secret: "{{ web_enrollment_secret }}"  # from Ansible Vault
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
  sample: {"kind": "access_denied", "code": "AccessDenied", "operation": "SendMessage",
           "message": "AccessDenied: User: arn:aws:iam::123456789012:user/node is not authorized to perform: sqs:SendMessage"}
submitted:
  description:
    - Whether a request was sent (in check mode, whether one would be sent).
  returned: always
  type: bool
  sample: true
reason:
  description:
    - Why a request was or was not submitted.
    - V(no_certificate), V(certificate_unreadable), V(key_changed), V(names_changed), V(profile_changed), V(expired),
      V(inside_renewal_window), V(request_unanswered), V(forced), V(forced_retry) (a rotation forced by an earlier run
      that never reached the CA) or V(reply_queue_missing) (the pending request's reply queue no longer exists, so no
      answer can come; looked up whenever a request is pending, outside check mode - if SQS cannot be reached the
      request stays pending, with a warning) submit a request; V(request_pending) and V(valid) do not.
  returned: always
  type: str
  sample: no_certificate
request_id:
  description:
    - Id of the submitted or pending request.
  returned: when a request was submitted or is pending
  type: str
  sample: 5d1c7f0e-8b0e-4f3a-9a57-4d3f2b8c9e10
message_id:
  description:
    - SQS message id of the CSR message.
  returned: when a request was submitted
  type: str
  sample: 3b7c1a2d-1f7e-4a55-8e0c-6f1a0c2b9d44
reply_queue_url:
  description:
    - URL of the queue the answer will arrive on.
  returned: when a request was submitted (null in shared reply mode)
  type: str
  sample: https://sqs.eu-west-1.amazonaws.com/123456789012/fleetpki-reply-i-0123456789abcdef0
privatekey_path:
  description:
    - Path of the private key the request is for.
  returned: when a request was (or in check mode would be) submitted
  type: str
  sample: /etc/fleetpki/tls/pending/privkey.pem
csr:
  description:
    - The certificate signing request, PEM encoded.
  returned: when a request was submitted
  type: str
  sample: "-----BEGIN CERTIFICATE REQUEST-----\nMIIB...\n-----END CERTIFICATE REQUEST-----\n"
not_after:
  description:
    - Expiry time of the currently installed certificate.
  returned: when a certificate is installed
  type: str
  sample: "2026-12-27T22:30:00Z"
seconds_left:
  description:
    - Seconds until the currently installed certificate expires.
  returned: when a certificate is installed
  type: int
  sample: 2591000
sqs_calls:
  description:
    - Number of SQS API calls made, by operation.
  returned: always
  type: dict
  sample: {"GetQueueUrl": 1, "CreateQueue": 1, "SendMessage": 1}
"""
