#!/usr/bin/env python3
"""moto's server (`moto_server -H HOST -p PORT ...`, same arguments) with four fidelity patches
and one way to make it throttle.

scripts/sqs-server starts this with .venv/bin/python instead of .venv/bin/moto_server. Its name
must keep containing "moto_server": sqs-server's is_our_server() looks for it in the command line.

1. KMS key state. moto 5.2.5's KMS `Sign`, `Verify` and `GetPublicKey` ignore the key's state: a
   disabled key (DisableKey) or one pending deletion (ScheduleKeyDeletion) still signs and still
   hands out its public key. Real KMS refuses those calls: `DisabledException` ("<key ARN> is
   disabled.") for a Disabled key, `KMSInvalidStateException` ("<key ARN> is pending deletion.")
   for PendingDeletion, both HTTP 400 (see the "Key states of AWS KMS keys" table of the KMS
   developer guide). The tests of the aws_kms signer (tests/integration/test_signers.py) disable a
   key mid-drain and need the real answer. Also, GetPublicKey answers KeyId as the key ARN (moto:
   the bare key id) and KeySpec (moto: only the deprecated CustomerMasterKeySpec), as real KMS does;
   and DisableKey / EnableKey / ScheduleKeyDeletion / CancelKeyDeletion take a key ARN as well as a
   key id (moto: HTTP 500 on an ARN).

2. ACM PCA `IssueCertificate` for the end-entity templates. moto 5.2.5 gives the
   `EndEntity*_APIPassthrough/V1` (and every other end-entity template but
   `EndEntityCertificate/V1`) no extension at all except the CSR's SAN: no keyUsage, no
   extendedKeyUsage, no basicConstraints (a node that requires its profile's EKU refuses such a
   certificate); it ignores `Validity` (always 365 days), `ValidityNotBefore` (notBefore = now) and
   `SigningAlgorithm` (always SHA-512), and it issues from a CA that is not ACTIVE. Here, for the
   templates `EndEntityCertificate`, `EndEntityClientAuthCertificate` and
   `EndEntityServerAuthCertificate` (V1, plain or _APIPassthrough/_CSRPassthrough/_APICSRPassthrough),
   the certificate gets the template's extensions as AWS documents them (critical CA:FALSE, AKI,
   SKI, critical keyUsage, the template's EKU), the SAN of ApiPassthrough or else of the CSR,
   the subject of ApiPassthrough or else of the CSR, notAfter from `Validity` (DAYS, MONTHS = 30 days,
   YEARS = 365 days, END_DATE, ABSOLUTE), notBefore from `ValidityNotBefore` or else issuance time
   minus 60 minutes (PCA's documented default), the hash of `SigningAlgorithm`; and a CA that is not
   ACTIVE answers `InvalidStateException`. Other templates stay moto's. What still differs from
   real PCA: the CA key is always RSA-2048 whatever the CA's KeyAlgorithm; certificates are issued at
   once (GetCertificate never answers RequestInProgressException); GetCertificate's chain is the CA
   certificate alone; a GetCertificate for an unknown certificate ARN is an HTTP 500.

3. KMS `Sign` and `Verify` with MessageType=DIGEST. moto 5.2.5 ignores MessageType: it hashes the
   Message it is given with the signing algorithm's hash even when the caller says Message already
   is that digest, so a DIGEST signature is over hash(digest) and does not verify over the
   original data. Real KMS signs (verifies) a DIGEST Message as the prehashed digest of the
   algorithm's hash (SHA-256 for ECDSA_SHA_256, RSASSA_*_SHA_256; SHA-384, SHA-512 likewise) and
   refuses a Message whose length is not that hash's (32, 48 or 64 bytes) with a
   `ValidationException` ("Digest is invalid length for algorithm <algorithm>."; HTTP 400). Here,
   with MessageType DIGEST, both do that (`cryptography`'s `utils.Prehashed`, the same padding as
   moto's RAW path), after moto's own checks (key usage, signing algorithm) and the key-state check
   of 1 (upstream: getmoto/moto pull request 10202, open when this was written, does the same).
   MessageType RAW (or none) stays moto's, except that a RAW Message over 4096 bytes is refused
   with a `ValidationException` as real KMS does (moto signs any size). The mtls_ca_sign /
   mtls_ca_revoke KMS client sends messages over 4096 bytes (e.g. a large CRL's to-be-signed
   part) as DIGEST.

4. Authentication and authorization errors in the protocol of the request. With IAM enforced
   (INITIAL_NO_AUTH_ACTION_COUNT), moto 5.2.5 answers a refused call (AccessDenied,
   InvalidClientTokenId, SignatureDoesNotMatch, ...) with an XML body whatever the protocol; SQS's
   and KMS's JSON protocol (an `X-Amz-Target` header) get a JSON error from real AWS
   (`{"__type": ..., "message": ...}`), and an SDK of that protocol cannot read the code out of
   XML (the Rust SDK reports an unhandled error). Here a JSON-protocol request gets moto's own
   error as JSON (its `to_json()`), same code and HTTP status; query-protocol requests stay XML.
   tests/integration/test_aws_errors.py needs it to see AccessDenied as AWS says it.

5. Throttling on request. moto never throttles. With FLEETPKI_MOTO_THROTTLE set to a comma-separated
   list of JSON-protocol actions (e.g. `SendMessage,CreateQueue`), every request for one of them
   is answered as real SQS answers a throttled call (HTTP 400, `{"__type": "ThrottlingException",
   "message": "Rate exceeded"}`), before moto handles it; other actions (the readiness probe's
   ListQueues) stay moto's. moto's own INITIAL_NO_AUTH_ACTION_COUNT is the model: a switch of
   the test server, off unless set. tests/integration/test_aws_errors.py needs it to see
   throttling as AWS reports it, after the SDK's own retries.

Everything else is moto as installed; nothing is written to disk.
"""

