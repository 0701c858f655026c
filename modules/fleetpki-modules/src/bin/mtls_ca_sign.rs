//! Ansible module `fleetpki.mtls.mtls_ca_sign` (see `plugins/modules/mtls_ca_sign.py`), and with
//! `serve CONFIG.json` the same worker as a long-running service.
use fleetpki_modules::ca_service::serve;
use fleetpki_modules::ca_sign::{run, spec, NAME};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        std::process::exit(serve(args.get(2).map(String::as_str)));
    }
    ansible_module::run_module(NAME, &spec(), run);
}
