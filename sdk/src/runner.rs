//! [`run`]: the trait form of the SDK, a loop over [`crate::subscribe`]'s events that hands
//! each to the matching [`Scheduler`] callback, one at a time.

use futures::StreamExt as _;

use crate::error::SdkError;
use crate::events::{subscribe, Event};
use crate::scheduler::Scheduler;
use crate::SchedulerConfig;

/// How [`run`] (or the event stream, in [`Event::Ended`]) ended without error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// [`crate::Driver::stop`] was called. The framework is still registered: its tasks
    /// keep running for the failover timeout, waiting for a scheduler with the same
    /// framework id.
    Stopped,
    /// [`crate::Driver::teardown`] succeeded: the master removed the framework and its
    /// tasks.
    TornDown,
}

/// Runs `scheduler` against the cluster until it stops, tears down, or fails.
///
/// Connects to the first reachable master of the configuration, following NotLeader
/// redirects to the leader, and subscribes. After any failure (stream closed or broken,
/// three heartbeat intervals without an event, a call answered NotLeader) it calls
/// [`Scheduler::disconnected`], then resubscribes with the same framework id, trying every
/// master with exponential backoff and jitter, and calls [`Scheduler::subscribed`] with
/// `resubscribed = true`.
///
/// Errors: [`SdkError::Subscribe`] when a master refuses the subscription for good,
/// [`SdkError::NoMaster`] when the configured reconnect timeout passes, and
/// [`SdkError::Framework`] after an ERROR event.
///
/// This is a loop over the events of [`crate::subscribe`]; write that loop yourself when
/// the framework has more to wait for than events (timers, signals, other streams).
pub async fn run<S: Scheduler>(
    config: SchedulerConfig,
    mut scheduler: S,
) -> Result<RunOutcome, SdkError> {
    let (driver, mut events) = subscribe(config);
    let d = &driver;
    while let Some(event) = events.next().await {
        match event {
            Event::Subscribed {
                framework_id,
                resubscribed,
            } => scheduler.subscribed(d, framework_id, resubscribed).await,
            Event::Offers(offers) => scheduler.offers(d, offers).await,
            Event::Rescind(offer_id) => scheduler.rescinded(d, offer_id).await,
            Event::Update(status) => scheduler.update(d, status).await,
            Event::Message {
                agent_id,
                executor_id,
                data,
            } => scheduler.message(d, agent_id, executor_id, data).await,
            Event::Failure {
                agent_id,
                executor_id,
                status,
            } => scheduler.failure(d, agent_id, executor_id, status).await,
            Event::Error(message) => scheduler.error(d, message).await,
            Event::Disconnected => scheduler.disconnected(d).await,
            Event::Ended(result) => return result,
        }
    }
    // The stream always ends with `Ended`; a stream without it was dropped by a stop.
    Ok(RunOutcome::Stopped)
}