from __future__ import annotations

import contextvars
import functools
import os
import sys

from moto.core.exceptions import JsonRESTError
from moto.kms.models import KmsBackend

# --------------------------------------------------------------------------------------------
# 1. KMS key state
# --------------------------------------------------------------------------------------------

# Key states in which real KMS refuses cryptographic operations and GetPublicKey, and the error.
_REFUSED_STATES = {
    "Disabled": ("DisabledException", "{arn} is disabled."),
    "PendingDeletion": ("KMSInvalidStateException", "{arn} is pending deletion."),
    "PendingReplicaDeletion": ("KMSInvalidStateException", "{arn} is pending deletion."),
}


class DisabledException(JsonRESTError):
    code = 400

    def __init__(self, message: str):
        super().__init__("DisabledException", message)


class KMSInvalidStateException(JsonRESTError):
    code = 400

    def __init__(self, message: str):
        super().__init__("KMSInvalidStateException", message)


_EXCEPTIONS = {"DisabledException": DisabledException, "KMSInvalidStateException": KMSInvalidStateException}


def _check_key_state(backend: KmsBackend, key_id: str) -> None:
    """Raise what real KMS answers when the key (id, ARN, alias name or alias ARN) is not usable.

    A key that does not exist is left to moto (its responses layer already answers
    NotFoundException before the backend is called)."""
    try:
        key = backend.describe_key(key_id)
    except Exception:  # noqa: BLE001 - unknown key: moto's own handling follows
        return
    refused = _REFUSED_STATES.get(getattr(key, "key_state", "Enabled"))
    if refused is not None:
        code, template = refused
        raise _EXCEPTIONS[code](template.format(arn=key.arn))


def _guard(method_name: str) -> None:
    original = getattr(KmsBackend, method_name)
    if getattr(original, "_fleetpki_state_checked", False):
        return

    @functools.wraps(original)
    def checked(self, key_id, *args, **kwargs):
        _check_key_state(self, key_id)
        return original(self, key_id, *args, **kwargs)

    checked._fleetpki_state_checked = True  # type: ignore[attr-defined]
    setattr(KmsBackend, method_name, checked)


