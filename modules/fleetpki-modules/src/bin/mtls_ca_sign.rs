//! Ansible module `fleetpki.mtls.mtls_ca_sign` (see `plugins/modules/mtls_ca_sign.py`), and with
//! `serve CONFIG.json` the same worker as a long-running service; `--reason-codes` lists the
//! reason codes it refuses with (JSON).
use fleetpki_modules::ca_service::serve;
use fleetpki_modules::ca_sign::{reason_codes_json, run, spec, NAME};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => std::process::exit(serve(args.get(2).map(String::as_str))),
        Some("--reason-codes") if args.len() == 2 => {
            println!("{}", reason_codes_json());
            std::process::exit(0);
        }
        _ => {}
    }
    ansible_module::run_module(NAME, &spec(), run);
}
