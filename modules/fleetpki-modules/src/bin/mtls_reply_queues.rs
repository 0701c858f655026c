//! Ansible module `fleetpki.mtls.mtls_reply_queues` (see `plugins/modules/mtls_reply_queues.py`).
use fleetpki_modules::reply_queues::{run, spec, NAME};

fn main() {
    ansible_module::run_module(NAME, &spec(), run);
}
