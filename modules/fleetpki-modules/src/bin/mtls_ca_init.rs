//! Ansible module `fleetpki.mtls.mtls_ca_init` (see `plugins/modules/mtls_ca_init.py`).
use fleetpki_modules::ca_init::{run, spec, NAME};

fn main() {
    ansible_module::run_module(NAME, &spec(), run);
}
