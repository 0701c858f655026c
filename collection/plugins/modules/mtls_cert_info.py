#!/usr/bin/python
# Copyright: fleetpki contributors
# Apache License 2.0 (see LICENSES/Apache-2.0.txt or https://www.apache.org/licenses/LICENSE-2.0)
# SPDX-License-Identifier: Apache-2.0

# Documentation only. The module itself is the Rust binary "mtls_cert_info" next to this
# file (a symlink to bin/mtls_cert_info); Ansible runs the extension-less binary.

# Python 2 boilerplate that ansible-test 2.16 still asks of every module file.
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: mtls_cert_info
short_description: Report a node's certificate, renewal time, pending request and last refusal
version_added: 0.1.0
author:
  - fleetpki contributors (!UNKNOWN)
description:
  - Reads the install layout of a node (the O(path) that M(fleetpki.mtls.mtls_csr_submit) and
    M(fleetpki.mtls.mtls_cert_fetch) keep) and returns what it holds - the installed certificate with its serial,
    names, validity, days left, renewal time and key type; the request waiting for its certificate and its age; the
    last fetch's result and the CA's last refusal of this node.
  - Changes nothing, talks to no queue, and runs the same in check mode, like community.crypto's
    C(x509_certificate_info). The C(fleetpki.mtls.report) playbook gathers it across the inventory into one HTML page.
  - The renewal time is known once M(fleetpki.mtls.mtls_csr_submit) has run on the node. It records the
    C(renew_before) of each request it sends in the layout; a changed C(renew_before) shows here from the node's
    next request on.
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - fleetpki.mtls.binary
options:
  path:
    description:
      - The node's install directory (the O(fleetpki.mtls.mtls_cert_fetch#module:path) of the node modules).
    type: path
    required: true
  instance_id:
    description:
      - The node's instance id, which fixes its renewal jitter. When not set, the installed certificate's common
        name, else the pending request's instance id.
    type: str
seealso:
  - module: fleetpki.mtls.mtls_cert_fetch
  - module: fleetpki.mtls.mtls_csr_submit
"""

EXAMPLES = r"""
- name: Read this node's certificate status
  fleetpki.mtls.mtls_cert_info:
    path: /etc/fleetpki/tls
  register: node_cert

- name: Say when it expires and whether it is overdue for renewal
  ansible.builtin.debug:
    msg: >-
      {{ node_cert.certificate.serial_number }} expires in {{ node_cert.certificate.days_left }} days
      (renewal due {{ node_cert.certificate.renewal_due }}, overdue {{ node_cert.certificate.renewal_overdue }})
  when: node_cert.certificate is not none
"""

RETURN = r"""
path:
  description: The install directory read.
  returned: success
  type: str
  sample: /etc/fleetpki/tls
instance_id:
  description: The instance id the renewal time was computed for (null when neither given nor found).
  returned: success
  type: str
  sample: i-0123456789abcdef0
certificate:
  description:
    - The installed certificate (C(current/cert.pem)), or null when none is installed or it cannot be read.
  returned: success
  type: dict
  contains:
    serial_number:
      description: The serial number, hexadecimal.
      type: str
      sample: 5d0c9e41f0a2b7c3
    common_name:
      description: The subject's common name (the instance id).
      type: str
      sample: i-0123456789abcdef0
    subject_alt_name:
      description: The names, as C(DNS:...) and C(IP:...).
      type: list
      elements: str
      sample: ["DNS:web1.fleet.internal", "IP:10.0.1.5"]
    not_before:
      description: Start of validity (RFC 3339, UTC).
      type: str
      sample: "2026-12-01T10:00:00Z"
    not_after:
      description: End of validity (RFC 3339, UTC).
      type: str
      sample: "2026-12-31T10:00:00Z"
    expired:
      description: Whether it is past its end of validity.
      type: bool
      sample: false
    seconds_left:
      description: Seconds until it expires (0 once expired).
      type: int
      sample: 2592000
    days_left:
      description: Whole days until it expires (0 once expired).
      type: int
      sample: 30
    renewal_due:
      description:
        - When the node renews it (its C(renew_before) and the host's jitter), RFC 3339; null until
          M(fleetpki.mtls.mtls_csr_submit) has run on the node.
      type: str
      sample: "2026-12-21T04:12:09Z"
    renewal_overdue:
      description: Whether the renewal time has passed.
      type: bool
      sample: false
    public_key_type:
      description: The key type, such as V(ECDSA secp256r1) or V(RSA-2048).
      type: str
      sample: ECDSA secp256r1
    public_key_fingerprint_sha256:
      description: SHA-256 of the public key (SubjectPublicKeyInfo), colon-separated hex.
      type: str
      sample: "3b:7f:...:a0"
    fingerprint_sha256:
      description: SHA-256 of the certificate (DER), hex.
      type: str
      sample: "9c1e...44"
pending_request:
  description: The request waiting for its certificate, or null.
  returned: success
  type: dict
  contains:
    request_id:
      description: The request's id.
      type: str
      sample: 0b6e4d5c-7a1f-4c1e-9a53-2f0d4c8e9b11
    subject_alt_name:
      description: The names asked for.
      type: list
      elements: str
      sample: ["DNS:web1.fleet.internal"]
    certificate_profile:
      description: The profile asked for.
      type: str
      sample: mtls
    submitted_at:
      description: When it was sent (RFC 3339).
      type: str
      sample: "2026-12-05T09:00:00Z"
    age_seconds:
      description: Seconds since it was sent.
      type: int
      sample: 120
last_result:
  description:
    - The status of the last fetch that had a request to fetch - V(installed), V(pending), V(refused), V(failed), or
      V(no_request) when a lost reply queue ended the request - or null when there was none. A fetch with nothing
      to do leaves it as it was.
  returned: success
  type: str
  sample: installed
last_result_at:
  description: Since when the last result holds (RFC 3339), or null - the layout records a result when it changes.
  returned: success
  type: str
  sample: "2026-12-05T09:01:00Z"
last_refusal:
  description:
    - The CA's last refusal of a request of this node, kept after the request ended, or null. Whether it is still
      the node's state shows in RV(last_result).
  returned: success
  type: dict
  contains:
    request_id:
      description: The refused request.
      type: str
      sample: 0b6e4d5c-7a1f-4c1e-9a53-2f0d4c8e9b11
    reason_code:
      description: The reason code (C(docs/reason-codes.md) of the collection).
      type: str
      sample: san_not_allowed
    message:
      description: The refusal in words.
      type: str
      sample: "the CA refused request 0b6e...: san_not_allowed (DNS:evil.example.com is not allowed for this instance)"
    at:
      description: When the node received it (RFC 3339).
      type: str
      sample: "2026-12-05T09:01:00Z"
"""