# --------------------------------------------------------------------------------------------
# 2. ACM PCA IssueCertificate
# --------------------------------------------------------------------------------------------

_TEMPLATE_PREFIX = "arn:aws:acm-pca:::template/"
# Template family -> (keyUsage bits, EKU names), per the AWS Private CA user guide ("Template definitions").
_END_ENTITY_TEMPLATES = {
    "EndEntityCertificate": (("digital_signature", "key_encipherment"), ("SERVER_AUTH", "CLIENT_AUTH")),
    "EndEntityClientAuthCertificate": (("digital_signature",), ("CLIENT_AUTH",)),
    "EndEntityServerAuthCertificate": (("digital_signature", "key_encipherment"), ("SERVER_AUTH",)),
}
_VARIANTS = ("", "_APIPassthrough", "_CSRPassthrough", "_APICSRPassthrough")


def _template(template_arn: str | None):
    """(keyUsage bits, EKU names, api_passthrough) for the end-entity templates handled here, else None."""
    name = template_arn or f"{_TEMPLATE_PREFIX}EndEntityCertificate/V1"
    if not name.startswith(_TEMPLATE_PREFIX) or not name.endswith("/V1"):
        return None
    body = name[len(_TEMPLATE_PREFIX) : -len("/V1")]
    for family, (usages, ekus) in _END_ENTITY_TEMPLATES.items():
        for variant in _VARIANTS:
            if body == family + variant:
                return usages, ekus, "API" in variant
    return None


def _validity_time(validity: dict, now):
    import datetime as dt

    kind = validity.get("Type")
    value = int(validity.get("Value"))
    if kind == "DAYS":
        return now + dt.timedelta(days=value)
    if kind == "MONTHS":
        return now + dt.timedelta(days=30 * value)
    if kind == "YEARS":
        return now + dt.timedelta(days=365 * value)
    if kind == "ABSOLUTE":
        return dt.datetime.fromtimestamp(value, dt.UTC)
    if kind == "END_DATE":
        return dt.datetime.strptime(str(value), "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)
    raise JsonRESTError("ValidationException", f"Invalid validity type {kind!r}")


def _general_names(entries: list) -> list:
    import ipaddress

    from cryptography import x509

    names = []
    for entry in entries or []:
        if "DnsName" in entry:
            names.append(x509.DNSName(entry["DnsName"]))
        elif "IpAddress" in entry:
            names.append(x509.IPAddress(ipaddress.ip_address(entry["IpAddress"])))
        elif "Rfc822Name" in entry:
            names.append(x509.RFC822Name(entry["Rfc822Name"]))
        elif "UniformResourceIdentifier" in entry:
            names.append(x509.UniformResourceIdentifier(entry["UniformResourceIdentifier"]))
    return names


def _api_subject(subject: dict):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    order = (
        ("Country", NameOID.COUNTRY_NAME),
        ("State", NameOID.STATE_OR_PROVINCE_NAME),
        ("Locality", NameOID.LOCALITY_NAME),
        ("Organization", NameOID.ORGANIZATION_NAME),
        ("OrganizationalUnit", NameOID.ORGANIZATIONAL_UNIT_NAME),
        ("SerialNumber", NameOID.SERIAL_NUMBER),
        ("CommonName", NameOID.COMMON_NAME),
    )
    return x509.Name([x509.NameAttribute(oid, subject[key]) for key, oid in order if subject.get(key)])


def _issue_end_entity(response, params: dict, template) -> str:
    import base64
    import datetime as dt
    import json

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID
    from moto.moto_api._internal import mock_random
    from moto.utilities.utils import get_partition

    usages, ekus, api_passthrough = template
    ca_arn = params.get("CertificateAuthorityArn")
    ca = response.acmpca_backend.describe_certificate_authority(ca_arn)
    if ca.status != "ACTIVE":
        raise JsonRESTError(
            "InvalidStateException",
            f"The certificate authority {ca_arn} is not in the correct state to issue certificates.",
        )
    csr = x509.load_pem_x509_csr(base64.b64decode(params.get("Csr")))
    passthrough = (params.get("ApiPassthrough") or {}) if api_passthrough else {}

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    not_after = _validity_time(params["Validity"], now) if params.get("Validity") else now + dt.timedelta(days=365)
    if params.get("ValidityNotBefore"):
        not_before = _validity_time(params["ValidityNotBefore"], now)
    else:
        not_before = now - dt.timedelta(minutes=60)

    subject = _api_subject(passthrough["Subject"]) if passthrough.get("Subject") else csr.subject
    ku = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    ku.update(dict.fromkeys(usages, True))
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.issuer)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
        .add_extension(x509.KeyUsage(**ku), critical=True)
        .add_extension(x509.ExtendedKeyUsage([getattr(ExtendedKeyUsageOID, name) for name in ekus]), critical=False)
    )
    api_sans = _general_names((passthrough.get("Extensions") or {}).get("SubjectAlternativeNames"))
    if api_sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(api_sans), critical=False)
    else:
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            builder = builder.add_extension(san.value, critical=san.critical)
        except x509.ExtensionNotFound:
            pass
    algorithm = (params.get("SigningAlgorithm") or "SHA256WITHRSA").upper()
    digest = hashes.SHA512() if "512" in algorithm else hashes.SHA384() if "384" in algorithm else hashes.SHA256()
    cert = builder.sign(ca.key, digest)

    cert_id = str(mock_random.uuid4()).replace("-", "")
    cert_arn = (
        f"arn:{get_partition(ca.region_name)}:acm-pca:{ca.region_name}:{ca.account_id}:"
        f"certificate-authority/{ca.id}/certificate/{cert_id}"
    )
    ca.issued_certificates[cert_arn] = cert.public_bytes(serialization.Encoding.PEM)
    ca.issued_certificates_certificate_chains[cert_arn] = ca.certificate_bytes
    return json.dumps({"CertificateArn": cert_arn})


