#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetpki contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

# Documentation only. The module itself is the Rust binary "mtls_ca_init" next to this
# file (built from modules/ in the source tree); Ansible runs the extension-less binary.

from __future__ import annotations

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
  - Makes no network calls. In check mode nothing is written.
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
    type: path
    required: true
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
      - Type of the CA keys.
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
      - Permissions of the private key files written, as an octal string such as V('0600') or a number.
    type: raw
    default: "0600"
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
notes:
  - The module is a static Linux x86_64 binary; the host needs no Python.
seealso:
  - module: fleetpki.mtls.mtls_ca_sign
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
"""

RETURN = r"""
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
"""
