//! The agent loop: one task owns all of the agent's state (tasks, status update streams,
//! the current master session) and handles every event in order, so there are no locks
//! and no interleavings to reason about. Task-level handlers live in `tasks.rs`.
//!
//! Events are handled in batches, for the sake of the disk (group commit): the loop takes
//! every event that is ready, lets the handlers change state and stage checkpoints, then
//! makes the whole batch durable at one point ([`AgentLoop::commit`]: one append and one
//! `fdatasync` of the checkpoint log, see [`crate::journal`]), and only then acts on it:
//! answers requests, sends status updates, launches containers ([`AgentLoop::settle`]).
//! Handlers therefore never send or launch themselves; they stage and queue. What a launch
//! enqueues (RUNNING, or FAILED) goes into the next batch, which starts at once.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_proto::pb::{self, master_message::Msg, task_status::Reason, TaskState};
use drover_proto::{states, AgentId};
use tokio::sync::{mpsc, oneshot};

use super::groups::{Group, GroupKey};
use super::health::Health;
use super::recovery::RecoveredTask;
use crate::config::Settings;
use crate::containerizer::{Containerizer, LaunchSpec, Recovered, Termination};
use crate::error::{AgentError, IoContext};
use crate::fsutil::{create_dir_all_durable, fsync_dir, write_atomic};
use crate::journal::{Journal, Record, TaskCheckpoint};
use crate::layout::{Layout, TaskKey};
use crate::master_link::LinkEvent;
use crate::metrics::Metrics;
use crate::status_updates::checkpoint::StatusUpdates;
use crate::status_updates::{RetryPolicy, StatusUpdate};
use crate::{api, disk, gc};

/// How long a stopping agent waits for the acknowledgement of its last updates.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Most events taken into one batch: bounds how long the first of them waits for the
/// batch's durability point while events keep arriving. One sync per this many events
/// costs nothing measurable.
const MAX_BATCH: usize = 256;

/// Most containers started per round of the loop: starting one costs milliseconds (a
/// process spawn), and acknowledgements and ended tasks must not wait behind hundreds.
/// The rest start in the next round, which comes at once.
pub(crate) const MAX_LAUNCHES: usize = 32;

/// Events from inside the agent (as opposed to the master link's).
#[derive(Debug)]
pub enum Event {
    /// A task's container ended (from the task's waiter).
    TaskEnded {
        key: TaskKey,
        result: Result<Termination, AgentError>,
    },
    /// The agent API asks for the agent's state, or whether a task is active.
    Api(api::StateRequest),
    /// The disk watcher asks for the tasks whose containers run.
    Disk(disk::Request),
    /// The garbage collector asks for every task the agent still tracks.
    Gc(gc::Request),
    /// A call of a custom executor (see `executors/`).
    Executor(api::ExecutorRequest),
    /// A custom executor's timer fired.
    ExecutorTimer(super::executors::Timer),
    /// A check of a running task reports (see [`crate::checks`]).
    Check(crate::checks::Report),
}

/// Each subsystem's requests become events of the loop; see [`crate::outbox`].
macro_rules! event_from {
    ($($request:ty => $variant:ident),* $(,)?) => {$(
        impl From<$request> for Event {
            fn from(request: $request) -> Self {
                Event::$variant(request)
            }
        }
    )*};
}
event_from! {
    api::StateRequest => Api,
    disk::Request => Disk,
    gc::Request => Gc,
    api::ExecutorRequest => Executor,
}

/// Why the loop stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The shutdown future resolved (SIGINT/SIGTERM, or a test).
    Requested,
    /// The master sent `shutdown`.
    ShutdownByMaster(String),
}

/// What the agent knows about one task. Its state lives in the status update stream.
#[derive(Debug, Clone)]
pub(crate) struct TaskEntry {
    pub checkpoint: TaskCheckpoint,
    /// A terminal update was generated; nothing more will be.
    pub terminal: bool,
    /// A container exists (launched, or found by recovery) and is watched.
    pub watched: bool,
    /// The containerizer running (or that ran) the task, once it has a container.
    pub containerizer: Option<&'static str>,
}

struct Session {
    outbound: mpsc::UnboundedSender<pb::AgentMessage>,
    master: String,
}

