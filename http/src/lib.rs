//! The HTTP listener that each Drover daemon runs beside its gRPC API (`--http-listen`):
//! Prometheus metrics, health and, on the master, its state as JSON.
//!
//! The routes are [`axum`] routers owned by each daemon; this crate gives both daemons the
//! same stack underneath, so that what later sits on it (TLS, authentication, server-sent
//! events, a web UI) is added once.
//!
//! Module map:
//! - [`serve`](mod@serve): the serving loop. It takes an already bound listener and a shutdown
//!   future, speaks HTTP/1.1 through hyper within its limits (time for a request head and
//!   for writing its answer, head size, connections at once), and drains open connections
//!   on shutdown.
//! - [`answers`]: the answers every listener shares: `404` naming the paths served, `405`
//!   for a method other than GET or HEAD.
//! - [`prometheus`]: a `prometheus-client` registry rendered in the Prometheus text format
//!   (version 0.0.4) and the `/metrics` response carrying it.

pub mod answers;
pub mod prometheus;
pub mod serve;

pub use answers::with_fallbacks;
pub use serve::serve;