def _patch_acmpca() -> None:
    import json

    from moto.acmpca.responses import ACMPCAResponse

    original = ACMPCAResponse.issue_certificate
    if getattr(original, "_fleetpki_patched", False):
        return

    @functools.wraps(original)
    def issue_certificate(self) -> str:
        params = json.loads(self.body)
        template = _template(params.get("TemplateArn"))
        if template is None:
            return original(self)
        return _issue_end_entity(self, params, template)

    issue_certificate._fleetpki_patched = True  # type: ignore[attr-defined]
    ACMPCAResponse.issue_certificate = issue_certificate


def _patch_get_public_key_response() -> None:
    """Real GetPublicKey answers KeyId = the key ARN and KeySpec (beside the deprecated
    CustomerMasterKeySpec); moto 5.2.5 answers the bare key id and no KeySpec."""
    import json

    from moto.kms.responses import KmsResponse

    original = KmsResponse.get_public_key
    if getattr(original, "_fleetpki_patched", False):
        return

    @functools.wraps(original)
    def get_public_key(self) -> str:
        body = json.loads(original(self))
        key = self.kms_backend.describe_key(self._get_param("KeyId"))
        body["KeyId"] = key.arn
        body.setdefault("KeySpec", body.get("CustomerMasterKeySpec"))
        return json.dumps(body)

    get_public_key._fleetpki_patched = True  # type: ignore[attr-defined]
    KmsResponse.get_public_key = get_public_key


def _accept_key_arn(method_name: str) -> None:
    """Real KMS takes a key id or a key ARN in DisableKey, EnableKey, ScheduleKeyDeletion and
    CancelKeyDeletion; moto 5.2.5's backend indexes its key table with what it got, so a key ARN
    is an HTTP 500 (KeyError). Normalise to the key id first."""
    original = getattr(KmsBackend, method_name)
    if getattr(original, "_fleetpki_patched", False):
        return

    @functools.wraps(original)
    def normalised(self, key_id, *args, **kwargs):
        return original(self, self.get_key_id(key_id), *args, **kwargs)

    normalised._fleetpki_patched = True  # type: ignore[attr-defined]
    setattr(KmsBackend, method_name, normalised)


