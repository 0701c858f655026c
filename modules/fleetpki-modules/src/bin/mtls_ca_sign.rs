//! Ansible module `fleetpki.mtls.mtls_ca_sign` (see `plugins/modules/mtls_ca_sign.py`).
use fleetpki_modules::ca_sign::{run, spec, NAME};

fn main() {
    ansible_module::run_module(NAME, &spec(), run);
}
