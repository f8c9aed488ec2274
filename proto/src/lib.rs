//! Drover's wire protocol and shared vocabulary.
//!
//! Module map:
//! - [`pb`]: the generated prost messages and tonic services of `proto/drover/v1/*.proto`
//!   (scheduler, agent↔master, agent API, executor, operator and Raft peer services, and
//!   the test-only `RegistryTesting`).
//! - [`ids`]: typed ids (`FrameworkId`, `AgentId`, `OfferId`, `TaskId`, `ExecutorId`) with
//!   constructors and `Display`, so that handlers never pass bare strings around, and
//!   `TaskKey` (framework id, task id), the one task key of master and agent.
//! - [`resources`]: the resource vocabulary (scalars, ranges, sets) with exact fixed-point
//!   arithmetic: add, subtract, contains, split and validation.
//! - [`states`]: task-state helpers (terminal or not, names for people).
//! - [`limits`]: the message-size limit of every gRPC link (both ends use the same
//!   constant) and [`limits::Limited`], the server wrapper answering RESOURCE_EXHAUSTED
//!   for a request over its limit.
//! - [`leader`]: leader following: the `NotLeader` error that followers answer with, and
//!   the rounds, redirect limit and backoff every client of the masters uses to find the leader.

// Every public item documents itself: this crate is the vocabulary framework authors read.
#![deny(missing_docs)]

pub mod ids;
pub mod leader;
pub mod limits;
pub mod resources;
pub mod states;

/// Generated protocol types and services (`drover.v1`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("drover.v1");
}

pub use ids::{AgentId, ExecutorId, FrameworkId, OfferId, TaskId, TaskKey};
pub use resources::{ResourceError, Resources};

/// Largest `data` of a message between a framework and one of its executors (either way).
pub const MAX_EXECUTOR_MESSAGE_BYTES: usize = 64 * 1024;

/// Seconds since the Unix epoch, as carried in `TaskStatus.timestamp`.
pub fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
