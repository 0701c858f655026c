#!/usr/bin/python
# Copyright: fleetpki contributors
# Apache License 2.0 (see LICENSES/Apache-2.0.txt or https://www.apache.org/licenses/LICENSE-2.0)
# SPDX-License-Identifier: Apache-2.0

# Documentation only. The module itself is the Rust binary "mtls_ca_sign" next to this
# file (a symlink to bin/mtls_ca_sign); Ansible runs the extension-less binary.

# Python 2 boilerplate that ansible-test 2.16 still asks of every module file.
from __future__ import absolute_import, division, print_function

__metaclass__ = type

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
  - The signer (O(signer)) decides where the intermediate CA's key lives. V(file) signs with a key file
    (O(ownca_privatekey_path)). V(aws_kms) signs every certificate with AWS KMS C(Sign) on an asymmetric KMS key
    (O(kms_key_id)), so no private key exists on the CA host. V(aws_pca) has AWS Private CA
    (O(certificate_authority_arn)) issue the certificate from the CSR after the policy accepted it; the serial is
    the one Private CA chose. Private CA copies the CSR's subject, so with V(aws_pca) the subject must be exactly
    C(CN=<instance id>); a CSR with more (an C(O=admins) beside the CN) is refused with reason code
    C(subject_mismatch) before Private CA is called. The policy checks, reason codes, audit log and answers
    are the same with every signer.
  - "Before it takes any request, the module checks the signer: with V(aws_kms) C(GetPublicKey) (the key exists,
    is enabled, signs and is the key of O(ownca_path)) and one probe C(Sign); with V(aws_pca)
    C(DescribeCertificateAuthority) (the CA is ACTIVE). If that fails the task fails with
    C(the signer is unavailable: <error>; no request was taken from the queue: ...) and nothing is received."
  - "When the signer becomes unavailable in mid-drain (KMS key disabled or deleted, access denied, throttling that
    outlasts the retries, a Private CA no longer ACTIVE, a connection error), the requests it could not sign are
    neither deleted nor dead-lettered: they are made visible again at once, the drain stops, and the task fails
    with C(the signer is unavailable: <code>: <message>; N request(s) stay queued for the next run). The result
    still holds what was done (RV(issued), RV(serials), RV(retries), ...). The next run signs them once the signer
    works. Each run that received such a request raised its receive count once, so after the queue's
    C(maxReceiveCount) (5) failing runs its redrive policy moves the request to the dead-letter queue."
  - "Errors that only one request reveals are not retried: a KMS message too large, Private CA's
    C(MalformedCSRException) or C(InvalidArgsException), a certificate from Private CA that the module's checks
    refuse. The request is answered to the node as a rejection with reason code C(signer_refused)."
  - In check mode no message is received, sent or deleted and nothing is signed; the result reports the queue
    depth instead.
