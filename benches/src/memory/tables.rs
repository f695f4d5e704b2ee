//! Route tables of a given size, in the shapes of `edge.toml` and of a
//! pushed routing document: `n` TLS routes with distinct hostnames on one
//! port of `::1`, spread over [`ENVS`] envs of one instance each, to
//! backend port 9 (nothing listens there: the table alone is measured).

use std::fmt::Write as _;

use edge_tests::edge::{Route, Toml};

/// Envs the routes are spread over.
pub const ENVS: usize = 4;

fn env(e: usize) -> String {
    format!("acme/mem{e}/prod")
}

/// An `edge.toml` with `n` routes on `[::1]:port`.
pub fn edge_toml(n: usize, port: u16) -> Toml {
    let mut toml = Toml::new().policy("ipv6_extra_ports", &format!("[{port}]"));
    for e in 0..ENVS {
        toml = toml.env(&env(e), &["::1"], None, &[]).instance(
            &format!("i-{e}"),
            &env(e),
            "web",
            "::1",
        );
    }
    for i in 0..n {
        let e = i % ENVS;
        toml = toml.route(Route::tls(
            &format!("r-{i}"),
            &env(e),
            &format!("h{i}.mem{e}.example"),
            port,
            9,
        ));
    }
    toml
}

/// The routing JSON of a push (`PushRequest.routing_json`) with the same
/// `n` routes, written directly (a `serde_json::Value` of a million
/// routes would cost this process gigabytes).
pub fn routing_json(n: usize, port: u16) -> String {
    let mut out = String::with_capacity(200 * n + 1024);
    out.push_str("{\"envs\":[");
    for e in 0..ENVS {
        let sep = if e == 0 { "" } else { "," };
        let _ = write!(
            out,
            "{sep}{{\"id\":\"{}\",\"ipv6\":[\"::1\"],\"ports\":[]}}",
            env(e)
        );
    }
    out.push_str("],\"instances\":[");
    for e in 0..ENVS {
        let sep = if e == 0 { "" } else { "," };
        let _ = write!(
            out,
            "{sep}{{\"id\":\"i-{e}\",\"env\":\"{}\",\"process_type\":\"web\",\"addr\":\"::1\"}}",
            env(e)
        );
    }
    out.push_str("],\"routes\":[");
    for i in 0..n {
        let e = i % ENVS;
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(
            out,
            "{sep}{{\"id\":\"r-{i}\",\"env\":\"acme/mem{e}/prod\",\"hostname\":\"h{i}.mem{e}.example\",\
             \"listen_port\":{port},\"protocol\":\"tls_passthrough\",\
             \"backend_process_type\":\"web\",\"backend_port\":9}}"
        );
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routing_json_is_json_with_every_route() {
        let doc: serde_json::Value = serde_json::from_str(&routing_json(10, 8443)).unwrap();
        assert_eq!(doc["routes"].as_array().unwrap().len(), 10);
        assert_eq!(doc["envs"].as_array().unwrap().len(), ENVS);
        assert_eq!(doc["routes"][7]["hostname"], "h7.mem3.example");
    }
}
