//! Ansible module `fleetpki.mtls.mtls_csr_submit` (see `plugins/modules/mtls_csr_submit.py`).
use fleetpki_modules::csr_submit::{run, spec, NAME};

fn main() {
    ansible_module::run_module(NAME, &spec(), run);
}
