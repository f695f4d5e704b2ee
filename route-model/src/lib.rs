//! The edge's routing domain, shared by `edge` and `edge-agent`.
//!
//! What a route *is* (ADR 0008), which ports an env may expose, how
//! conflicting routes are resolved, and the compiled [`RouteTable`] that
//! answers `(local IP, port, SNI) -> Forward | Reject` on the hot path.
//! No I/O, no clock, no tokio: everything here is a pure value, so the data
//! plane and the agent compile byte-identical tables from the same input.
//!
//! # Layout
//! - [`name`]: hostnames and `*.example.com` patterns, normalised once.
//! - [`spec`]: the plain-data shapes read from `edge.toml` or event payloads.
//! - [`env`], [`instance`], [`route`]: the validated domain types.
//! - [`policy`]: ADR 0008 port policy and the overlay backend allowlist.
//! - [`table`]: compiling specs into an immutable [`RouteTable`] and looking up.
//! - [`error`]: typed validation errors that name the route, env or instance.
#![forbid(unsafe_code)]

pub mod env;
pub mod error;
pub mod event;
pub mod instance;
pub mod name;
pub mod policy;
pub mod route;
pub mod spec;
pub mod state;
pub mod table;

pub use env::{Env, EnvId};
pub use error::{EnvError, InstanceError, RouteError, SpecError};
pub use event::{Event, EventBatch, EventError, EventKind};
pub use instance::Instance;
pub use name::{HostPattern, Hostname, NameError};
pub use policy::{OverlayPolicy, PortPolicy, PortSet};
pub use route::{HealthSource, Protocol, Route};
pub use spec::{EnvSpec, InstanceSpec, RouteSpec, RoutingSpec};
pub use state::{Applied, Gap, HostnameMove, State};
pub use table::{compile, Compiled, Decision, Listener, RejectReason, RouteTable, TableRoute};