/// A request answered from the agent's state once the batch it arrived in is durable:
/// nothing leaves the agent before it is on disk, answers included.
enum Reply {
    State(oneshot::Sender<pb::GetAgentStateResponse>),
    Registration(oneshot::Sender<pb::agent_message::Register>),
}

/// See the module docs.
pub(crate) struct AgentLoop {
    pub(crate) settings: Arc<Settings>,
    pub(crate) layout: Layout,
    pub(crate) info: pb::AgentInfo,
    pub(crate) agent_id: Option<AgentId>,
    pub(crate) tasks: BTreeMap<TaskKey, TaskEntry>,
    pub(crate) updates: StatusUpdates,
    pub(crate) containerizer: Arc<dyn Containerizer>,
    pub(crate) metrics: Arc<Metrics>,
    /// Set while shutting down: new launches are refused (dropped; the master will
    /// reconcile them when the agent is back).
    pub(crate) stopping: bool,
    /// The checkpoint log; see the module docs.
    pub(crate) journal: Journal,
    /// Tasks checkpointed in the current batch, launched once it is durable.
    pub(crate) launches: Vec<LaunchSpec>,
    /// Task groups with a task that has not ended (see `groups.rs`).
    pub(crate) groups: BTreeMap<GroupKey, Group>,
    replies: Vec<Reply>,
    pub(crate) events_tx: mpsc::Sender<Event>,
    /// Checks of running tasks and their latest results.
    pub(crate) health: Health,
    session: Option<Session>,
    /// Custom executors; see `executors/`.
    pub(crate) executors: super::executors::Executors,
}

impl AgentLoop {
    pub(crate) fn new(
        settings: Arc<Settings>,
        info: pb::AgentInfo,
        agent_id: Option<AgentId>,
        containerizer: Arc<dyn Containerizer>,
        metrics: Arc<Metrics>,
        events_tx: mpsc::Sender<Event>,
        journal: Journal,
    ) -> Self {
        let policy = RetryPolicy {
            initial: settings.status_update_retry,
            ..RetryPolicy::default()
        };
        let layout = Layout::new(&settings.work_dir);
        let checks = crate::checks::Checks::new(
            std::path::PathBuf::from("/proc/self/exe"),
            settings.docker_socket.clone(),
        );
        AgentLoop {
            health: Health::new(checks),
            updates: StatusUpdates::new(policy),
            settings,
            layout,
            info,
            agent_id,
            tasks: BTreeMap::new(),
            containerizer,
            metrics,
            stopping: false,
            journal,
            launches: Vec::new(),
            groups: BTreeMap::new(),
            replies: Vec::new(),
            events_tx,
            session: None,
            executors: Default::default(),
        }
    }

