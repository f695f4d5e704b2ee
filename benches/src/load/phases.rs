//! The load generator's phases. Each runs against one proxy for a fixed
//! time and reads the proxy's CPU time from `/proc` before and after.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::procfs::{machine_busy, Cpu};
use super::proxies::Proxy;
use super::{bulk_hello, CURL_HELLO};
use crate::percentile;

/// Connections in flight at once in the connection phase.
pub const CONCURRENCY: usize = 32;

/// Where the CPU went during a phase.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// The proxy's CPU seconds (user, sys) during the phase.
    pub proxy: Cpu,
    /// The harness's (generator and backends) CPU seconds.
    pub generator: Cpu,
    /// CPU seconds the rest of the machine used meanwhile: other
    /// processes, and irq/softirq time the kernel charges to no process
    /// (loopback TCP: 10-20% of a core here). More than that means the
    /// figures are disturbed.
    pub others: f64,
    pub secs: f64,
}

impl Load {
    /// "core 1 (proxy)" or "core 0 (generator)": whichever was busier.
    pub fn saturated(&self) -> String {
        let (p, g) = (
            self.proxy.total() / self.secs,
            self.generator.total() / self.secs,
        );
        let who = if p >= g { "proxy" } else { "generator" };
        format!(
            "{who} (proxy {:.0}%, generator {:.0}%, others {:.0}%)",
            p * 100.0,
            g * 100.0,
            self.others / self.secs * 100.0
        )
    }
}

/// Runs `f` and measures the CPU both sides used meanwhile.
async fn measured<T>(proxy: &Proxy, f: impl std::future::Future<Output = T>) -> (T, Load) {
    let me = std::process::id();
    let pid = proxy.pid();
    let (p0, g0, m0) = (
        pid.map(Cpu::of).unwrap_or_default(),
        Cpu::of(me),
        machine_busy(),
    );
    let started = Instant::now();
    let out = f.await;
    let secs = started.elapsed().as_secs_f64();
    let (p1, g1, m1) = (
        pid.map(Cpu::of).unwrap_or_default(),
        Cpu::of(me),
        machine_busy(),
    );
    let (proxy, generator) = (p1.since(p0), g1.since(g0));
    (
        out,
        Load {
            proxy,
            generator,
            others: (m1 - m0 - proxy.total() - generator.total()).max(0.0),
            secs,
        },
    )
}

/// (a), (b), (d): short connections, each replaying a real ClientHello to
/// a backend that answers 3 bytes and closes.
#[derive(Debug, Clone)]
pub struct Connections {
    pub per_sec: f64,
    /// Proxy CPU per connection, microseconds (user, sys).
    pub cpu_us: Cpu,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Every connect-to-first-byte latency, microseconds, sorted.
    pub latencies_us: Vec<u64>,
    pub load: Load,
}

pub async fn connections(proxy: &Proxy, run: Duration) -> Connections {
    let until = Instant::now() + run;
    let work = async {
        let mut workers = Vec::new();
        for _ in 0..CONCURRENCY {
            let addr = proxy.addr;
            workers.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < until {
                    let t = Instant::now();
                    let Ok(mut s) = TcpStream::connect(addr).await else {
                        continue;
                    };
                    let _ = s.set_nodelay(true);
                    if s.write_all(CURL_HELLO).await.is_err() {
                        continue;
                    }
                    let mut buf = [0u8; 16];
                    if matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for w in workers {
            lat.extend(w.await.expect("worker"));
        }
        lat
    };
    let (mut lat, load) = measured(proxy, work).await;
    lat.sort_unstable();
    let n = lat.len().max(1) as f64;
    Connections {
        per_sec: n / load.secs,
        cpu_us: Cpu {
            user: load.proxy.user * 1e6 / n,
            sys: load.proxy.sys * 1e6 / n,
        },
        p50_us: percentile(&lat, 50.0) as f64,
        p99_us: percentile(&lat, 99.0) as f64,
        latencies_us: lat,
        load,
    }
}

/// (c): GB/s through `tunnels` concurrent tunnels to the sink, each
/// writing 256 KiB at a time for `run`, and the proxy's CPU meanwhile.
pub async fn bulk(proxy: &Proxy, tunnels: usize, run: Duration) -> Bulk {
    let moved = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + run;
    let work = async {
        let mut ws = Vec::new();
        for _ in 0..tunnels {
            let (addr, moved) = (proxy.addr, moved.clone());
            ws.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.expect("connect for bulk");
                s.write_all(&bulk_hello()).await.expect("hello");
                let chunk = vec![0x5au8; 256 * 1024];
                while Instant::now() < until {
                    s.write_all(&chunk).await.expect("bulk write");
                    moved.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            }));
        }
        for w in ws {
            w.await.expect("bulk worker");
        }
    };
    let ((), load) = measured(proxy, work).await;
    let gb = moved.load(Ordering::Relaxed) as f64 / 1e9;
    Bulk {
        gbps: gb / load.secs,
        cpu_s_per_gb: load.proxy.total() / gb,
        load,
    }
}

/// What a bulk measurement moved and what it cost the proxy.
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    pub gbps: f64,
    /// Proxy CPU seconds (user + sys) per GB moved (0 with no proxy).
    pub cpu_s_per_gb: f64,
    pub load: Load,
}
