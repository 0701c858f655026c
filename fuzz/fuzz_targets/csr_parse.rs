#![no_main]
//! The CA's CSR reader on arbitrary PEM text and on arbitrary DER wrapped in PEM.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = fleetpki_core::csr::parse_and_verify_csr(text);
    }
    let wrapped = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", data.to_vec()));
    let _ = fleetpki_core::csr::parse_and_verify_csr(&wrapped);
    let cert = pem::encode(&pem::Pem::new("CERTIFICATE", data.to_vec()));
    let _ = fleetpki_core::certs::parse_certificate(&cert, "fuzz");
});