    /// Rebuilds the task table from what [`super::recovery::load`] found. Running
    /// containers are reattached; ended ones report their recorded outcome; tasks whose
    /// container never started are reported as dropped. Nothing is ever launched here.
    /// Ends with the log rewritten to exactly the recovered state.
    pub(crate) async fn recover(&mut self, found: Vec<RecoveredTask>) -> Result<(), AgentError> {
        let mut legacy = Vec::new();
        let found = self.recover_executors(found).await?;
        for found in found {
            let key = found.key;
            if found.legacy {
                legacy.push(key.clone());
            }
            if let Some(cp) = found.stream {
                self.updates.restore(key.clone(), cp);
            }
            let core = self.updates.core();
            let latest = core.latest_state(&key).unwrap_or(TaskState::TaskStaging);
            if states::is_terminal(latest) && core.pending(&key) == 0 {
                // Terminal update acknowledged, completion not yet recorded.
                self.updates.complete(&key);
                let marker = self
                    .layout
                    .task_meta(&key)
                    .dir()
                    .join(crate::gc::COMPLETED_MARKER);
                if !marker.exists() {
                    crate::gc::mark_completed(&self.layout, &key);
                }
                continue;
            }
            let terminal = states::is_terminal(latest);
            self.tasks.insert(
                key.clone(),
                TaskEntry {
                    checkpoint: found.checkpoint,
                    terminal,
                    watched: false,
                    containerizer: None,
                },
            );
            if terminal {
                tracing::info!(task = %key, "recovered with unacknowledged updates");
                continue;
            }
            if self.recover_executor_task(&key) {
                continue;
            }
            // A crash between the log's sync and its directories' (see `Journal::commit`)
            // can leave a checkpointed task without its meta directory; it was not
            // launched then, and the containerizer records that in the directory.
            let meta = self.layout.task_meta(&key);
            create_dir_all_durable(meta.dir())
                .ctx(|| format!("creating {}", meta.dir().display()))?;
            match self.containerizer.recover(&key).await? {
                Recovered::Running => {
                    tracing::info!(task = %key, "reattached to the running task");
                    // A task whose kill had begun (KILLING) stays killing: its supervisor
                    // carries the kill out, and checks of a dying task would only kill it
                    // again under another reason.
                    let killing = latest == TaskState::TaskKilling;
                    if latest != TaskState::TaskRunning && !killing {
                        self.enqueue_status(
                            &key,
                            TaskState::TaskRunning,
                            pb::task_status::Source::Executor,
                            Reason::Unspecified,
                            String::new(),
                            None,
                        );
                    }
                    self.watch(&key);
                    if !killing {
                        self.start_checks(&key);
                    }
                }
                Recovered::Ended => {
                    tracing::info!(task = %key, "the task ended while the agent was away");
                    self.watch(&key);
                }
                Recovered::NeverStarted => {
                    tracing::info!(task = %key, "the task never started; reporting it dropped");
                    self.enqueue_status(
                        &key,
                        TaskState::TaskDropped,
                        pb::task_status::Source::Agent,
                        Reason::AgentRestarted,
                        "the agent restarted before the task's container started; the task never ran"
                            .into(),
                        None,
                    );
                }
            }
        }
        self.recover_executors_done();
        self.recover_groups();
        // The log becomes exactly the recovered state: what recovery enqueued is made
        // durable, completed tasks and any cut-off tail disappear, and tasks read from an
        // older agent's files are now in the log, so those files can go.
        self.commit()?;
        self.compact()?;
        for key in legacy {
            let meta = self.layout.task_meta(&key);
            for path in [meta.task_file(), meta.updates_file()] {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(AgentError::io(format!("removing {}", path.display()), e))
                    }
                }
            }
            // Durably gone: a task.json reappearing after a power loss would bring back a
            // task the log has since forgotten.
            fsync_dir(meta.dir()).ctx(|| format!("syncing {}", meta.dir().display()))?;
        }
        self.refresh_gauges();
        Ok(())
    }

    /// Starts a waiter that reports when the task's container ends.
    pub(crate) fn watch(&mut self, key: &TaskKey) {
        let name = self.containerizer.containerizer_of(key);
        if let Some(e) = self.tasks.get_mut(key) {
            e.watched = true;
            e.containerizer = name.or(e.containerizer);
        }
        let containerizer = self.containerizer.clone();
        let events = self.events_tx.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let result = containerizer.wait(&key).await.map_err(AgentError::from);
            let _ = events.send(Event::TaskEnded { key, result }).await;
        });
    }

    /// Runs until `shutdown` resolves, the master shuts the agent down, or a fatal error
    /// (a checkpoint that cannot be written) occurs.
    pub(crate) async fn run(
        &mut self,
        link: &mut mpsc::Receiver<LinkEvent>,
        events: &mut mpsc::Receiver<Event>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Exit, AgentError> {
        tokio::pin!(shutdown);
        loop {
            self.settle().await?;
            self.refresh_gauges();
            // Never sleep on a batch that is not committed yet (what the launches just
            // enqueued): go round at once, with whatever has arrived meanwhile.
            let wake = if self.unsettled() {
                Some(Instant::now())
            } else {
                self.session.as_ref().and(self.updates.core().next_retry())
            };
            let mut exit = None;
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    self.finish().await?;
                    return Ok(Exit::Requested);
                }
                ev = link.recv() => match ev {
                    Some(ev) => exit = self.on_link(ev).await?,
                    None => return Err(AgentError::Config("the master link stopped".into())),
                },
                Some(ev) = events.recv() => self.on_event(ev),
                _ = sleep_until(wake) => {}
            }
            if exit.is_none() {
                exit = self.take_ready(link, events).await?;
            }
            if let Some(exit) = exit {
                self.finish().await?;
                return Ok(exit);
            }
        }
    }

    /// Before the loop returns: what came before the exit is launched and reported, as
    /// if each event had been handled on its own.
    async fn finish(&mut self) -> Result<(), AgentError> {
        self.commit_and_send()?;
        self.launch_pending(usize::MAX).await;
        self.commit_and_send()
    }

    /// Handles every event that is ready now (up to [`MAX_BATCH`]): the rest of a batch.
    async fn take_ready(
        &mut self,
        link: &mut mpsc::Receiver<LinkEvent>,
        events: &mut mpsc::Receiver<Event>,
    ) -> Result<Option<Exit>, AgentError> {
        for _ in 0..MAX_BATCH {
            if let Ok(ev) = link.try_recv() {
                if let Some(exit) = self.on_link(ev).await? {
                    return Ok(Some(exit));
                }
            } else if let Ok(ev) = events.try_recv() {
                self.on_event(ev);
            } else {
                break;
            }
        }
        Ok(None)
    }

    /// Ends a batch: its durability point, then everything that waited for it (answers,
    /// status updates, launches). What the launches enqueue waits for the next batch.
    pub(crate) async fn settle(&mut self) -> Result<(), AgentError> {
        self.commit_and_send()?;
        self.launch_pending(MAX_LAUNCHES).await;
        self.kill_unhealthy().await
    }

    /// True when something waits for a durability point or for [`Self::settle`].
    fn unsettled(&self) -> bool {
        !self.journal.is_clean()
            || self.updates.is_dirty()
            || !self.launches.is_empty()
            || !self.replies.is_empty()
    }

    /// True when everything the agent's state says is on disk.
    pub(crate) fn is_durable(&self) -> bool {
        self.journal.is_clean() && !self.updates.is_dirty()
    }

    /// The durability point of a batch: the changed status update streams join the
    /// staged task checkpoints, and the checkpoint log syncs them all at once.
    pub(crate) fn commit(&mut self) -> Result<(), AgentError> {
        for change in self.updates.take_checkpoints() {
            self.journal.stage(&change.into());
        }
        let synced = self.journal.commit().ctx(|| {
            format!(
                "committing checkpoints to {}",
                self.journal.path().display()
            )
        })?;
        if synced {
            self.metrics.checkpoint_synced();
        }
        if self.journal.wants_compaction() {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the checkpoint log with the live tasks only. Called right after a commit,
    /// when the in-memory state is exactly what is durable.
    fn compact(&mut self) -> Result<(), AgentError> {
        let executors = self.executor_records();
        let updates = self.updates.core();
        let live = self
            .tasks
            .iter()
            .filter(|(key, _)| key.validate().is_ok())
            .flat_map(|(key, entry)| {
                let task = Record::Task {
                    key: key.clone(),
                    task: Box::new(entry.checkpoint.clone()),
                };
                let stream = updates.checkpoint(key).map(|stream| Record::Updates {
                    key: key.clone(),
                    stream,
                });
                std::iter::once(task).chain(stream)
            })
            .chain(executors);
        self.journal
            .compact(live)
            .ctx(|| format!("compacting {}", self.journal.path().display()))?;
        self.metrics.checkpoint_synced();
        Ok(())
    }

    /// [`Self::commit`], then the answers and status updates that waited for it.
    pub(crate) fn commit_and_send(&mut self) -> Result<(), AgentError> {
        self.commit()?;
        self.answer();
        self.send_due();
        Ok(())
    }

    fn answer(&mut self) {
        if !self.is_durable() {
            debug_assert!(false, "answering before the batch is durable");
            return;
        }
        for reply in std::mem::take(&mut self.replies) {
            match reply {
                Reply::State(tx) => {
                    let _ = tx.send(self.state());
                }
                Reply::Registration(tx) => {
                    let _ = tx.send(self.registration());
                }
            }
        }
        self.flush_executors();
    }

    /// Kills every task that still runs and waits (bounded) for their terminal updates
    /// to be checkpointed, still serving the master link so they can be delivered.
    pub(crate) async fn kill_all_and_wait(
        &mut self,
        link: &mut mpsc::Receiver<LinkEvent>,
        events: &mut mpsc::Receiver<Event>,
        reason: Reason,
    ) -> Result<(), AgentError> {
        self.stopping = true;
        self.kill_all_executors();
        let running: Vec<TaskKey> = self
            .tasks
            .iter()
            .filter(|(_, e)| !e.terminal && e.watched)
            .map(|(k, _)| k.clone())
            .collect();
        let mut longest = Duration::ZERO;
        for key in &running {
            let grace = self.grace_for(key, None);
            longest = longest.max(grace);
            tracing::info!(task = %key, "killing the task before exiting");
            if let Err(e) = self.containerizer.kill(key, grace, reason).await {
                tracing::error!(task = %key, "kill failed: {e}");
            }
        }
        // The supervisors SIGKILL at the end of the grace period; allow them time to
        // record the outcome after that.
        let deadline = tokio::time::Instant::now() + longest + Duration::from_secs(5);
        while self.tasks.values().any(|e| !e.terminal && e.watched) {
            self.commit_and_send()?;
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("some tasks did not end in time; their supervisors will finish the kill");
                    break;
                }
                Some(ev) = events.recv() => self.on_event(ev),
                Some(ev) = link.recv() => {
                    if let Some(Exit::ShutdownByMaster(r)) = self.on_link(ev).await? {
                        tracing::warn!("shutdown from the master while stopping: {r}");
                    }
                }
            }
        }
        // Give the master a moment to receive and acknowledge the terminal updates; what
        // is not acknowledged is checkpointed and resent by the next agent anyway.
        let drain_deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while self.session.is_some() && self.updates.core().total_pending() > 0 {
            self.commit_and_send()?;
            let wake = self.updates.core().next_retry();
            tokio::select! {
                _ = tokio::time::sleep_until(drain_deadline) => break,
                _ = sleep_until(wake) => {}
                Some(ev) = events.recv() => self.on_event(ev),
                Some(ev) = link.recv() => {
                    self.on_link(ev).await?;
                }
            }
        }
        self.commit()?;
        self.refresh_gauges();
        Ok(())
    }

    async fn on_link(&mut self, ev: LinkEvent) -> Result<Option<Exit>, AgentError> {
        match ev {
            LinkEvent::NeedRegistration(reply) => {
                self.replies.push(Reply::Registration(reply));
            }
            LinkEvent::Registered {
                agent_id,
                master,
                outbound,
                ..
            } => {
                self.on_registered(agent_id)?;
                self.session = Some(Session { outbound, master });
                self.metrics.registered();
                // Every unacknowledged head goes out again on the new stream.
                self.updates.core_mut().resend_all();
            }
            LinkEvent::Disconnected { master, error } => {
                tracing::warn!(%master, "lost the master: {error}");
                self.session = None;
            }
            LinkEvent::Message(msg) => return self.on_master_message(*msg).await,
        }
        Ok(None)
    }

    /// Sends a message to the connected master now; false without one.
    pub(crate) fn send_to_master(&self, msg: pb::AgentMessage) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.outbound.send(msg).is_ok())
    }

    /// Persists the agent id (fsync'd) before anything else happens under it.
    fn on_registered(&mut self, agent_id: AgentId) -> Result<(), AgentError> {
        if self.agent_id.as_ref() == Some(&agent_id) {
            return Ok(());
        }
        if let Some(old) = &self.agent_id {
            tracing::warn!(old = %old, new = %agent_id, "the master gave this agent a new id");
        }
        let path = self.layout.agent_id_file();
        write_atomic(&path, agent_id.as_str().as_bytes())
            .ctx(|| format!("persisting the agent id to {}", path.display()))?;
        self.agent_id = Some(agent_id);
        Ok(())
    }

    async fn on_master_message(
        &mut self,
        msg: pb::MasterMessage,
    ) -> Result<Option<Exit>, AgentError> {
        match msg.msg {
            Some(Msg::RunTask(rt)) => self.on_run_task(rt)?,
            Some(Msg::RunTaskGroup(g)) => self.on_run_task_group(g)?,
            Some(Msg::KillTask(k)) => {
                let key = TaskKey {
                    framework_id: k.framework_id.unwrap_or_default(),
                    task_id: k.task_id.unwrap_or_default(),
                };
                self.on_kill_task(&key, k.kill_policy, Reason::KilledByFramework)
                    .await?;
            }
            Some(Msg::StatusAck(ack)) => {
                let key = TaskKey {
                    framework_id: ack.framework_id.unwrap_or_default(),
                    task_id: ack.task_id.unwrap_or_default(),
                };
                self.on_status_ack(&key, &ack.uuid);
            }
            Some(Msg::ShutdownFramework(s)) => {
                let fw = s.framework_id.unwrap_or_default();
                tracing::info!(framework = %fw, "shutting down the framework's tasks");
                let keys: Vec<TaskKey> = self
                    .tasks
                    .keys()
                    .filter(|k| k.framework_id == fw)
                    .cloned()
                    .collect();
                for key in keys {
                    self.on_kill_task(&key, None, Reason::FrameworkRemoved)
                        .await?;
                }
                self.shut_down_framework_executors(&fw);
            }
            Some(Msg::FrameworkMessage(m)) => self.on_framework_message(m),
            Some(Msg::ShutdownExecutor(s)) => {
                let fw = s.framework_id.unwrap_or_default();
                let executor_id = s.executor_id.unwrap_or_default();
                self.on_shutdown_executor(&fw, &executor_id).await?;
            }
            Some(Msg::Shutdown(s)) => {
                tracing::error!("the master shut this agent down: {}", s.reason);
                return Ok(Some(Exit::ShutdownByMaster(s.reason)));
            }
            Some(Msg::Registered(_)) | Some(Msg::Pong(_)) | None => {}
        }
        Ok(None)
    }

    fn on_status_ack(&mut self, key: &TaskKey, uuid: &[u8]) {
        use crate::status_updates::Ack;
        let executor = self.executor_of(key);
        match self.updates.acknowledge(key, uuid) {
            Ack::Accepted { completed } => {
                self.metrics.update_acknowledged();
                if let Some(executor_id) = executor {
                    self.relay_ack(key, &executor_id, uuid, completed);
                }
                if completed {
                    tracing::debug!(task = %key, "terminal update acknowledged; forgetting the task");
                    self.tasks.remove(key);
                    crate::gc::mark_completed(&self.layout, key);
                    self.forget_checks(key);
                }
            }
            Ack::WrongUuid => {
                tracing::debug!(task = %key, "ignoring an acknowledgement of a uuid that is not in flight")
            }
            Ack::UnknownTask => {
                tracing::debug!(task = %key, "ignoring an acknowledgement for an unknown task")
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::TaskEnded { key, result } => self.on_task_ended(&key, result),
            Event::Api(api::StateRequest::GetState(reply)) => {
                self.replies.push(Reply::State(reply))
            }
            Event::Api(api::StateRequest::TaskActive { key, reply }) => {
                let active = match key.executor_id() {
                    Some(_) => self.executors.runs(&key),
                    None => self.tasks.get(&key).is_some_and(|e| !e.terminal),
                };
                let _ = reply.send(active);
            }
            Event::Disk(disk::Request::ActiveTasks(reply)) => {
                let _ = reply.send(self.watched_tasks());
            }
            Event::Gc(gc::Request::KnownTasks(reply)) => {
                let _ = reply.send(self.known_keys());
            }
            Event::Executor(request) => self.on_executor_request(request),
            Event::ExecutorTimer(timer) => self.on_executor_timer(timer),
            Event::Check(report) => self.on_check_report(report),
        }
    }

    /// Sends every status update that is due, if a master is connected. Only called
    /// right after a commit: everything it sends is on disk.
    fn send_due(&mut self) {
        let Some(session) = &self.session else {
            return;
        };
        let mut sent = 0;
        for (_, update) in self.updates.due(Instant::now()) {
            if session.outbound.send(update.to_message()).is_err() {
                // The session is gone; its Disconnected event is on its way. What was not
                // sent is resent after the next registration.
                self.session = None;
                break;
            }
            sent += 1;
        }
        self.metrics.updates_sent(sent);
    }

    /// Tasks whose containers run, with their `disk` resource in bytes.
    /// What the disk watcher measures and rotates: every running task, and every running
    /// custom executor (its own `stdout`/`stderr` rotate like a task's; it has no disk
    /// resource of its own, so it is measured but never held to a limit).
    fn watched_tasks(&self) -> Vec<crate::disk::WatchedTask> {
        let tasks = self
            .tasks
            .iter()
            .filter(|(key, e)| !e.terminal && e.watched && key.validate().is_ok())
            .map(|(key, e)| crate::disk::WatchedTask {
                key: key.clone(),
                disk_limit_bytes: drover_proto::Resources::from_proto(&e.checkpoint.task.resources)
                    .ok()
                    .map(|r| r.disk())
                    .filter(|mb| *mb > 0.0)
                    .map(|mb| (mb * 1024.0 * 1024.0) as u64),
            });
        let executors = self
            .executors
            .watched_keys()
            .filter(|key| key.validate().is_ok())
            .map(|key| crate::disk::WatchedTask {
                key: key.clone(),
                disk_limit_bytes: None,
            });
        tasks.chain(executors).collect()
    }

    pub(crate) fn refresh_gauges(&self) {
        self.metrics
            .set_tasks_running(self.tasks.values().filter(|e| !e.terminal).count());
        self.metrics
            .set_updates_pending(self.updates.core().total_pending());
    }

    /// Builds a status update with a fresh uuid and enqueues it; it is checkpointed by the
    /// batch's commit and sent after that.
    pub(crate) fn enqueue_status(
        &mut self,
        key: &TaskKey,
        state: TaskState,
        source: pb::task_status::Source,
        reason: Reason,
        message: String,
        exit_code: Option<i32>,
    ) {
        let (healthy, check_status) = self.health.annotations(key);
        let status = pb::TaskStatus {
            task_id: Some(key.task_id.clone()),
            state: state as i32,
            message,
            source: source as i32,
            reason: reason as i32,
            agent_id: self.agent_id.clone(),
            // A task of a group reports its group's executor.
            executor_id: self
                .tasks
                .get(key)
                .and_then(|e| e.checkpoint.task.executor.as_ref())
                .and_then(|e| e.executor_id.clone()),
            timestamp: drover_proto::unix_seconds(),
            uuid: uuid::Uuid::new_v4().as_bytes().to_vec(),
            healthy,
            check_status,
            exit_code,
            data: Vec::new(),
        };
        if states::is_terminal(state) {
            if let Some(e) = self.tasks.get_mut(key) {
                e.terminal = true;
            }
            self.metrics.task_terminal(state);
        }
        tracing::info!(task = %key, state = states::name(state), "status update");
        self.updates.enqueue(
            key,
            StatusUpdate {
                framework_id: key.framework_id.clone(),
                status,
            },
        );
    }

    fn registration(&self) -> pb::agent_message::Register {
        let frameworks: BTreeSet<_> = self.tasks.keys().map(|k| k.framework_id.clone()).collect();
        let tasks = self
            .tasks
            .iter()
            .map(|(key, e)| pb::AgentTask {
                framework_id: Some(key.framework_id.clone()),
                task: Some(e.checkpoint.task.clone()),
                state: self.latest_state(key) as i32,
            })
            .collect();
        pb::agent_message::Register {
            agent_id: self.agent_id.clone(),
            info: Some(self.info.clone()),
            tasks,
            frameworks: frameworks.into_iter().collect(),
        }
    }

    pub(crate) fn latest_state(&self, key: &TaskKey) -> TaskState {
        self.updates
            .core()
            .latest_state(key)
            .unwrap_or(TaskState::TaskStaging)
    }

    fn state(&self) -> pb::GetAgentStateResponse {
        let tasks = self
            .tasks
            .iter()
            .map(|(key, entry)| pb::AgentTaskState {
                framework_id: Some(key.framework_id.clone()),
                task_id: Some(key.task_id.clone()),
                state: self.latest_state(key) as i32,
                sandbox: if key.validate().is_ok() {
                    self.layout.sandbox(key).to_string_lossy().into_owned()
                } else {
                    String::new()
                },
                exit_code: self.updates.core().latest_exit_code(key),
                pending_updates: self.updates.core().pending(key) as u32,
                usage: if entry.watched {
                    self.containerizer.usage(key)
                } else {
                    None
                },
                containerizer: entry.containerizer.unwrap_or_default().to_string(),
            })
            .collect();
        pb::GetAgentStateResponse {
            agent_id: self.agent_id.clone(),
            info: Some(self.info.clone()),
            tasks,
            master: self
                .session
                .as_ref()
                .map(|s| s.master.clone())
                .unwrap_or_default(),
        }
    }

    /// Creates the meta directory of a valid key and stages the task's checkpoint; both
    /// are durable once the batch commits, before the task is launched.
    pub(crate) fn checkpoint_task(
        &mut self,
        key: &TaskKey,
        cp: &TaskCheckpoint,
    ) -> Result<(), AgentError> {
        let meta = self.layout.task_meta(key);
        self.journal
            .create_dir_all(meta.dir())
            .ctx(|| format!("creating {}", meta.dir().display()))?;
        self.journal.stage(&Record::Task {
            key: key.clone(),
            task: Box::new(cp.clone()),
        });
        Ok(())
    }
}

async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}
