//! Where the intermediate's key lives, chosen by the `signer` option: a key file (`file`), an
//! AWS KMS key (`aws_kms`), or AWS Private CA issuing for us (`aws_pca`). See docs/signers.md.

use std::path::Path;
use std::sync::Arc;

use ansible_module::{Failure, OptionSpec, OptionType};
use fleetpki_aws::{load_config, AwsErrorKind, AwsOptions, SdkConfig};
use fleetpki_core::certs::{parse_certificate, CertificateInfo};
use fleetpki_core::remote::{algorithm_for_spki, RemoteAlgorithm, RemoteSignError};
use fleetpki_core::sign::CaSigner;
use fleetpki_signers::kms::{Kms, KmsKey};
use fleetpki_signers::pca::Pca;
use fleetpki_signers::BlockingRuntime;
use serde::Deserialize;
use serde_json::Value;

use crate::common::{calls_json, signer_failure};

/// The `signer` option's choices: the one definition its spec, checks and results derive from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignerKind {
    File,
    AwsKms,
    AwsPca,
}

impl SignerKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            SignerKind::File => "file",
            SignerKind::AwsKms => "aws_kms",
            SignerKind::AwsPca => "aws_pca",
        }
    }
}

/// The choices as the spec's `required_if` and the messages name them.
pub const FILE: &str = SignerKind::File.as_str();
pub const AWS_KMS: &str = SignerKind::AwsKms.as_str();
pub const AWS_PCA: &str = SignerKind::AwsPca.as_str();

/// The `signer` option and the options each backend needs.
pub fn signer_options(choices: &[SignerKind]) -> Vec<OptionSpec> {
    let mut options = vec![
        OptionSpec::new("signer", OptionType::Str)
            .choices(choices.iter().map(|c| c.as_str()))
            .default(FILE),
        OptionSpec::new("kms_key_id", OptionType::Str),
    ];
    if choices.contains(&SignerKind::AwsPca) {
        options.push(
            OptionSpec::new("certificate_authority_arn", OptionType::Str).aliases(&["pca_arn"]),
        );
    }
    options
}

#[derive(Debug, Clone, Deserialize)]
pub struct SignerArgs {
    pub signer: SignerKind,
    pub kms_key_id: Option<String>,
    #[serde(default)]
    pub certificate_authority_arn: Option<String>,
}

impl SignerArgs {
    /// `kms_key_id`, which `required_if` demands with signer=aws_kms.
    pub fn kms_key_id(&self) -> Result<&str, Failure> {
        self.kms_key_id
            .as_deref()
            .ok_or_else(|| Failure::new("signer is aws_kms but kms_key_id is missing"))
    }

    /// `certificate_authority_arn`, which `required_if` demands with signer=aws_pca.
    pub fn certificate_authority_arn(&self) -> Result<&str, Failure> {
        self.certificate_authority_arn.as_deref().ok_or_else(|| {
            Failure::new("signer is aws_pca but certificate_authority_arn is missing")
        })
    }
}

/// The runtime the signer's AWS calls run on, and the SDK configuration from the module's
/// amazon.aws options (the same as SQS's).
pub fn aws_runtime(aws: &AwsOptions) -> Result<(Arc<BlockingRuntime>, SdkConfig), Failure> {
    let runtime = Arc::new(BlockingRuntime::new().map_err(|e| Failure::new(e.to_string()))?);
    let config = runtime.block_on(load_config(aws))?;
    Ok((runtime, config))
}

/// The options of the other backends must not be given: a leftover `ownca_privatekey_path`
/// beside `signer: aws_kms` would suggest the key file is still used.
pub fn refuse_foreign_options(signer: &str, given: &[(&str, bool)]) -> Result<(), Failure> {
    for (name, is_set) in given {
        if *is_set {
            return Err(Failure::new(format!(
                "{name} does not apply to signer={signer}: remove it"
            )));
        }
    }
    Ok(())
}

/// Why the signer could not be opened: decided where it happened, so a caller never has to
/// guess from the failure's contents.
#[derive(Debug)]
pub enum OpenError {
    /// KMS or Private CA said the signer cannot sign now (a disabled or missing key, a denied
    /// `kms:Sign`, a CA not ACTIVE), or could not be reached: nothing was taken from the queue,
    /// and waiting may be enough.
    Unavailable(Failure),
    /// Anything else (a missing file, an option that does not apply, a key that is not the
    /// certificate's): waiting will not help.
    Invalid(Failure),
}

