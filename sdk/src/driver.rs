//! The [`Driver`]: a cheap, cloneable handle through which a scheduler makes calls.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use drover_proto::leader::leader_hint;
use drover_proto::pb::{self, scheduler_client::SchedulerClient};
use drover_proto::{AgentId, ExecutorId, FrameworkId, OfferId, TaskId};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::config::SchedulerConfig;
use crate::error::SdkError;

/// What the driver asks the event stream ([`crate::Events`]) to do.
#[derive(Debug)]
pub(crate) enum Control {
    /// End the stream without tearing the framework down.
    Stop,
    /// The framework was torn down: end the stream.
    TornDown,
    /// A call on stream `stream_id` was answered NotLeader: drop that stream and
    /// resubscribe, trying `leader` first.
    Resubscribe { stream_id: String, leader: String },
}

/// The live subscription calls go through.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub(crate) client: SchedulerClient<Channel>,
    pub(crate) stream_id: String,
    pub(crate) master: String,
}

#[derive(Debug, Default)]
struct State {
    framework_id: Option<FrameworkId>,
    session: Option<Session>,
    suppressed: bool,
    tearing_down: bool,
    finished: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    control: mpsc::UnboundedSender<Control>,
    role: String,
    call_timeout: Duration,
}

/// The handle a scheduler uses to talk to the leading master.
///
/// Every method is one unary RPC carrying the framework id and the current stream id. A
/// call made before the first subscription or while the driver is reconnecting is not
/// queued: it fails at once with [`SdkError::Disconnected`]. A call answered NotLeader
/// fails with [`SdkError::NotLeader`] and makes the driver resubscribe to the named
/// leader. Once the event stream has ended (or was dropped) every call fails with
/// [`SdkError::Stopped`]. Clones share one state and the handle is `Send + Sync`, so a
/// clone may be moved into a spawned task (a timer, a signal handler) and used from there;
/// [`Driver::stop`] and [`Driver::teardown`] work from anywhere, at any time.
#[derive(Clone, Debug)]
pub struct Driver {
    shared: Arc<Shared>,
}

impl Driver {
    pub(crate) fn new(config: &SchedulerConfig, control: mpsc::UnboundedSender<Control>) -> Driver {
        Driver {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    framework_id: config.framework.id.clone(),
                    ..State::default()
                }),
                control,
                role: config.framework.role.clone(),
                call_timeout: config.call_timeout,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_session(&self, session: Session, framework_id: FrameworkId) {
        let mut s = self.state();
        s.framework_id = Some(framework_id);
        s.session = Some(session);
    }

    pub(crate) fn clear_session(&self) {
        self.state().session = None;
    }

    /// Marks the driver as ended: every later call fails with [`SdkError::Stopped`].
    pub(crate) fn finish(&self) {
        let mut s = self.state();
        s.session = None;
        s.finished = true;
    }

    /// Roles to report as suppressed when (re)subscribing, so that a new leader, whose
    /// allocator starts from scratch, keeps honouring an earlier `suppress`.
    pub(crate) fn suppressed_roles(&self) -> Vec<String> {
        if self.state().suppressed {
            vec![self.shared.role.clone()]
        } else {
            Vec::new()
        }
    }

    /// True while a teardown call is in flight. The master may close the event stream
    /// before its answer arrives; that loss is the teardown's doing, not a failure.
    pub(crate) fn is_tearing_down(&self) -> bool {
        self.state().tearing_down
    }

    /// The framework id, once the first subscription succeeded (or the one configured).
    pub fn framework_id(&self) -> Option<FrameworkId> {
        self.state().framework_id.clone()
    }

    /// True while the driver holds a live subscription.
    pub fn is_connected(&self) -> bool {
        self.state().session.is_some()
    }

    /// The address of the master currently subscribed to.
    pub fn master(&self) -> Option<String> {
        self.state().session.as_ref().map(|s| s.master.clone())
    }

    /// True after a successful [`Driver::suppress`] and until the next successful
    /// [`Driver::revive`].
    pub fn is_suppressed(&self) -> bool {
        self.state().suppressed
    }

