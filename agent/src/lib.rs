//! The Drover agent: runs tasks on one machine for the Drover masters.
//!
//! Module map:
//! - [`config`]: the `drover-agent` flags (clap) and their validation into `Settings`.
//! - [`resources`]: resource detection (cpus, mem, disk, ports) and `--resources` overrides.
//! - [`agent`]: the [`Agent`] itself: binding, recovery, and the agent loop that owns all
//!   state (tasks, status update streams, master session) and handles events in order.
//! - [`master_link`]: the one bidirectional stream to the leading master: registration,
//!   pings, leader hints, term fencing, reconnection with backoff.
//! - [`status_updates`]: the status update manager, a pure core (ordered per-task queues,
//!   retries with backoff, acknowledgements) plus its checkpointing shell.
//! - [`containerizer`]: the `Containerizer` trait, the registry that picks one per task
//!   (`Containerizers`), and the implementations: `process` (plain processes), `linux`
//!   (namespaces, cgroups and a PID-1 init per task; `containerizer::linux`) and `docker`
//!   (the Docker Engine API; `containerizer::docker`).
//! - [`supervisor`]: the per-task supervisor process (this binary re-executed with a hidden
//!   argument) that runs the command (for linux containers: starts the container's init,
//!   this binary again), outlives the agent and records the exit status.
//! - [`checks`]: command, HTTP and TCP checks of running tasks (a pure scheduler, the
//!   runners, and a helper process that enters a container's namespaces).
//! - [`files_api`]: sandbox reads and listings that never leave the sandbox (`openat` with
//!   `O_NOFOLLOW`, component by component).
//! - [`images`]: the local image store (OCI layouts and `docker save` archives imported,
//!   verified and unpacked into immutable root filesystems under `<work_dir>/images`), the
//!   per-container overlay root filesystems on top, and user lookup in an image.
//! - [`disk`]: sandbox disk usage measured (never following symlinks) and held to the
//!   task's `disk` resource, and `stdout`/`stderr` rotation; [`gc`]: sandboxes and task
//!   records removed a while after their terminal update was acknowledged; [`users`]:
//!   which user a task runs as; [`sandbox_flags`]: the flags of all three.
//! - [`api`]: the gRPC services on `--listen` (`AgentApi`, and `Executor`, unimplemented).
//! - [`metrics`]: counters and gauges (a `prometheus-client` registry) and the HTTP listener
//!   serving them as Prometheus text, with `/health` (axum routes on `drover_http`).
//! - [`journal`]: the checkpoint log, group-committed (one sync per batch of events).
//! - [`layout`]: where everything lives under `--work-dir`; [`fsutil`]: durable writes;
//!   [`procfs`]: process identity (pid + start time) and pid-reuse-proof signals;
//!   [`error`]: the crate's error enum and its mapping to gRPC statuses.
//!
//! Tests drive the agent through [`Agent::bind`] / [`Agent::run`] (or [`run`]) with a
//! `Config` built by [`Config::from_args`] and any shutdown future.

pub mod agent;
pub mod api;
pub mod checks;
pub mod config;
pub mod containerizer;
pub mod disk;
pub mod error;
pub mod files_api;
pub mod fsutil;
pub mod gc;
pub mod images;
pub mod journal;
pub mod layout;
pub mod master_link;
pub mod metrics;
pub mod procfs;
pub mod resources;
pub mod sandbox_flags;
pub mod status_updates;
pub mod supervisor;
pub mod users;

pub use agent::{run, Agent};
pub use config::{Config, Settings};
pub use error::AgentError;

/// Test binaries have no `main` of ours, yet the process containerizer re-executes the
/// running binary (`/proc/self/exe`) as the supervisor. This constructor runs before the
/// test harness and turns a test binary started with `__supervise` into a supervisor
/// (and with `__container_init` into a container's init), so tests exercise exactly the
/// production path.
#[cfg(test)]
#[used]
#[link_section = ".init_array"]
static SUPERVISOR_IN_TEST_BINARY: extern "C" fn() = {
    extern "C" fn hook() {
        if let Some(code) = supervisor::dispatch_from_proc_cmdline() {
            std::process::exit(code);
        }
    }
    hook
};

#[cfg(test)]
mod e2e_tests;