impl OpenError {
    /// A signer setup call failed: misconfigured when AWS found no usable credentials (waiting
    /// will not bring them), else unavailable.
    fn from_signer(error: &fleetpki_signers::SignerError, failure: Failure) -> OpenError {
        match error.aws_kind() {
            Some(AwsErrorKind::NoCredentials | AwsErrorKind::BadCredentials) => {
                OpenError::Invalid(failure)
            }
            _ => OpenError::Unavailable(failure),
        }
    }

    /// The call counts of the signer's service, in either case.
    fn with_calls(self, key: &str, calls: Value) -> OpenError {
        match self {
            OpenError::Unavailable(f) => OpenError::Unavailable(f.with(key, calls)),
            OpenError::Invalid(f) => OpenError::Invalid(f.with(key, calls)),
        }
    }
}

impl From<OpenError> for Failure {
    fn from(e: OpenError) -> Failure {
        match e {
            OpenError::Unavailable(f) | OpenError::Invalid(f) => f,
        }
    }
}

impl From<Failure> for OpenError {
    fn from(f: Failure) -> OpenError {
        OpenError::Invalid(f)
    }
}

impl From<fleetpki_core::PkiError> for OpenError {
    fn from(e: fleetpki_core::PkiError) -> OpenError {
        OpenError::Invalid(e.into())
    }
}

/// The CA worker's signer.
pub enum Backend {
    /// We build and sign each certificate with the intermediate's key: a key file, or a KMS key
    /// through `Sign` (`kms`, with its client's runtime).
    SigningKey {
        /// Shared with the threads that judge a batch while the runtime goes on.
        signer: Arc<CaSigner>,
        kms: Option<Arc<KmsKey>>,
    },
    /// AWS Private CA issues each certificate; `ca` is its certificate (from mtls_ca_init).
    PrivateCa(Box<PcaBackend>),
}

pub struct PcaBackend {
    pub pca: Pca,
    pub arn: String,
    pub ca: CertificateInfo,
    pub chain_pem: String,
    pub algorithm: RemoteAlgorithm,
    pub template_arn: Option<String>,
    pub runtime: Arc<BlockingRuntime>,
}

