//! Harness for Drover's multi-process integration tests (the tests are in `tests/`).
//!
//! Module map:
//! - [`cluster`](Cluster): starts real `drover-master` and `drover-agent` processes on
//!   loopback ports in a temporary folder (one master, or several in one Raft group with
//!   [`Cluster::start_ha`]), kills (`SIGKILL`), stops (`SIGSTOP`) and restarts them, and on
//!   drop kills every process it started, including task supervisors that outlive agents.
//!   [`Cluster::prepare`] and [`Cluster::prepare_ha`] give the masters before they start,
//!   for a filled data folder or one master's own flags ([`Cluster::set_master_flags`]).
//!   Masters in `cluster/mod.rs`, agents in `cluster/agents.rs`, what tests read (tasks,
//!   metrics, [`Cluster::operator`] calls, logs) and cleanup in `cluster/inspect.rs`.
//! - [`hosts`](Hosts): network namespaces, one per master, for partition tests.
//! - [`framework`](Framework): runs the test framework binary (`drover-testfw`, in this
//!   crate) and reads the JSON [`Report`] it writes.
//! - [`master_tool`]: the offline `drover-master` subcommands (`backup`, `restore`).
//! - [`raw`]: a framework spoken to over raw gRPC (no SDK), for tests of the protocol.
//! - From `drover-testkit`, re-exported: [`wait_until`] (a bounded poll loop: bounded in
//!   count and time; it never asserts on durations, only that the outcome arrives before a
//!   generous deadline) and [`free_port`] (ports outside the ephemeral range); daemons'
//!   logs are set up with `drover_testkit::daemon::log_to`, as `drover local` does.
//!
//! The binaries are found next to the test executable's `deps/` folder ([`bin_dir`]), so
//! `cargo build --workspace --bins` must run before the tests (the README's test command
//! does).

mod cluster;
mod framework;
mod hosts;
pub mod raw;

pub use cluster::{connect, health, http_get, metric, Cluster, Timing};
pub use drover_testkit::{free_port, wait_until};
pub use framework::{finished_jobs, Framework, Report};
pub use hosts::Hosts;

/// Folder holding the workspace's binaries (`drover-master` and `drover-agent` must be
/// built).
pub fn bin_dir() -> std::path::PathBuf {
    drover_testkit::bin_dir(&["drover-master", "drover-agent"])
}

/// Runs a `drover-master` subcommand that works offline or against running masters
/// (`backup`, `restore`) to its end; panics with its stderr unless it succeeds, and
/// returns its stdout.
pub fn master_tool(args: &[&str]) -> String {
    let out = std::process::Command::new(bin_dir().join("drover-master"))
        .args(args)
        .output()
        .expect("run drover-master");
    assert!(
        out.status.success(),
        "drover-master {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