    fn current(&self) -> Result<(SchedulerClient<Channel>, pb::CallHeader, String), SdkError> {
        let s = self.state();
        if s.finished {
            return Err(SdkError::Stopped);
        }
        let session = s.session.as_ref().ok_or(SdkError::Disconnected)?;
        let header = pb::CallHeader {
            framework_id: s.framework_id.clone(),
            stream_id: session.stream_id.clone(),
        };
        Ok((session.client.clone(), header, session.stream_id.clone()))
    }

    async fn call<F, Fut>(&self, call: &'static str, f: F) -> Result<(), SdkError>
    where
        F: FnOnce(SchedulerClient<Channel>, pb::CallHeader) -> Fut,
        Fut: Future<Output = Result<tonic::Response<pb::CallResponse>, tonic::Status>>,
    {
        let (client, header, stream_id) = self.current()?;
        let status = match tokio::time::timeout(self.shared.call_timeout, f(client, header)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(status)) => status,
            Err(_) => tonic::Status::deadline_exceeded(format!(
                "no answer within {:?}",
                self.shared.call_timeout
            )),
        };
        if let Some(leader) = leader_hint(&status) {
            // The event loop may have ended already; then there is nothing to resubscribe.
            let _ = self.shared.control.send(Control::Resubscribe {
                stream_id,
                leader: leader.clone(),
            });
            return Err(SdkError::NotLeader {
                call,
                leader,
                status: Box::new(status),
            });
        }
        Err(SdkError::Call {
            call,
            status: Box::new(status),
        })
    }

    /// Accepts offers (all on one agent) and applies `operations` to their resources.
    /// Whatever the operations leave unused is declined with `filters`.
    pub async fn accept(
        &self,
        offer_ids: Vec<OfferId>,
        operations: Vec<pb::Operation>,
        filters: pb::Filters,
    ) -> Result<(), SdkError> {
        self.call("accept", |mut c, header| async move {
            c.accept(pb::AcceptCall {
                header: Some(header),
                offer_ids,
                operations,
                filters: Some(filters),
            })
            .await
        })
        .await
    }

    /// Launches `tasks` on the offers' resources (one LAUNCH operation). Launching no task
    /// declines the offers.
    pub async fn launch(
        &self,
        offer_ids: Vec<OfferId>,
        tasks: Vec<pb::TaskInfo>,
    ) -> Result<(), SdkError> {
        let operations = if tasks.is_empty() {
            Vec::new()
        } else {
            vec![pb::Operation {
                r#type: pb::operation::Type::Launch as i32,
                launch: Some(pb::operation::Launch { task_infos: tasks }),
                ..Default::default()
            }]
        };
        self.accept(offer_ids, operations, pb::Filters::default())
            .await
    }

    /// Launches `tasks` as one task group (a LAUNCH_GROUP operation) under `executor`,
    /// the agent's built-in default executor (see [`crate::DefaultExecutor`]): all of
    /// them or none. A group with an invalid task is refused whole (every task
    /// TASK_ERROR, REASON_TASK_GROUP_INVALID).
    pub async fn launch_group(
        &self,
        offer_ids: Vec<OfferId>,
        executor: pb::ExecutorInfo,
        tasks: Vec<pb::TaskInfo>,
    ) -> Result<(), SdkError> {
        let operations = vec![pb::Operation {
            r#type: pb::operation::Type::LaunchGroup as i32,
            launch_group: Some(pb::operation::LaunchGroup {
                executor: Some(executor),
                task_group: Some(pb::TaskGroupInfo { tasks }),
            }),
            ..Default::default()
        }];
        self.accept(offer_ids, operations, pb::Filters::default())
            .await
    }

    /// Declines offers; the master does not offer those resources to this framework again
    /// for `refuse_seconds` (the master's default, 5 s, when `None`). Declining nothing is
    /// a no-op that makes no call.
    pub async fn decline(
        &self,
        offer_ids: Vec<OfferId>,
        refuse_seconds: Option<f64>,
    ) -> Result<(), SdkError> {
        if offer_ids.is_empty() {
            return Ok(());
        }
        self.call("decline", |mut c, header| async move {
            c.decline(pb::DeclineCall {
                header: Some(header),
                offer_ids,
                filters: Some(pb::Filters { refuse_seconds }),
            })
            .await
        })
        .await
    }

