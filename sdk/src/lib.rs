//! The Drover SDK: write a framework (a scheduler) against a Drover cluster.
//!
//! Two forms, one machinery. In the trait form a framework implements [`Scheduler`] and
//! hands it to [`run`] with a [`SchedulerConfig`]; callbacks talk back through a
//! [`Driver`]. In the stream form, `let (driver, mut events) = subscribe(config)` gives the
//! [`Driver`] at once and [`Events`], a `futures::Stream` of [`Event`]s, and the framework
//! is a plain loop over them (see [`events`] for an example); `run` is that loop. Either
//! way the SDK finds the leading master (following NotLeader redirects), subscribes,
//! delivers events one at a time, acknowledges task updates, watches heartbeats and
//! resubscribes with the same framework id after any failure.
//!
//! Module map:
//! - [`config`]: [`SchedulerConfig`] and its builder; master-list parsing (`HOST:PORT,…`,
//!   default from `DROVER_MASTER`); failover timeout (never zero), capabilities, policies.
//! - [`events`]: [`subscribe`], [`Events`] and [`Event`], the stream form, and the
//!   machinery behind both forms: leader following, subscription, heartbeats,
//!   acknowledgements, reconnection with backoff, implicit reconciliation.
//! - [`scheduler`]: the [`Scheduler`] trait, one async callback per event.
//! - [`driver`]: [`Driver`], the cloneable handle whose methods are the scheduler calls
//!   (accept, launch, launch_group, decline, revive, suppress, kill, acknowledge,
//!   reconcile, teardown, stop); it exists before the first subscription.
//! - [`runner`]: [`run`], the trait form: a loop over [`subscribe`]'s events calling the
//!   [`Scheduler`]'s callbacks; [`RunOutcome`].
//! - [`offers`]: [`TaskRequest`] (what one task needs) and [`OfferPacker`] (many tasks per
//!   offer, never overcommitted), plus [`offers::closest_offer`] for "nothing fits"
//!   messages.
//! - [`task`]: [`TaskBuilder`] for `TaskInfo`s (shell or argv command, env, resources,
//!   agent, kill policy, labels, checks and health checks) and [`CheckBuilder`].
//! - [`executor`]: custom executors: the [`Executor`] trait, [`run_executor`] and the
//!   [`ExecutorDriver`] handle; [`executor::custom_executor`] for schedulers.
//! - [`task_group`]: [`DefaultExecutor`], the executor of a task group launched with
//!   [`Driver::launch_group`].
//! - [`files`]: [`AgentFiles`], reading and following ([`FileFollower`]) the files
//!   (`stdout`, `stderr`) of a task's or a custom executor's sandbox ([`Sandbox`]) on an
//!   agent.
//! - [`error`]: [`SdkError`], the one error type.
//! - `connection` (private): one subscription attempt and its stream reader. Which master
//!   to try next, the redirect limit and the backoff are `drover_proto::leader`'s, shared
//!   with the agent and the CLI.
//!
//! The protocol crate is re-exported as [`proto`] (ids, [`proto::Resources`],
//! [`proto::states`], generated messages in [`proto::pb`]), so a framework needs no other
//! Drover dependency.
//!
//! # A complete framework
//!
//! Runs `N` copies of a command, counts each FINISHED task once, and tears the framework
//! down when all are done (a real framework would also retry failures; see `drover-batch`).
//!
//! ```no_run
//! use std::collections::{HashSet, VecDeque};
//!
//! use drover_sdk::proto::{pb, states, TaskId};
//! use drover_sdk::{async_trait, run, Driver, OfferPacker, Scheduler, SchedulerConfig};
//! use drover_sdk::{TaskBuilder, TaskRequest};
//!
//! struct Copies {
//!     pending: VecDeque<usize>,
//!     finished: HashSet<TaskId>,
//!     total: usize,
//! }
//!
//! #[async_trait]
//! impl Scheduler for Copies {
//!     async fn offers(&mut self, driver: &Driver, offers: Vec<pb::Offer>) {
//!         let packing = OfferPacker::new().pack(
//!             offers,
//!             &mut self.pending,
//!             |_| TaskRequest::new(0.1, 32.0),
//!             |i, offer, resources| {
//!                 TaskBuilder::new(format!("hello-{i}"))
//!                     .shell("echo hello from copy $INDEX")
//!                     .env("INDEX", i.to_string())
//!                     .offer(offer)
//!                     .resources(&resources)
//!                     .build()
//!             },
//!         );
//!         for (offer_id, tasks) in packing.launches {
//!             if let Err(e) = driver.launch(vec![offer_id], tasks).await {
//!                 eprintln!("launch failed: {e}"); // a real framework re-queues them
//!             }
//!         }
//!         let _ = driver.decline(packing.unused, Some(30.0)).await;
//!         if self.pending.is_empty() {
//!             let _ = driver.suppress().await; // stop offers: nothing left to place
//!         }
//!     }
//!
//!     async fn update(&mut self, driver: &Driver, status: pb::TaskStatus) {
//!         let task_id = status.task_id.clone().unwrap_or_default();
//!         println!("{task_id} is {}", states::name(status.state()));
//!         // A set, not a counter: an update may be delivered twice.
//!         if status.state() == pb::TaskState::TaskFinished && self.finished.insert(task_id) {
//!             if self.finished.len() == self.total {
//!                 let _ = driver.teardown().await; // ends `run`
//!             }
//!         }
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), drover_sdk::SdkError> {
//!     let config = SchedulerConfig::builder("hello").build()?; // masters from DROVER_MASTER
//!     let copies = Copies { pending: (0..5).collect(), finished: HashSet::new(), total: 5 };
//!     let outcome = run(config, copies).await?;
//!     println!("done: {outcome:?}");
//!     Ok(())
//! }
//! ```

#![deny(missing_docs)]

pub mod config;
mod connection;
pub mod driver;
pub mod error;
pub mod events;
pub mod executor;
pub mod files;
pub mod offers;
pub mod runner;
pub mod scheduler;
pub mod task;
pub mod task_group;

/// The protocol crate: typed ids, [`proto::Resources`], [`proto::states`], the generated
/// messages in [`proto::pb`] and the NotLeader helpers in [`proto::leader`].
pub use drover_proto as proto;

/// The attribute for implementing [`Scheduler`] (re-exported so frameworks need not
/// depend on `async-trait` themselves).
pub use async_trait::async_trait;

/// The extension trait whose `next()` reads [`Events`] (re-exported so frameworks need not
/// depend on `futures` themselves).
pub use futures::StreamExt;

pub use config::{parse_masters, BackoffConfig, SchedulerConfig, SchedulerConfigBuilder};
pub use driver::Driver;
pub use error::SdkError;
pub use events::{subscribe, Event, Events};
pub use executor::{run_executor, Executor, ExecutorDriver};
pub use files::{AgentFiles, FileFollower, Sandbox};
pub use offers::{OfferPacker, Packing, TaskRequest};
pub use runner::{run, RunOutcome};
pub use scheduler::Scheduler;
pub use task::{CheckBuilder, TaskBuilder};
pub use task_group::DefaultExecutor;