options:
  csr_queue_url:
    description:
      - URL of the SQS queue the nodes send their CSRs to.
    type: str
    required: true
  signer:
    description:
      - Where the key that signs the node certificates lives.
      - V(file), the intermediate CA's private key in O(ownca_privatekey_path).
      - V(aws_kms), the intermediate CA's private key is the asymmetric AWS KMS key O(kms_key_id) (created by
        M(fleetpki.mtls.mtls_ca_init)); every certificate is signed with KMS C(Sign) and the key never leaves KMS.
      - V(aws_pca), AWS Private CA O(certificate_authority_arn) issues each certificate (C(IssueCertificate), then
        C(GetCertificate) once it is issued) with the template O(pca_template_arn).
    type: str
    choices: [file, aws_kms, aws_pca]
    default: file
  ownca_path:
    description:
      - Path of the intermediate CA certificate (PEM) that signs the node certificates.
      - With O(signer=aws_pca), the Private CA's certificate (written by M(fleetpki.mtls.mtls_ca_init)).
    type: path
    required: true
  ownca_privatekey_path:
    description:
      - Path of the intermediate CA private key, PKCS#8, PKCS#1 or SEC1 PEM.
      - Required when O(signer=file); refused with the other signers.
    type: path
  kms_key_id:
    description:
      - The AWS KMS key of the intermediate CA, as a key id, key ARN, alias name (V(alias/...)) or alias ARN.
      - Required when O(signer=aws_kms); its public key must be the one of O(ownca_path).
    type: str
  certificate_authority_arn:
    description:
      - ARN of the AWS Private CA (a subordinate CA, ACTIVE) that issues the certificates.
      - Required when O(signer=aws_pca).
    type: str
    aliases: [pca_arn]
  pca_template_arn:
    description:
      - With O(signer=aws_pca), the ARN of the Private CA certificate template used for every certificate.
      - When not set, the template follows the request's profile,
        V(arn:aws:acm-pca:::template/EndEntityCertificate/V1) for V(mtls) (client and server),
        V(arn:aws:acm-pca:::template/EndEntityClientAuthCertificate/V1) for V(client) and
        V(arn:aws:acm-pca:::template/EndEntityServerAuthCertificate/V1) for V(server).
    type: str
  ca_chain_path:
    description:
      - Path of the CA chain (PEM, intermediate then root) published to the nodes with each certificate.
    type: path
    required: true
  policy_path:
    description:
      - Path of the signing policy, a JSON object with the keys below. Only C(identity_proof) is required; a key
        that is not listed here is refused, at the top and in an C(instances) entry. The P(fleetpki.mtls.ca_worker#role)
        role writes the file from the inventory; C(docs/interfaces.md) of the collection, "Signing policy", has an
        example.
      - Mutually exclusive with O(policy); one of them is required.
      - C(identity_proof) (string, required) - how a request proves that it comes from the instance it names.
        V(sqs_sender_id) (on AWS), SQS's C(SenderId) of the message must be C(<role id>:<instance id>), the session an
        EC2 instance profile sends with, for a role id in C(sender_role_ids). V(enrollment_secret), the request must
        carry an HMAC keyed with the instance's secret from C(enrollment_secrets). V(none), no proof - anyone who can
        send to the CSR queue can get a certificate for any allowed instance, and every result warns so.
      - C(sender_role_ids) (list of strings, default V([])) - the unique ids (C(AROA...)) of the roles the nodes
        send with; required, not empty, with C(identity_proof=sqs_sender_id).
      - C(enrollment_secrets) (object, default V({})) - instance id to that instance's enrollment secret (a string);
        required, not empty, with C(identity_proof=enrollment_secret). Keep the file private (the role writes it 0600).
      - C(enrollment_hmac_versions) (list of V(1) and V(2), default V([1, 2])) - the forms of the enrollment HMAC
        accepted. V(2) covers every field of the request; V(1), the first release's, leaves C(lifetime_days),
        C(reply_mode) and C(version) out, and each request with it adds a warning. C(docs/interfaces.md),
        "Enrollment HMAC", has the algorithm.
      - C(max_request_age_seconds) (integer, default V(86400)) - a request whose C(timestamp) is older, or more than
        300 s in the future, is refused (C(request_expired)).
      - C(max_lifetime_days) (integer, default V(30)) - the longest certificate lifetime a request may ask for
        (C(lifetime_not_allowed) beyond it).
      - C(default_lifetime_days) (integer, default V(30)) - the lifetime of a certificate whose request names none;
        1 to C(max_lifetime_days).
      - C(profiles) (list, default V([mtls, server, client])) - the certificate profiles a request may ask for,
        V(mtls) (serverAuth and clientAuth), V(server) and V(client) (C(profile_not_allowed) otherwise).
      - C(reply_modes) (list, default V([per_node, shared])) - where a node may ask to be answered, V(per_node) (its
        own reply queue) and V(shared) (the shared queue O(shared_cert_queue_url), which seed-format requests always
        use); not empty. Another mode, or V(shared) without O(shared_cert_queue_url), is refused before anything
        is signed (C(reply_mode_not_allowed)).
      - C(rsa_min_bits) (integer, default V(2048)) - the smallest RSA key signed, at least 2048 (C(key_too_small)).
      - C(ec_curves) (list, default V([secp256r1, secp384r1])) - the ECDSA curves signed, among V(secp256r1) (P-256)
        and V(secp384r1) (P-384) (C(key_type_not_allowed) otherwise).
      - C(instances) (list of objects, default V([])) - the instances that may get a certificate, each with the names
        it may have, the keys C(instances[].*) below. The first entry that matches a request's instance id decides;
        an instance that no entry matches is refused (C(instance_not_allowed)), and so is a name that its entry
        does not allow (C(san_not_allowed)). Only DNS and IP names are signed.
      - C(instances[].instance_id) (string) - an exact instance id. An entry has exactly one of C(instance_id) and
        C(instance_id_pattern).
      - C(instances[].instance_id_pattern) (string) - a glob pattern of instance ids, such as V(i-*).
      - C(instances[].dns_names) (list of strings) - DNS names allowed as they are, compared without regard to case.
        A wildcard name (V(*.example.com)) is allowed only when it is listed here.
      - C(instances[].dns_suffixes) (list of strings) - each starting with V(.); a DNS name that ends with one of
        them is allowed (V(.fleet.internal) allows V(web1.fleet.internal)), wildcard names excepted.
      - C(instances[].ip_addresses) (list of strings) - IPv4 or IPv6 addresses allowed as they are.
      - C(instances[].ip_networks) (list of strings) - networks in CIDR notation (V(10.0.0.0/8)); any IP address
        inside one of them is allowed.
    type: path
  policy:
    description:
      - The signing policy inline, with the same keys as the O(policy_path) file (listed there).
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
  concurrency:
    description:
      - Batches in flight at once, 1 to 64. A batch is one receive of up to O(batch_size) requests, their checks and
        signatures, answers and record lines, and one delete; each request's own actions keep their order. Several
        batches in flight hide the queue's round trips, so the drain is bound by the CPU on a nearby queue, and by
        about O(concurrency) x O(batch_size) requests per three round trips on a distant one.
      - At most O(concurrency) x O(batch_size) requests are in hand at once; those of a worker that dies come back
        after O(visibility_timeout), and none is issued without its record line.
      - V(1) receives the next batch only once the last is deleted.
      - A drain starts with one batch in flight and doubles that with each full batch. It keeps no more receives in
        flight than the requests the CSR queue counted when the worker started need (its C(ApproximateNumberOfMessages),
        read in the same C(GetQueueAttributes) call as its dead-letter queue), so the end of a drain costs one empty
        receive, not O(concurrency) of them. An empty receive ends the drain; while requests of that count remain
        unreceived, only once one more receive, started alone, comes back empty too.
    type: int
    default: 16
  visibility_timeout:
    description:
      - Seconds a received message stays hidden from other workers while it is processed.
    type: int
    default: 60
  crl_path:
    description:
      - The CRL file the P(fleetpki.mtls.ca_worker#role) role keeps (the intermediate's CRL, then the root's), as
        written by M(fleetpki.mtls.mtls_ca_revoke). Read only for the metrics, C(fleetpki_ca_crl_next_update_timestamp_seconds).
    type: path
  root_crl_path:
    description:
      - The root's CRL file, when it is kept apart from O(crl_path). Read only for the metrics.
    type: path
  metrics_listen:
    description:
      - An address and port, such as V(127.0.0.1:9469), on which the long-running worker (C(mtls_ca_sign serve))
        serves its Prometheus metrics at C(/metrics), in the text exposition format. Off when not set.
      - An address other than a loopback one logs a warning - anyone who reaches it reads request counts and queue
        depths.
      - A one-shot run (this module) does not listen; it warns, and writes O(metrics_textfile) instead.
      - The series, their labels and the shipped alert rules are listed in C(docs/metrics.md) of the collection.
    type: str
  metrics_textfile:
    description:
      - A file the worker writes its metrics to, atomically and mode V(0644), in the text format of node_exporter's
        textfile collector (name it C(*.prom) in the collector's directory). A one-shot run writes it once, after the
        drain; C(mtls_ca_sign serve) rewrites it at each queue poll. Not written in check mode.
      - Writing it costs two C(GetQueueAttributes) calls per write (the depth of the CSR queue and of its
        dead-letter queue). A file that cannot be written is a warning, not a failure - the drain is done.
    type: path
  metrics_queue_poll_interval:
    description:
      - With O(metrics_listen) or O(metrics_textfile), the long-running worker asks the queues' depth at most once
        in this many seconds, 1 to 86400; each ask is one C(GetQueueAttributes) call per queue, counted in
        C(fleetpki_ca_sqs_calls_total).
    type: int
    default: 60
  audit_log_path:
    description:
      - The issuance record - the worker's audit log - one JSON line per decision, created with mode V(0600) if missing.
        Required - nothing is signed that is not recorded first.
      - A certificate's C(signed) line (serial, instance id, request id, notAfter, certificate hash) is written and
        made durable (fsync; one per batch) B(before) its answer is sent, and a line saying what became of it after
        (C(issued), C(dead_lettered), or C(retry) with C(reason_code) C(not_delivered)). So every certificate that can
        have reached a node is in the record, whatever the moment the worker was killed, and
        M(fleetpki.mtls.mtls_ca_revoke) revokes it by instance id. With V(aws_pca), a C(requested) line (request id,
        instance id, idempotency token) is recorded before C(IssueCertificate).
      - If a line cannot be written, nothing it describes is sent, the requests stay queued and the task fails.
      - Each line carries C(prev_sha256), the SHA-256 of the line before it (64 zeros for the first), so a line
        removed from or altered in the record breaks the chain; M(fleetpki.mtls.mtls_ca_revoke) reports it.
      - Each line names the signer (C(signer)) and C(signer_ref). On C(signed) and C(issued) lines C(signer_ref) is the
        KMS key ARN (V(aws_kms)) or the ARN of the certificate Private CA issued (V(aws_pca)). A request left for retry
        because the signer is unavailable is logged with decision C(retry), C(reason_code) C(signer_unavailable), the
        error as C(reason), and as C(signer_ref) the KMS key ARN or the Private CA's ARN.
      - Appends are locked, so a one-shot drain and the worker service may share one file; a symlink at the path is
        refused.
    type: path
    required: true
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
  - The signing policy's keys are listed under O(policy_path). What each reason code of a refusal means and what to
    do about it is in C(docs/reason-codes.md) of the collection.
  - The AWS connection options apply to every AWS service the module calls, SQS, KMS (O(signer=aws_kms)) and
    ACM PCA (O(signer=aws_pca)). Per-service endpoints come from E(AWS_ENDPOINT_URL_SQS), E(AWS_ENDPOINT_URL_KMS)
    and E(AWS_ENDPOINT_URL_ACM_PCA).
  - "IAM permissions besides SQS: V(aws_kms) needs C(kms:Sign) and C(kms:GetPublicKey) on the
    key; V(aws_pca) needs C(acm-pca:IssueCertificate), C(acm-pca:GetCertificate) and
    C(acm-pca:DescribeCertificateAuthority) on the CA."
  - KMS signs a message of up to 4096 bytes as it is (C(MessageType) C(RAW), every certificate) and a larger one
    as its SHA-256 or SHA-384 digest (C(DIGEST)).
  - KMS and Private CA calls are counted like the SQS calls (RV(kms_calls), RV(acmpca_calls)). KMS throttling is
    retried with backoff; KMS's request quota for ECC C(Sign) bounds the issuance rate of V(aws_kms), and Private
    CA's C(IssueCertificate) quota that of V(aws_pca) (C(docs/signers.md) of the collection, "Throughput and cost").
  - C(mtls_ca_sign serve CONFIG.json) takes the same arguments. After a signer failure it stops receiving and
    probes the signer with backoff (1 s doubling to 60 s), and resumes only once a probe succeeds, so an outage
    raises each queued request's receive count once at most.
seealso:
  - module: fleetpki.mtls.mtls_csr_submit
  - module: fleetpki.mtls.mtls_cert_fetch
  - module: fleetpki.mtls.mtls_ca_init
  - name: AWS KMS asymmetric keys
    description: Signing with an asymmetric KMS key (C(Sign), key specs and signing algorithms).
    link: https://docs.aws.amazon.com/kms/latest/developerguide/symmetric-asymmetric.html
  - name: AWS Private CA IssueCertificate
    description: The API that issues a certificate from a CSR with a template.
    link: https://docs.aws.amazon.com/privateca/latest/APIReference/API_IssueCertificate.html
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

# The same drain with the intermediate's key in AWS KMS (mtls_ca_init signer=aws_kms made it): no key file.
#   signer: aws_kms
#   kms_key_id: alias/fleetpki-intermediate      # instead of ownca_privatekey_path
# Or with AWS Private CA issuing (ownca_path is then the Private CA's certificate):
#   signer: aws_pca
#   certificate_authority_arn: arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/11111111-2222-3333-4444-555555555555

- name: Sign at most 50 requests with an inline policy
  fleetpki.mtls.mtls_ca_sign:
    csr_queue_url: https://sqs.eu-west-1.amazonaws.com/123456789012/fleetpki-csr
    ownca_path: /etc/fleetpki/ca/intermediate.cert.pem
    ownca_privatekey_path: /etc/fleetpki/ca/intermediate.key.pem
    ca_chain_path: /etc/fleetpki/ca/chain.pem
    audit_log_path: /etc/fleetpki/ca/audit.jsonl
    max_requests: 50
    policy:
      identity_proof: enrollment_secret
      enrollment_secrets:
        i-0fedcba9876543210: "{{ web_enrollment_secret }}"  # from Ansible Vault
      max_lifetime_days: 30
      instances:
        - instance_id_pattern: i-*
          dns_suffixes:
            - .fleet.internal
          ip_networks:
            - 10.0.0.0/8
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
issued:
  description:
    - Number of certificates issued.
  returned: always
  type: int
  sample: 5
rejected:
  description:
    - Number of requests rejected by the policy, or refused by the signer for that request alone (reason code
      C(signer_refused)); the node received a rejection with the reason.
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
    - Number of requests left in the queue for a later attempt (for example, an answer could not be published, or
      the signer is unavailable).
  returned: when not in check mode
  type: int
  sample: 0
retries:
  description:
    - The requests left in the queue for a later attempt, each with C(message_id), C(instance_id), C(request_id)
      and the C(reason).
  returned: when not in check mode
  type: list
  elements: dict
  sample: [{"message_id": "5fea7756-0ea4-451a-a703-a558b933e274", "instance_id": "i-0123456789abcdef0",
            "request_id": "0f5e6c1a-4f5b-4b9e-9a53-0d2f0c5e7d1b",
            "reason": "signer_unavailable: AccessDeniedException: KMS Sign with
              arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab: User ... is not authorized
              to perform: kms:Sign ... The IAM policy of this identity (or the key policy) does not allow this call"}]
signer:
  description:
    - The signer used, V(file), V(aws_kms) or V(aws_pca).
  returned: always
  type: str
  sample: aws_kms
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
kms_calls:
  description:
    - Number of AWS KMS API calls made, by operation, and their C(total). The sample is a drain that issued 5
      certificates, after the check of the key (C(GetPublicKey) and one probe C(Sign)).
  returned: when O(signer=aws_kms), in check mode too
  type: dict
  sample: {"GetPublicKey": 1, "Sign": 6, "total": 7}
acmpca_calls:
  description:
    - Number of AWS Private CA API calls made, by operation, and their C(total). The sample is a drain that issued
      5 certificates, after the check of the CA (C(DescribeCertificateAuthority)).
  returned: when O(signer=aws_pca), in check mode too
  type: dict
  sample: {"DescribeCertificateAuthority": 1, "IssueCertificate": 5, "GetCertificate": 5, "total": 11}
"""
