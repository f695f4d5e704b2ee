//! The memory harness's parts (used by `benches/benches/memory.rs`): the
//! proxies measured, the connections held open through them, the route
//! tables and `/proc` readings. What each figure means and how it is
//! measured is in `benches/benches/memory.rs`.

pub mod clients;
pub mod proxies;
pub mod rss;
pub mod tables;
