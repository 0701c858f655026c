//! Ansible module `fleetpki.mtls.mtls_cert_info` (see `plugins/modules/mtls_cert_info.py`).
use fleetpki_modules::cert_info::{run, spec, NAME};

fn main() {
    ansible_module::run_module(NAME, &spec(), run);
}
