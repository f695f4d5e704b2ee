//! `edge.toml` parsing and validation on arbitrary text: never panics;
//! what parses compiles, and every rejection names an object.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = edge::config::Config::parse(text, Path::new("fuzz.toml")) {
        let compiled = edge::check::compile_config(&config);
        for e in &compiled.errors {
            let _ = e.object();
            let _ = e.to_string();
        }
        let _ = edge::check::report(&compiled);
    }
});