    /// Asks for offers again (clears `suppress` and every decline filter).
    pub async fn revive(&self) -> Result<(), SdkError> {
        self.call("revive", |mut c, header| async move {
            c.revive(pb::ReviveCall {
                header: Some(header),
                roles: Vec::new(),
            })
            .await
        })
        .await?;
        self.state().suppressed = false;
        Ok(())
    }

    /// Stops offers until the next [`Driver::revive`]. The driver remembers it and tells a
    /// new leader when it resubscribes.
    pub async fn suppress(&self) -> Result<(), SdkError> {
        self.call("suppress", |mut c, header| async move {
            c.suppress(pb::SuppressCall {
                header: Some(header),
                roles: Vec::new(),
            })
            .await
        })
        .await?;
        self.state().suppressed = true;
        Ok(())
    }

    /// Kills a task (SIGTERM, then SIGKILL after its kill policy's grace period). Its
    /// final state arrives as an update. `agent_id` speeds the master up when known.
    pub async fn kill(&self, task_id: TaskId, agent_id: Option<AgentId>) -> Result<(), SdkError> {
        self.call("kill", |mut c, header| async move {
            c.kill(pb::KillCall {
                header: Some(header),
                task_id: Some(task_id),
                agent_id,
                kill_policy: None,
            })
            .await
        })
        .await
    }

    /// Acknowledges an update (needed only with auto-acknowledgement off). Until
    /// acknowledged, the agent keeps resending it and holds back the task's later updates.
    pub async fn acknowledge(
        &self,
        agent_id: AgentId,
        task_id: TaskId,
        uuid: Vec<u8>,
    ) -> Result<(), SdkError> {
        self.call("acknowledge", |mut c, header| async move {
            c.acknowledge(pb::AcknowledgeCall {
                header: Some(header),
                agent_id: Some(agent_id),
                task_id: Some(task_id),
                uuid,
            })
            .await
        })
        .await
    }

    /// Asks for the latest state of tasks, answered by UPDATE events without uuid. With an
    /// empty list (implicit reconciliation) the master reports every task it knows for the
    /// framework; a listed task it does not know comes back as UNKNOWN (or LOST).
    ///
    /// The answers travel on the event stream and are not acknowledged: if the stream is
    /// lost before they arrive (a master failover right after the call), they are lost
    /// too. Keep a task "uncertain" until an update for it arrives, and reconcile it again
    /// after every resubscription ([`crate::Scheduler::subscribed`]).
    pub async fn reconcile(&self, tasks: Vec<(TaskId, Option<AgentId>)>) -> Result<(), SdkError> {
        let tasks = tasks
            .into_iter()
            .map(|(task_id, agent_id)| pb::reconcile_call::Task {
                task_id: Some(task_id),
                agent_id,
            })
            .collect();
        self.call("reconcile", |mut c, header| async move {
            c.reconcile(pb::ReconcileCall {
                header: Some(header),
                tasks,
            })
            .await
        })
        .await
    }

    /// Sends `data` (at most 64 KiB) to one of the framework's custom executors on
    /// `agent_id`; its [`crate::executor::Executor::message`] receives it. Best effort,
    /// as in Mesos: delivered at most once, dropped if the executor is not subscribed.
    /// NOT_FOUND when no active task of this framework runs on that executor there,
    /// UNAVAILABLE while the agent is disconnected or has 256 messages queued already.
    /// Executors answer through
    /// [`crate::Scheduler::message`].
    pub async fn send_message(
        &self,
        agent_id: AgentId,
        executor_id: ExecutorId,
        data: Vec<u8>,
    ) -> Result<(), SdkError> {
        self.call("message", |mut c, header| async move {
            c.message(pb::MessageCall {
                header: Some(header),
                agent_id: Some(agent_id),
                executor_id: Some(executor_id),
                data,
            })
            .await
        })
        .await
    }

    /// Shuts one of the framework's executors down on `agent_id` (SHUTDOWN): a custom
    /// executor receives `shutdown` and must exit, and its tasks still running end
    /// TASK_KILLED; a task group's tasks are killed. NOT_FOUND when no active task of this
    /// framework runs on that executor there, UNAVAILABLE while the agent is disconnected.
    pub async fn shutdown_executor(
        &self,
        executor_id: ExecutorId,
        agent_id: AgentId,
    ) -> Result<(), SdkError> {
        self.call("shutdown", |mut c, header| async move {
            c.shutdown(pb::ShutdownCall {
                header: Some(header),
                executor_id: Some(executor_id),
                agent_id: Some(agent_id),
            })
            .await
        })
        .await
    }

