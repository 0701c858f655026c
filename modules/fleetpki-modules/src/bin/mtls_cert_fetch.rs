//! Ansible module `fleetpki.mtls.mtls_cert_fetch` (see `plugins/modules/mtls_cert_fetch.py`).
use fleetpki_modules::cert_fetch::{run, spec, NAME};

fn main() {
    ansible_module::run_module(NAME, &spec(), run);
}
