#!/usr/bin/python
# Copyright: fleetpki contributors
# Apache License 2.0 (see LICENSES/Apache-2.0.txt or https://www.apache.org/licenses/LICENSE-2.0)
# SPDX-License-Identifier: Apache-2.0

# Documentation only. The module itself is the Rust binary "mtls_ca_init" next to this
# file (a symlink to bin/mtls_ca_init); Ansible runs the extension-less binary.

# Python 2 boilerplate that ansible-test 2.16 still asks of every module file.
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: mtls_ca_init
short_description: Create a two-tier CA (root and intermediate) for fleetpki
version_added: 0.1.0
author:
  - fleetpki contributors (!UNKNOWN)
description:
  - Creates the root CA (key and self-signed certificate) and the intermediate CA that signs node
    certificates (key and certificate signed by the root), and writes the CA chain (intermediate then root).
  - Existing files are kept; only what is missing is created. An existing intermediate key (PKCS#8, PKCS#1
    or SEC1 PEM) is adopted and certified.
  - The root key is needed only to create the root or to sign a new intermediate, so it can live on an
    offline host; the intermediate certificate, key and chain are what the CA worker needs.
  - The root is always a key file (offline); O(signer) decides where the intermediate's key lives.
  - With O(signer=aws_kms) the intermediate's key is an asymmetric AWS KMS key (O(kms_key_id)). When O(kms_key_id)
    is an alias that does not exist, a key of O(kms_key_spec) with usage SIGN_VERIFY is created and the alias
    pointed at it; a key id or key ARN must exist. The intermediate's CSR is signed through KMS, verified, and
    certified by the root. Only the certificate and the chain are written, no private key file.
  - With O(signer=aws_pca) the intermediate is a subordinate AWS Private CA (O(certificate_authority_arn)). When it
    waits for its certificate (status PENDING_CERTIFICATE), its CSR is certified by the root and imported; when it
    is ACTIVE, its certificate is fetched and must chain to the root. The CA's certificate and the chain are
    written to O(intermediate_cert_path) and O(chain_path).
  - Makes no network calls with O(signer=file); the other signers call AWS KMS or AWS Private CA. In check mode
    nothing is written and nothing is created in AWS.
