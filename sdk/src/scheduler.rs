//! The [`Scheduler`] trait: what a framework implements.

use async_trait::async_trait;
use drover_proto::pb;
use drover_proto::{AgentId, ExecutorId, FrameworkId, OfferId};

use crate::driver::Driver;

/// A framework's scheduler: the callbacks [`crate::run`] invokes for each event from the
/// leading master.
///
/// Events are delivered one at a time and in order: the next callback starts only after the
/// previous one returned, so a scheduler needs no locking of its own. A callback may await
/// calls on the [`Driver`] (they are separate RPCs), but should not wait for later events.
///
/// Only [`Scheduler::offers`] and [`Scheduler::update`] must be written; every other
/// callback does nothing by default.
#[async_trait]
pub trait Scheduler: Send + 'static {
    /// The framework is subscribed. `resubscribed` is true when it reuses an existing
    /// framework id: after a lost connection, a master failover, or a scheduler restart
    /// configured with [`crate::SchedulerConfigBuilder::framework_id`]. After a
    /// resubscription the driver (by default) also asks for implicit reconciliation, so
    /// UPDATE events describing the tasks' current states follow.
    async fn subscribed(
        &mut self,
        _driver: &Driver,
        _framework_id: FrameworkId,
        _resubscribed: bool,
    ) {
    }

    /// New resource offers. Accept them ([`Driver::launch`], [`Driver::accept`]) or
    /// decline them ([`Driver::decline`]); an offer held without an answer keeps the
    /// resources from other frameworks until the master rescinds it.
    async fn offers(&mut self, driver: &Driver, offers: Vec<pb::Offer>);

    /// The master withdrew an offer (its agent went away, or it timed out). Launches on it
    /// will fail; nothing else to do.
    async fn rescinded(&mut self, _driver: &Driver, _offer_id: OfferId) {}

    /// A task changed state. Unless auto-acknowledgement is off, the driver acknowledges
    /// the update (when it carries a uuid) right after this returns, so an update is seen
    /// again (after a failover, say) only when this callback did not complete. Frameworks
    /// must still tolerate duplicates: reconciliation answers repeat known states.
    async fn update(&mut self, driver: &Driver, status: pb::TaskStatus);

    /// A custom executor sent the framework a message.
    async fn message(
        &mut self,
        _driver: &Driver,
        _agent_id: AgentId,
        _executor_id: ExecutorId,
        _data: Vec<u8>,
    ) {
    }

    /// An agent was lost (no `executor_id`) or a custom executor exited with `status`.
    async fn failure(
        &mut self,
        _driver: &Driver,
        _agent_id: AgentId,
        _executor_id: Option<ExecutorId>,
        _status: Option<i32>,
    ) {
    }

    /// The master reported an unrecoverable error for this framework (for example, it was
    /// removed after its failover timeout). [`crate::run`] then returns
    /// [`crate::SdkError::Framework`].
    async fn error(&mut self, _driver: &Driver, _message: String) {}

    /// The event stream was lost. The driver is already reconnecting; calls fail with
    /// [`crate::SdkError::Disconnected`] until the next `subscribed`. Offers received
    /// before are likely invalid now.
    async fn disconnected(&mut self, _driver: &Driver) {}
}
