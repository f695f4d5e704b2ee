//! Microbenchmarks of the hot path and the control path:
//! ClientHello parsing (a 1.9 KB post-quantum hello in two records, and a
//! small one), `RouteTable::lookup` at 10, 10,000 and 1,000,000 routes
//! (exact and wildcard names), compiling 1,000,000 routes, and the heap
//! bytes held per route, counted by a counting global allocator.
//!
//! `cargo bench -p edge-benches --bench micro`; figures in docs/benchmarks.md.
#![allow(unsafe_code)] // the counting allocator below

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use route_model::{
    compile, EnvSpec, InstanceSpec, OverlayPolicy, PortPolicy, RouteSpec, RouteTable, RoutingSpec,
};
use tls_peek::{Peek, Peeker};

/// Counts live heap bytes, so "bytes per route" is measured, not estimated.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CHROMIUM_PQ: &[u8] = include_bytes!("../../tls-peek/testdata/chromium-pq.bin");
const CURL: &[u8] = include_bytes!("../../tls-peek/testdata/curl-openssl3.bin");
const ENV: &str = "acme/big/prod";

/// The capture's handshake message re-cut into two records at `at`.
fn two_records(hello: &[u8], at: usize) -> Vec<u8> {
    let payload = &hello[5..];
    let mut out = Vec::new();
    for part in [&payload[..at], &payload[at..]] {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

fn hello_parse(c: &mut Criterion) {
    let pq = two_records(CHROMIUM_PQ, 1400);
    let mut g = c.benchmark_group("client_hello");
    for (name, bytes) in [
        ("chromium_pq_1924B_two_records", &pq[..]),
        ("curl_517B", CURL),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut p = Peeker::new(16_384);
                match p.feed(black_box(bytes)) {
                    Peek::Complete(h) => black_box(h.sni().map(str::len)),
                    other => panic!("{other:?}"),
                }
            })
        });
    }
    g.finish();
}

/// `n` routes on one listener: half exact names, half wildcards.
fn spec(n: usize) -> RoutingSpec {
    let routes = (0..n)
        .map(|i| RouteSpec {
            id: format!("r{i}"),
            env: ENV.into(),
            hostname: if i % 2 == 0 {
                format!("app{i}.example.com")
            } else {
                format!("*.tenant{i}.example.net")
            },
            listen_port: 443,
            protocol: "tls_passthrough".into(),
            backend_process_type: "web".into(),
            backend_port: 8443,
            proxy_protocol: false,
            ipv4_required: false,
            health_source: None,
        })
        .collect();
    RoutingSpec {
        envs: vec![EnvSpec {
            id: ENV.into(),
            ipv6: vec!["2001:db8::1".into()],
            ipv4: None,
            ports: vec![],
        }],
        instances: vec![InstanceSpec {
            id: "i-1".into(),
            env: ENV.into(),
            process_type: "web".into(),
            addr: "fdaa::1".into(),
            healthy: true,
        }],
        routes,
    }
}

fn table(n: usize) -> RouteTable {
    let c = compile(
        &spec(n),
        &PortPolicy::default(),
        &OverlayPolicy::default(),
        1,
    );
    assert!(c.errors.is_empty());
    c.table
}

fn lookup(c: &mut Criterion) {
    let addr: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
    let mut g = c.benchmark_group("lookup");
    for n in [10usize, 10_000, 1_000_000] {
        let t = table(n);
        // 1,024 different names per kind, spread over the table, so the
        // benchmark does not measure one cached entry.
        let step = (n / 2 / 1024).max(1);
        let exact: Vec<String> = (0..1024)
            .map(|k| format!("app{}.example.com", (k * step * 2) % n))
            .collect();
        let wild: Vec<String> = (0..1024)
            .map(|k| format!("www.tenant{}.example.net", ((k * step * 2) % n) | 1))
            .collect();
        for (kind, names) in [("exact", &exact), ("wildcard", &wild)] {
            g.bench_with_input(BenchmarkId::new(kind, n), names, |b, names| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) & 1023;
                    black_box(t.lookup(&addr, Some(&names[i])))
                })
            });
        }
    }
    g.finish();
}

fn compile_million(c: &mut Criterion) {
    let million = spec(1_000_000);
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    g.bench_function("1000000_routes", |b| {
        b.iter(|| {
            black_box(compile(
                &million,
                &PortPolicy::default(),
                &OverlayPolicy::default(),
                1,
            ))
        })
    });
    g.finish();
    // Heap held by a compiled table, per route (the spec is freed first).
    drop(million);
    for n in [10_000usize, 1_000_000] {
        let s = spec(n);
        let before = LIVE.load(Ordering::Relaxed);
        let started = Instant::now();
        let t = compile(&s, &PortPolicy::default(), &OverlayPolicy::default(), 1).table;
        let took = started.elapsed();
        let held = LIVE.load(Ordering::Relaxed) - before;
        println!(
            "route table, {n} routes: compiled in {:.3} s, {:.0} heap bytes per route (allocator count)",
            took.as_secs_f64(),
            held as f64 / n as f64,
        );
        drop(t);
    }
}

criterion_group!(benches, hello_parse, lookup, compile_million);
criterion_main!(benches);