# --------------------------------------------------------------------------------------------
# 3. KMS Sign / Verify with MessageType=DIGEST
# --------------------------------------------------------------------------------------------

# KMS's limit for a RAW Message (bytes); DIGEST messages are the hash's length.
RAW_MESSAGE_LIMIT = 4096

# Set (to True) while a Sign or Verify request with MessageType DIGEST is served: the key objects'
# sign/verify then take the message as the prehashed digest. A context variable: moto's server
# serves requests in threads, each with its own context.
_DIGEST = contextvars.ContextVar("fleetpki_kms_digest", default=False)


def _hash_of(signing_algorithm: str):
    """The hash a KMS signing algorithm names (ECDSA_SHA_256, RSASSA_PSS_SHA_384, ...)."""
    from cryptography.hazmat.primitives import hashes

    for suffix, algorithm in (("SHA_256", hashes.SHA256), ("SHA_384", hashes.SHA384), ("SHA_512", hashes.SHA512)):
        if signing_algorithm.endswith(suffix):
            return algorithm()
    return None


def _prehashed(message: bytes, signing_algorithm: str):
    """The Prehashed algorithm for a DIGEST message, or ValidationException as KMS answers when
    the digest's length is not the algorithm's hash's."""
    from cryptography.hazmat.primitives.asymmetric import utils
    from moto.kms.exceptions import ValidationException

    algorithm = _hash_of(signing_algorithm)
    if algorithm is None or len(message) != algorithm.digest_size:
        raise ValidationException(f"Digest is invalid length for algorithm {signing_algorithm}.")
    return utils.Prehashed(algorithm)


