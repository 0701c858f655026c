//! Ansible module `fleetpki.mtls.mtls_ca_revoke` (see `plugins/modules/mtls_ca_revoke.py`).
use fleetpki_modules::ca_revoke::{run, spec, NAME};

fn main() {
    ansible_module::run_module(NAME, &spec(), run);
}
