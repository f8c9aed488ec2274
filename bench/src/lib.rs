//! Shared pieces of Drover's benchmarks.
//!
//! Module map:
//! - [`fleet`]: a simulated agent fleet (thousands of agents speaking the real agent
//!   protocol from one process), used by `sim-agents`, `failover-bench` and
//!   `memory-bench`.
//! - [`filler`]: a framework that keeps a number of long-running tasks running.
//! - [`procs`]: real master processes (three in one Raft group) started from the built
//!   binaries, killed and restarted by the benchmarks.
//! - [`stats`]: percentiles (nearest rank).
//!
//! The binaries: `alloc-bench` (allocator cycle), `task-bench` (end-to-end tasks through
//! a running cluster), `sim-agents` (a standalone simulated fleet), `failover-bench`
//! (leader kill to first offer), `registry-bench` (replicated writes, Drover beside etcd),
//! `memory-bench` (master memory per agent and per task), `agent-memory-bench` (an
//! agent's memory idle and with running tasks), `docker-bench` (Docker containers through
//! Drover beside `docker run`).

pub mod filler;
pub mod fleet;
pub mod procs;
pub mod stats;