def _patch_key_classes() -> None:
    """ECDSA and RSA keys: with _DIGEST set, sign/verify the message as a prehashed digest."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec
    from moto.kms.utils import ECDSAPrivateKey, RSAPrivateKey, validate_signing_algorithm

    if getattr(ECDSAPrivateKey.sign, "_fleetpki_patched", False):
        return
    moto_ec_sign, moto_ec_verify = ECDSAPrivateKey.sign, ECDSAPrivateKey.verify
    moto_rsa_sign, moto_rsa_verify = RSAPrivateKey.sign, RSAPrivateKey.verify

    def ecdsa_sign(self, message, signing_algorithm):
        if not _DIGEST.get():
            return moto_ec_sign(self, message, signing_algorithm)
        validate_signing_algorithm(signing_algorithm, self.valid_signing_algorithms)
        return self.private_key.sign(message, ec.ECDSA(_prehashed(message, signing_algorithm)))

    def ecdsa_verify(self, message, signature, signing_algorithm):
        if not _DIGEST.get():
            return moto_ec_verify(self, message, signature, signing_algorithm)
        validate_signing_algorithm(signing_algorithm, self.valid_signing_algorithms)
        prehashed = _prehashed(message, signing_algorithm)
        try:
            self.private_key.public_key().verify(signature, message, ec.ECDSA(prehashed))
            return True
        except InvalidSignature:
            return False

    def _rsa_padding(self, signing_algorithm):
        # moto's own choice of padding for the algorithm (name-mangled private method).
        pad, _hash = self._RSAPrivateKey__padding_and_hash_algorithm(signing_algorithm)
        return pad

    def rsa_sign(self, message, signing_algorithm):
        from moto.kms.utils import SigningAlgorithm

        if not _DIGEST.get():
            return moto_rsa_sign(self, message, signing_algorithm)
        validate_signing_algorithm(signing_algorithm, SigningAlgorithm.rsa_signing_algorithms())
        prehashed = _prehashed(message, signing_algorithm)
        return self.private_key.sign(message, _rsa_padding(self, signing_algorithm), prehashed)

    def rsa_verify(self, message, signature, signing_algorithm):
        from moto.kms.utils import SigningAlgorithm

        if not _DIGEST.get():
            return moto_rsa_verify(self, message, signature, signing_algorithm)
        validate_signing_algorithm(signing_algorithm, SigningAlgorithm.rsa_signing_algorithms())
        prehashed = _prehashed(message, signing_algorithm)
        try:
            self.private_key.public_key().verify(signature, message, _rsa_padding(self, signing_algorithm), prehashed)
            return True
        except InvalidSignature:
            return False

    for cls, name, fn in (
        (ECDSAPrivateKey, "sign", ecdsa_sign),
        (ECDSAPrivateKey, "verify", ecdsa_verify),
        (RSAPrivateKey, "sign", rsa_sign),
        (RSAPrivateKey, "verify", rsa_verify),
    ):
        fn._fleetpki_patched = True  # type: ignore[attr-defined]
        setattr(cls, name, fn)


def _patch_digest_responses() -> None:
    """KmsResponse.sign / verify: serve a MessageType=DIGEST request with _DIGEST set. Anything
    but DIGEST (RAW, none) is moto's path unchanged."""
    from moto.kms.responses import KmsResponse

    for name in ("sign", "verify"):
        original = getattr(KmsResponse, name)
        if getattr(original, "_fleetpki_patched", False):
            continue

        def make(original):
            @functools.wraps(original)
            def served(self) -> str:
                if self._get_param("MessageType") != "DIGEST":
                    # Real KMS refuses a RAW message over 4096 bytes; moto signs any size.
                    message = self._get_param("Message") or b""
                    if len(message) > RAW_MESSAGE_LIMIT:
                        from moto.kms.exceptions import ValidationException

                        raise ValidationException(
                            "1 validation error detected: Value at 'message' failed to satisfy constraint: "
                            f"Member must have length less than or equal to {RAW_MESSAGE_LIMIT}",
                        )
                    return original(self)
                token = _DIGEST.set(True)
                try:
                    return original(self)
                finally:
                    _DIGEST.reset(token)

            served._fleetpki_patched = True  # type: ignore[attr-defined]
            return served

        setattr(KmsResponse, name, make(original))


THROTTLE_VAR = "FLEETPKI_MOTO_THROTTLE"


def _patch_auth_errors_in_json() -> None:
    """Patches 4 and 5 (see the module docstring): both answer before moto authorizes a call."""
    from moto.core.exceptions import _RESTError
    from moto.core.responses import BaseResponse

    original = BaseResponse._authenticate_and_authorize_normal_action
    if getattr(original, "_fleetpki_patched", False):
        return

    throttled = {a.strip() for a in os.environ.get(THROTTLE_VAR, "").split(",") if a.strip()}

    @functools.wraps(original)
    def authorize(self, *args, **kwargs):
        target = self.headers.get("X-Amz-Target") or ""
        if throttled and target.rsplit(".", 1)[-1] in throttled:
            # Patch 5: throttled before moto acts on the request.
            raise JsonRESTError("ThrottlingException", "Rate exceeded")
        try:
            return original(self, *args, **kwargs)
        except _RESTError as refused:
            if not isinstance(refused, JsonRESTError) and self.headers.get("X-Amz-Target"):
                raise refused.to_json() from refused
            raise

    authorize._fleetpki_patched = True  # type: ignore[attr-defined]
    BaseResponse._authenticate_and_authorize_normal_action = authorize


def patch() -> None:
    for name in ("sign", "verify", "get_public_key"):
        _guard(name)
    for name in ("disable_key", "enable_key", "schedule_key_deletion", "cancel_key_deletion"):
        _accept_key_arn(name)
    _patch_get_public_key_response()
    _patch_acmpca()
    _patch_key_classes()
    _patch_digest_responses()
    _patch_auth_errors_in_json()


def main(argv: list[str] | None = None) -> None:
    patch()
    from moto.server import main as moto_main

    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