options:
  root_cert_path:
    description:
      - Path of the root CA certificate (PEM).
    type: path
    required: true
  root_privatekey_path:
    description:
      - Path of the root CA private key.
      - Needed only to create the root or to sign a new intermediate.
    type: path
  intermediate_cert_path:
    description:
      - Path of the intermediate CA certificate (PEM).
    type: path
    required: true
  intermediate_privatekey_path:
    description:
      - Path of the intermediate CA private key. An existing key (PKCS#8, PKCS#1 or SEC1 PEM) is adopted.
      - Required when O(signer=file); the other signers write no intermediate key.
    type: path
  signer:
    description:
      - Where the intermediate CA's key lives, as for M(fleetpki.mtls.mtls_ca_sign).
      - V(file), a key file, O(intermediate_privatekey_path).
      - V(aws_kms), an asymmetric AWS KMS key, O(kms_key_id), created when O(kms_key_id) is an alias that does not
        exist yet.
      - V(aws_pca), a subordinate AWS Private CA, O(certificate_authority_arn), certified by the root.
    type: str
    choices: [file, aws_kms, aws_pca]
    default: file
  kms_key_id:
    description:
      - The AWS KMS key of the intermediate CA, as a key id, key ARN, alias name (V(alias/...)) or alias ARN.
      - Required when O(signer=aws_kms). An alias that does not exist is created with a new key of O(kms_key_spec);
        a key id, key ARN or existing alias must name an existing key with usage SIGN_VERIFY, ECC (C(ECC_NIST_P256),
        C(ECC_NIST_P384)) or RSA.
    type: str
  kms_key_spec:
    description:
      - Key spec of a KMS key created for O(signer=aws_kms) (an existing key keeps its own).
    type: str
    choices: [ECC_NIST_P256, ECC_NIST_P384]
    default: ECC_NIST_P256
  certificate_authority_arn:
    description:
      - ARN of the subordinate AWS Private CA that becomes the intermediate.
      - Required when O(signer=aws_pca).
    type: str
    aliases: [pca_arn]
  chain_path:
    description:
      - Path of the CA chain (PEM), intermediate then root.
    type: path
    required: true
  root_common_name:
    description:
      - Common name of the root CA.
    type: str
    default: fleetpki Root CA
  intermediate_common_name:
    description:
      - Common name of the intermediate CA.
    type: str
    default: fleetpki Intermediate CA
  organization_name:
    description:
      - Organization name of both CA certificates.
    type: str
  type:
    description:
      - Type of the CA keys (with O(signer=aws_kms) or O(signer=aws_pca), of the root key only).
    type: str
    choices: [ECC, RSA]
    default: ECC
  curve:
    description:
      - Elliptic curve of the CA keys when O(type=ECC).
    type: str
    choices: [secp256r1, secp384r1]
    default: secp256r1
  size:
    description:
      - Size in bits of the CA keys when O(type=RSA).
    type: int
    choices: [2048, 3072, 4096]
    default: 3072
  root_lifetime_days:
    description:
      - Lifetime of a new root CA certificate in days.
    type: int
    default: 3650
  intermediate_lifetime_days:
    description:
      - Lifetime of a new intermediate CA certificate in days.
    type: int
    default: 1825
  root_crl_path:
    description:
      - Where the root's CRL is kept (PEM), signed with the root key. Issued when missing, and re-signed when its nextUpdate
        is closer than O(root_crl_renew_before) - so running this module (the C(fleetpki.mtls.ca_setup) role) on the root host
        before then is how the root's CRL is re-signed, without any rollover; O(root_privatekey_path) is read only then.
      - TLS servers that check the whole chain (nginx C(ssl_crl), HAProxy C(crl-file), C(openssl verify -crl_check_all))
        want a CRL from every CA of the chain and refuse every client without one, or with an expired one.
        M(fleetpki.mtls.mtls_ca_revoke) O(fleetpki.mtls.mtls_ca_revoke#module:root_crl_path) bundles it after the
        intermediate's CRL in the file nodes receive.
      - Its CRL number is the signing time in Unix seconds, so it grows without a state file.
    type: path
  root_crl_lifetime_days:
    description:
      - Lifetime (nextUpdate - thisUpdate) of the root's CRL, in days (1 to 3650).
    type: int
    default: 365
  root_crl_renew_before:
    description:
      - Re-sign the root's CRL when its nextUpdate is closer than this (V(60d), V(12h)); shorter than
        O(root_crl_lifetime_days).
    type: str
    default: 60d
  owner:
    description:
      - Owner of the files written.
    type: str
  group:
    description:
      - Group of the files written.
    type: str
  mode:
    description:
      - Permissions of the private key files written, as an octal string such as V('0600') or a number (with
        O(signer=aws_kms) or O(signer=aws_pca), the root key only).
    type: raw
    default: "0600"
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - fleetpki.mtls.aws
  - fleetpki.mtls.binary
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
notes:
  - The AWS connection options are used only with O(signer=aws_kms) or O(signer=aws_pca); per-service endpoints
    come from E(AWS_ENDPOINT_URL_KMS) and E(AWS_ENDPOINT_URL_ACM_PCA).
  - "IAM permissions: V(aws_kms) needs C(kms:CreateKey) and C(kms:CreateAlias) (only to create the key),
    C(kms:GetPublicKey) and C(kms:Sign); V(aws_pca) needs C(acm-pca:DescribeCertificateAuthority),
    C(acm-pca:GetCertificateAuthorityCsr), C(acm-pca:ImportCertificateAuthorityCertificate) and
    C(acm-pca:GetCertificateAuthorityCertificate)."
  - Run it where the root key is (the offline root host); with the AWS signers that host needs AWS credentials
    for this one task, the CA worker host never needs the root key.
seealso:
  - module: fleetpki.mtls.mtls_ca_sign
  - name: AWS KMS CreateKey
    description: Key specs and key usage of asymmetric KMS keys.
    link: https://docs.aws.amazon.com/kms/latest/APIReference/API_CreateKey.html
  - name: AWS Private CA, installing a subordinate CA certificate signed by an external parent CA
    description: The PENDING_CERTIFICATE to ACTIVE steps this module performs with the root.
    link: https://docs.aws.amazon.com/privateca/latest/userguide/PCACertInstall.html
"""

EXAMPLES = r"""
- name: Create the root and intermediate CA on the CA host
  fleetpki.mtls.mtls_ca_init:
    root_cert_path: /etc/fleetpki/ca/root.cert.pem
    root_privatekey_path: /etc/fleetpki/ca/root/root.key.pem
    intermediate_cert_path: /etc/fleetpki/ca/intermediate.cert.pem
    intermediate_privatekey_path: /etc/fleetpki/ca/intermediate.key.pem
    chain_path: /etc/fleetpki/ca/chain.pem
    organization_name: Example Corp
    mode: "0400"
  register: ca

- name: Create a P-384 CA with a short-lived intermediate
  fleetpki.mtls.mtls_ca_init:
    root_cert_path: /srv/offline-ca/root.cert.pem
    root_privatekey_path: /srv/offline-ca/root.key.pem
    intermediate_cert_path: /srv/offline-ca/issued/intermediate.cert.pem
    intermediate_privatekey_path: /srv/offline-ca/issued/intermediate.key.pem
    chain_path: /srv/offline-ca/issued/chain.pem
    root_common_name: Example Fleet Root CA
    intermediate_common_name: Example Fleet Intermediate CA
    curve: secp384r1
    intermediate_lifetime_days: 365

# The intermediate's key in AWS KMS instead of a file: leave out intermediate_privatekey_path and add
#   signer: aws_kms
#   kms_key_id: alias/fleetpki-intermediate    # created (ECC_NIST_P256) when the alias does not exist
#   region: eu-west-1
# Or certify a subordinate AWS Private CA with the root:
#   signer: aws_pca
#   certificate_authority_arn: arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/11111111-2222-3333-4444-555555555555
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
root_created:
  description:
    - Whether a new root CA was created (in check mode, whether one would be).
  returned: always
  type: bool
  sample: true
intermediate_created:
  description:
    - Whether a new intermediate CA certificate was created (in check mode, whether one would be).
  returned: always
  type: bool
  sample: true
intermediate_serial:
  description:
    - Serial number of the intermediate CA certificate, hexadecimal.
  returned: success
  type: str
  sample: 6a0f93c2d18e4b7f
intermediate_not_after:
  description:
    - Expiry time of the intermediate CA certificate.
  returned: success
  type: str
  sample: "2031-11-26T22:30:00Z"
root_crl_next_update:
  description:
    - The nextUpdate of the root's CRL at O(root_crl_path) (after this run); null without O(root_crl_path), or in check
      mode before it exists.
  returned: success
  type: str
  sample: "2027-12-03T20:00:00Z"
signer:
  description:
    - The signer of the intermediate, V(file), V(aws_kms) or V(aws_pca).
  returned: always
  type: str
  sample: aws_kms
kms_key_arn:
  description:
    - ARN of the KMS key that holds the intermediate's private key.
  returned: when O(signer=aws_kms)
  type: str
  sample: arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab
kms_key_created:
  description:
    - Whether a new KMS key (and its alias) was created (in check mode, whether one would be).
  returned: when O(signer=aws_kms)
  type: bool
  sample: true
certificate_authority_arn:
  description:
    - ARN of the AWS Private CA that is the intermediate.
  returned: when O(signer=aws_pca)
  type: str
  sample: arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/11111111-2222-3333-4444-555555555555
kms_calls:
  description:
    - Number of AWS KMS API calls made, by operation, and their C(total).
  returned: when O(signer=aws_kms)
  type: dict
  sample: {"CreateKey": 1, "CreateAlias": 1, "GetPublicKey": 2, "Sign": 1, "total": 5}
acmpca_calls:
  description:
    - Number of AWS Private CA API calls made, by operation, and their C(total).
  returned: when O(signer=aws_pca)
  type: dict
  sample: {"DescribeCertificateAuthority": 1, "GetCertificateAuthorityCsr": 1, "ImportCertificateAuthorityCertificate": 1,
           "total": 3}
"""
