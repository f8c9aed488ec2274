//! What Drover's tests keep needing, written once: bounded waits, free loopback ports,
//! the workspace's binaries, a fake master for agent tests, and daemon processes.
//!
//! Module map:
//! - [`wait`]: [`wait_until`] (blocking) and [`eventually`] (async): poll until a
//!   condition holds, bounded in time and in the number of polls, panicking with what was
//!   awaited. They never assert on durations, only that the outcome arrives before a
//!   generous deadline.
//! - [`ports`]: [`free_port`], loopback ports for daemons that a test starts (and
//!   restarts) itself, taken from 10000..30000, outside the kernel's ephemeral range.
//! - [`bins`]: [`bin_dir`], the folder holding the workspace's binaries
//!   (`cargo build --workspace --bins` puts them next to the test executables).
//! - `fake_master` (with the `fakes` feature, like `fake_operator`): `FakeMaster`, a real
//!   tonic server speaking `AgentMaster.Session` that registers an agent, answers its pings and hands the test everything else; and
//!   `fake_master::serve_follower`, a master answering `NotLeader`.
//! - `fake_operator`: `FakeOperator`, a fake master's operator API for the CLI's tests:
//!   a leader reporting fixed agents, a follower, or a leader still taking office.
//! - [`daemon`]: child processes with their output appended to a log, dying with their
//!   parent, stopped with SIGTERM then SIGKILL, and the end of their log for a failure
//!   report. `drover local` runs its cluster with it; the multi-process tests start
//!   their masters and agents through its [`daemon::log_to`].
//!
//! # Where this crate sits
//!
//! The kit links no master, agent or CLI code: tests drive the real binaries as
//! processes, and the fake master speaks the wire protocol from `drover-proto` alone. So
//! it depends on `drover-proto` only, and every crate may use it without a cycle: the
//! agent's own unit tests and the SDK's and CLI's tests take it as a dev-dependency, and
//! the `drover` CLI takes it as a normal dependency for [`daemon`], which `drover local`
//! and the tests share. (A later kit that runs a master in process would go in a crate of
//! its own above master and agent, leaving this one where it is.)

pub mod bins;
pub mod daemon;
#[cfg(feature = "fakes")]
pub mod fake_master;
#[cfg(feature = "fakes")]
pub mod fake_operator;
pub mod ports;
pub mod wait;

pub use bins::bin_dir;
#[cfg(feature = "fakes")]
pub use fake_master::FakeMaster;
#[cfg(feature = "fakes")]
pub use fake_operator::FakeOperator;
pub use ports::free_port;
pub use wait::{eventually, wait_until};
