#!/usr/bin/python
# Copyright: fleetpki contributors
# Apache License 2.0 (see LICENSES/Apache-2.0.txt or https://www.apache.org/licenses/LICENSE-2.0)
# SPDX-License-Identifier: Apache-2.0

# Documentation only. The module itself is the Rust binary "mtls_ca_revoke" next to this
# file (a symlink to bin/mtls_ca_revoke); Ansible runs the extension-less binary.

# Python 2 boilerplate that ansible-test 2.16 still asks of every module file.
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: mtls_ca_revoke
short_description: Revoke fleetpki certificates and keep the CRL current
version_added: 0.1.0
author:
  - fleetpki contributors (!UNKNOWN)
description:
  - Revokes certificates by serial number or by instance id, records them in a revocation state
    file, and issues a CRL signed by the intermediate CA.
  - Re-issues the CRL when the revocation list changed, when it is missing, or when its nextUpdate is
    closer than O(crl_renew_before). Run it on a schedule shorter than O(crl_renew_before) so the CRL
    never expires and breaks handshakes.
  - Revoking by instance id reads the issuance records from the CA workers' audit logs
    (R(fleetpki.mtls.mtls_ca_sign,ansible_collections.fleetpki.mtls.mtls_ca_sign_module) option
    O(fleetpki.mtls.mtls_ca_sign#module:audit_log_path)); with several worker hosts, gather their logs
    (for example with M(ansible.builtin.fetch)) and list them all in O(issuance_log_paths).
  - With O(signer=aws_kms) the CRL is signed through AWS KMS (C(Sign)) with the intermediate's KMS key
    O(kms_key_id), as M(fleetpki.mtls.mtls_ca_sign) signs the certificates; otherwise the module makes no
    network calls. In check mode nothing is written and nothing is signed.
  - The AWS connection options are used only with O(signer=aws_kms); a KMS endpoint of its own comes from
    E(AWS_ENDPOINT_URL_KMS).
  - An intermediate that is an AWS Private CA (M(fleetpki.mtls.mtls_ca_sign) with C(signer=aws_pca)) is not
    supported here, since AWS Private CA publishes its own CRL. Revoke with C(aws acm-pca revoke-certificate).
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - fleetpki.mtls.aws
  - fleetpki.mtls.binary
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - Before and after, the CRL's number and the serials it revokes.
  platform:
    platforms: posix
options:
  ownca_path:
    description:
      - Path of the intermediate CA certificate (PEM) that signs the CRL.
    type: path
    required: true
  ownca_privatekey_path:
    description:
      - Path of the intermediate CA private key (PKCS#8, PKCS#1 or SEC1 PEM).
      - Required when O(signer=file); refused with O(signer=aws_kms).
    type: path
  signer:
    description:
      - Where the intermediate CA's key that signs the CRL lives.
      - V(file), the key file O(ownca_privatekey_path).
      - V(aws_kms), the asymmetric AWS KMS key O(kms_key_id); the CRL is signed with KMS C(Sign).
      - AWS Private CA (V(aws_pca) elsewhere) publishes its own CRL and is not a choice here.
    type: str
    choices: [file, aws_kms]
    default: file
  kms_key_id:
    description:
      - The AWS KMS key of the intermediate CA, as a key id, key ARN, alias name (V(alias/...)) or alias ARN.
      - Required when O(signer=aws_kms); its public key must be the one of O(ownca_path).
      - The module needs C(kms:Sign) and C(kms:GetPublicKey) on the key.
    type: str
  ca_chain_path:
    description:
      - Path of the CA chain (intermediate then root).
    type: path
    required: true
  crl_path:
    description:
      - Where the CRL (PEM) is written. Distribute this file to the nodes.
    type: path
    required: true
  root_crl_path:
    description:
      - The root's CRL (PEM), as M(fleetpki.mtls.mtls_ca_init) O(fleetpki.mtls.mtls_ca_init#module:root_crl_path) signs it
        where the root key lives (the C(fleetpki.mtls.ca_setup) role copies it to the CA host).
      - When set, O(crl_path) holds the intermediate's CRL followed by the root's, the file nodes and TLS servers read.
        nginx C(ssl_crl), HAProxy C(crl-file) and C(openssl verify -crl_check_all) want a CRL for every CA of the chain and
        refuse every client without one. The file is rebuilt (and the intermediate's CRL re-signed) when the root's CRL
        changes. Without it a warning says so.
      - A root CRL that expired, or expires within O(crl_renew_before), is warned about.
    type: path
  revocations_path:
    description:
      - The revocation state file (JSON) with every revoked serial, its reason and time, and the CRL number.
    type: path
    required: true
  issuance_log_paths:
    description:
      - The CA workers' issuance records (their O(fleetpki.mtls.mtls_ca_sign#module:audit_log_path) files), read to
        find the certificates of O(instance_ids) - every line with a serial, so a certificate signed but never
        delivered is revoked too.
      - Each record's hash chain is verified; a line removed or altered is reported in the warnings and in
        RV(issuance_record_problems), and revocation goes on with what the records list.
    type: list
    elements: str
    default: []
  serials:
    description:
      - Serial numbers to revoke, in hexadecimal (V(0a1b...), V(0A:1B:...) or V(0x0a1b...)).
    type: list
    elements: str
    default: []
  instance_ids:
    description:
      - Revoke every unexpired certificate issued to these instance ids.
    type: list
    elements: str
    default: []
  reason:
    description:
      - The revocation reason recorded in the CRL.
    type: str
    choices: [unspecified, key_compromise, affiliation_changed, superseded, cessation_of_operation]
    default: unspecified
  crl_lifetime_days:
    description:
      - How long an issued CRL is valid (its nextUpdate).
    type: int
    default: 7
  crl_renew_before:
    description:
      - Re-issue the CRL when its nextUpdate is closer than this duration (V(2d), V(12h)).
      - Must be shorter than O(crl_lifetime_days).
    type: str
    default: "2d"
"""

EXAMPLES = r"""
- name: Revoke the certificates of a decommissioned node and refresh the CRL
  fleetpki.mtls.mtls_ca_revoke:
    ownca_path: /etc/fleetpki/ca/intermediate.cert.pem
    ownca_privatekey_path: /etc/fleetpki/ca/intermediate.key.pem
    ca_chain_path: /etc/fleetpki/ca/chain.pem
    crl_path: /etc/fleetpki/ca/crl.pem
    revocations_path: /etc/fleetpki/ca/revocations.json
    issuance_log_paths:
      - /etc/fleetpki/ca/audit.jsonl
    instance_ids:
      - i-0123456789abcdef0
    reason: key_compromise

- name: Keep the CRL fresh (run from a timer or every play)
  fleetpki.mtls.mtls_ca_revoke:
    ownca_path: /etc/fleetpki/ca/intermediate.cert.pem
    ownca_privatekey_path: /etc/fleetpki/ca/intermediate.key.pem
    ca_chain_path: /etc/fleetpki/ca/chain.pem
    crl_path: /etc/fleetpki/ca/crl.pem
    revocations_path: /etc/fleetpki/ca/revocations.json

# With the intermediate's key in AWS KMS, replace ownca_privatekey_path by
#   signer: aws_kms
#   kms_key_id: alias/fleetpki-intermediate
"""

RETURN = r"""
error:
  description:
    - When an AWS call failed, what amazon.aws returns beside C(msg) - C(kind) (V(no_credentials),
      V(bad_credentials), V(access_denied), V(throttling), V(unreachable), V(untrusted_certificate), V(not_found), V(region_mismatch) or
      V(other)), the service's C(code) (null when it gave none) and C(message) (or the SDK's whole error chain,
      which C(msg) leaves out), and the C(operation) that failed, when a call did.
  returned: when a KMS or ACM PCA call that finds, creates or describes the signer failed (a failed C(Sign) says so in C(msg) only)
  type: dict
  sample: {"kind": "other", "code": "DisabledException", "operation": "GetPublicKey",
           "message": "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab is disabled"}
revoked:
  description:
    - Serial numbers revoked by this task (not those revoked before).
  returned: always
  type: list
  elements: str
  sample: ["47ebb3f2882e350fc53ca950cc6e6838"]
revoked_count:
  description:
    - Number of serials on the revocation list.
  returned: always
  type: int
  sample: 1
issuance_record_problems:
  description:
    - What is wrong with the hash chain of the O(issuance_log_paths) records, one sentence each, naming the file and
      the line; empty when every record is whole (or when O(instance_ids) is empty, as no record is read then).
  returned: always
  type: list
  elements: str
  sample: ["/etc/fleetpki/ca/audit.jsonl: line 7 does not follow line 6: a line between them was removed, or line 6 was altered"]
crl_next_update:
  description:
    - The nextUpdate of the current CRL (RFC 3339).
  returned: when a CRL exists or was issued
  type: str
  sample: "2026-12-04T23:19:31Z"
crl_number:
  description:
    - The CRL number of the CRL just issued.
  returned: when a CRL was issued
  type: int
  sample: 3
"""
