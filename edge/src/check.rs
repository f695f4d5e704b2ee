//! `edge check --config F`: load and compile, bind nothing, print the
//! listener table and every rejection. `--syntax-only` stops after loading:
//! what would stop the edge from starting at all (an unreadable file, bad
//! TOML, wrong types or values) fails; objects that the policy rejects do
//! not (a running edge serves the rest and reports them).

use std::fmt::Write;

use route_model::{compile, Compiled};

use crate::config::Config;

/// Compiles `config` into version 1 of the table.
pub fn compile_config(config: &Config) -> Compiled {
    compile(&config.routing, &config.policy, &config.overlay.policy, 1)
}

/// `--syntax-only`'s one line: the file loads, and what it holds.
pub fn syntax_report(config: &Config) -> String {
    format!(
        "config ok: {} envs, {} instances, {} routes (objects not checked against the policy; run `edge check` for that)\n",
        config.routing.envs.len(),
        config.routing.instances.len(),
        config.routing.routes.len()
    )
}

/// The human-readable listener table, then one `error:` line per rejection.
pub fn report(compiled: &Compiled) -> String {
    let table = &compiled.table;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} listeners, {} routes, {} rejected",
        table.listeners().count(),
        table.routes().len(),
        compiled.errors.len()
    );
    let _ = writeln!(
        out,
        "{:<44} {:<16} {:<16} {:<32} BACKENDS",
        "LISTENER", "PROTOCOL", "ROUTE", "HOSTNAME"
    );
    for (addr, _) in table.listeners() {
        for r in table.routes_on(addr) {
            let route = &r.route;
            let _ = writeln!(
                out,
                "{:<44} {:<16} {:<16} {:<32} {}:{} ({} healthy){}",
                addr.to_string(),
                route.protocol.as_str(),
                &*route.id,
                route.hostname.to_string(),
                &*route.backend_process_type,
                route.backend_port,
                r.backends.len(),
                if route.proxy_protocol {
                    " +proxy_v2"
                } else {
                    ""
                },
            );
        }
    }
    for e in &compiled.errors {
        let _ = writeln!(out, "error: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn report_lists_listeners_and_names_rejected_routes() {
        let mut text = include_str!("../../deploy/examples/contract.toml").to_owned();
        text.push_str(
            "\n[[routes]]\nid = \"r-smtp\"\nenv = \"acme/shop/prod\"\nhostname = \"mail.example.com\"\nlisten_port = 25\nprotocol = \"tcp_raw\"\nbackend_port = 25\n",
        );
        let config = Config::parse(&text, Path::new("edge.toml")).unwrap();
        let out = report(&compile_config(&config));
        assert!(out.contains("[2001:db8::10]:443"), "{out}");
        assert!(out.contains("203.0.113.7:443"), "{out}");
        assert!(out.contains("error: route r-smtp: port 25"), "{out}");
    }
}
