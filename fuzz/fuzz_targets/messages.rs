#![no_main]
//! The wire-format readers (CSR messages on the CA, replies on the node) and the policy file.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = serde_json::from_str::<fleetpki_core::wire::CsrMessage>(text);
        let _ = fleetpki_core::wire::ReplyMessage::from_json(text);
        let _ = fleetpki_core::policy::Policy::from_json(text);
    }
});