impl Backend {
    /// Opens the signer; with KMS, checks the key is enabled, is the certificate's and signs (one
    /// probe `Sign`); with Private CA, that the CA is ACTIVE.
    pub fn open(
        args: &SignerArgs,
        aws: &AwsOptions,
        cert_path: &str,
        key_path: Option<&str>,
        chain_path: &str,
        pca_template_arn: Option<String>,
    ) -> Result<Backend, OpenError> {
        match args.signer {
            SignerKind::AwsKms => {
                refuse_foreign_options(
                    AWS_KMS,
                    &[
                        ("ownca_privatekey_path", key_path.is_some()),
                        (
                            "certificate_authority_arn",
                            args.certificate_authority_arn.is_some(),
                        ),
                    ],
                )?;
                let key_id = args.kms_key_id()?;
                let (runtime, config) = aws_runtime(aws)?;
                let kms = Kms::new(&config);
                let public = runtime
                    .block_on(kms.public_key(key_id))
                    .map_err(|e| {
                        OpenError::from_signer(&e, signer_failure(&e))
                            .with_calls("kms_calls", calls_json(kms.calls()))
                    })?
                    .ok_or_else(|| {
                        OpenError::Unavailable(
                            signer_failure(&fleetpki_signers::SignerError::KeyNotFound(
                                key_id.into(),
                            ))
                            .with("kms_calls", calls_json(kms.calls())),
                        )
                    })?;
                let key = Arc::new(
                    KmsKey::new(kms, &public, runtime).map_err(|e| Failure::new(e.to_string()))?,
                );
                let signer = CaSigner::with_remote_key(
                    Path::new(cert_path),
                    Path::new(chain_path),
                    key.clone(),
                    &public.spki_der,
                )?;
                // One probe signature before any request is taken: GetPublicKey alone would miss
                // a missing kms:Sign permission, found only after receiving (a receive count each run).
                if let Err(e) = key.probe() {
                    return Err(OpenError::Unavailable(
                        Failure::new(format!("KMS Sign with {}: {e}", public.key_arn))
                            .with("kms_calls", calls_json(key.calls())),
                    ));
                }
                Ok(Backend::SigningKey {
                    signer: Arc::new(signer),
                    kms: Some(key),
                })
            }
            SignerKind::AwsPca => {
                refuse_foreign_options(
                    AWS_PCA,
                    &[
                        ("ownca_privatekey_path", key_path.is_some()),
                        ("kms_key_id", args.kms_key_id.is_some()),
                    ],
                )?;
                let arn = args.certificate_authority_arn()?.to_string();
                let read = |p: &str| {
                    std::fs::read_to_string(p).map_err(|e| {
                        Failure::new(format!(
                            "cannot read {p}: {e}. Run mtls_ca_init with signer=aws_pca first"
                        ))
                    })
                };
                let ca = parse_certificate(&read(cert_path)?, cert_path)?;
                let algorithm = algorithm_for_spki(&ca.spki_der)?;
                let (runtime, config) = aws_runtime(aws)?;
                let pca = Pca::new(&config);
                // A CA that cannot issue is found out before any request is taken from the queue.
                if let Err(e) = runtime.block_on(pca.probe(&arn)) {
                    return Err(OpenError::Unavailable(
                        Failure::new(e.to_string()).with("acmpca_calls", calls_json(pca.calls())),
                    ));
                }
                Ok(Backend::PrivateCa(Box::new(PcaBackend {
                    pca,
                    arn,
                    ca,
                    chain_pem: read(chain_path)?,
                    algorithm,
                    template_arn: pca_template_arn,
                    runtime,
                })))
            }
            SignerKind::File => {
                refuse_foreign_options(
                    FILE,
                    &[
                        ("kms_key_id", args.kms_key_id.is_some()),
                        (
                            "certificate_authority_arn",
                            args.certificate_authority_arn.is_some(),
                        ),
                    ],
                )?;
                let key_path = key_path.ok_or_else(|| {
                    Failure::new("signer is file but ownca_privatekey_path is missing")
                })?;
                let signer = CaSigner::load(
                    Path::new(cert_path),
                    Path::new(key_path),
                    Path::new(chain_path),
                )?;
                Ok(Backend::SigningKey {
                    signer: Arc::new(signer),
                    kms: None,
                })
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::SigningKey { kms: Some(_), .. } => AWS_KMS,
            Backend::SigningKey { kms: None, .. } => FILE,
            Backend::PrivateCa(_) => AWS_PCA,
        }
    }

    /// What the audit log names the signer by: the KMS key ARN, or the Private CA's ARN.
    pub fn signer_ref(&self) -> Option<&str> {
        match self {
            Backend::SigningKey { signer, .. } => signer.key_ref(),
            Backend::PrivateCa(p) => Some(&p.arn),
        }
    }

    pub fn chain_pem(&self) -> &str {
        match self {
            Backend::SigningKey { signer, .. } => signer.chain_pem(),
            Backend::PrivateCa(p) => &p.chain_pem,
        }
    }

    /// Whether the signer works now. Blocking: call it off the module's runtime.
    pub async fn probe(&self) -> Result<(), RemoteSignError> {
        match self {
            Backend::SigningKey { kms: Some(key), .. } => {
                let key = key.clone();
                tokio::task::spawn_blocking(move || key.probe())
                    .await
                    .unwrap_or_else(|e| Err(RemoteSignError::outage("ProbeFailed", e.to_string())))
            }
            Backend::SigningKey { kms: None, .. } => Ok(()),
            Backend::PrivateCa(p) => {
                let (pca, arn) = (p.pca.clone(), p.arn.clone());
                p.runtime
                    .spawn_on(async move { pca.probe(&arn).await })
                    .await
            }
        }
    }

    /// The calls made to the signer's AWS service, as a result key and value.
    pub fn calls(&self) -> Option<(&'static str, Value)> {
        match self {
            Backend::SigningKey { kms: Some(key), .. } => {
                Some(("kms_calls", calls_json(key.calls())))
            }
            Backend::SigningKey { kms: None, .. } => None,
            Backend::PrivateCa(p) => Some(("acmpca_calls", calls_json(p.pca.calls()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SignerKind;

    #[test]
    fn the_signer_choices_read_back_as_themselves() {
        for kind in [SignerKind::File, SignerKind::AwsKms, SignerKind::AwsPca] {
            let read: SignerKind =
                serde_json::from_value(serde_json::json!(kind.as_str())).unwrap();
            assert_eq!(read, kind);
        }
    }
}