    /// Removes the framework from the cluster: the master kills all its tasks and forgets
    /// it. On success the event stream ends with [`crate::Event::Ended`]`(Ok(TornDown))`
    /// before any further event ([`crate::run`] returns [`crate::RunOutcome::TornDown`]
    /// once the current callback returns).
    ///
    /// Before the first subscription of a framework without an id, no master knows the
    /// framework: there is nothing to remove, so no call is made, the stream ends the same
    /// way and this returns `Ok`. While reconnecting with a framework id it fails with
    /// [`SdkError::Disconnected`] like every call; try again after the next
    /// [`crate::Event::Subscribed`], or [`Driver::stop`].
    pub async fn teardown(&self) -> Result<(), SdkError> {
        {
            let mut s = self.state();
            if !s.finished && s.session.is_none() && s.framework_id.is_none() {
                let _ = self.shared.control.send(Control::TornDown);
                return Ok(());
            }
            s.tearing_down = true;
        }
        let result = self
            .call("teardown", |mut c, header| async move {
                c.teardown(pb::TeardownCall {
                    header: Some(header),
                })
                .await
            })
            .await;
        let mut s = self.state();
        s.tearing_down = false;
        result?;
        // Calls after a teardown can only fail; refuse them here with a clear error.
        s.session = None;
        let _ = self.shared.control.send(Control::TornDown);
        Ok(())
    }

    /// Ends the event stream with [`crate::Event::Ended`]`(Ok(Stopped))` before any
    /// further event ([`crate::run`] returns [`crate::RunOutcome::Stopped`] once the
    /// current callback returns), without tearing the framework down: the master keeps its
    /// tasks running for the failover timeout, and a scheduler subscribing with the same
    /// framework id takes them back. Works at any time; before the first subscription it
    /// abandons the attempts to subscribe.
    pub fn stop(&self) {
        let _ = self.shared.control.send(Control::Stop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn driver() -> (Driver, mpsc::UnboundedReceiver<Control>) {
        driver_with(None)
    }

    fn driver_with(id: Option<&str>) -> (Driver, mpsc::UnboundedReceiver<Control>) {
        let mut builder = SchedulerConfig::builder("t").masters(["127.0.0.1:1"]);
        if let Some(id) = id {
            builder = builder.framework_id(FrameworkId::new(id));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        (Driver::new(&builder.build().unwrap(), tx), rx)
    }

    #[tokio::test]
    async fn calls_fail_fast_while_disconnected_and_after_finish() {
        let (d, mut rx) = driver();
        assert!(!d.is_connected());
        assert!(matches!(d.revive().await, Err(SdkError::Disconnected)));
        // A framework with an id exists at the master: tearing it down needs a master.
        let (known, _known_rx) = driver_with(Some("fw-7"));
        assert!(matches!(
            known.teardown().await,
            Err(SdkError::Disconnected)
        ));
        assert!(!known.is_tearing_down());
        // Declining nothing never needs a master.
        assert!(d.decline(Vec::new(), None).await.is_ok());
        d.finish();
        assert!(matches!(
            d.kill(TaskId::new("t"), None).await,
            Err(SdkError::Stopped)
        ));
        d.stop();
        assert!(matches!(rx.recv().await, Some(Control::Stop)));
        assert!(d.framework_id().is_none());
        assert!(d.suppressed_roles().is_empty());
    }

    #[tokio::test]
    async fn teardown_before_any_subscription_ends_the_stream_without_a_call() {
        let (d, mut rx) = driver();
        // No session and no framework id: no master knows this framework.
        d.teardown().await.unwrap();
        assert!(matches!(rx.try_recv(), Ok(Control::TornDown)));
        assert!(!d.is_tearing_down());
        // Once the stream ended, teardown is a call like any other: refused.
        d.finish();
        assert!(matches!(d.teardown().await, Err(SdkError::Stopped)));
        assert!(rx.try_recv().is_err());
    }
}
