//! The driver: the thin shell around [`AgentCore`] that owns everything that talks (the
//! containerizer, the master session, the reply channels, the executors' event streams,
//! the check drivers, the timers, the clock) and runs the agent's one loop.
//!
//! Events are handled in batches, for the sake of the disk (group commit): the loop takes
//! every event that is ready, hands each to the core with the time it read, then makes the
//! whole batch durable at one point ([`AgentLoop::commit`]: the core's changed status
//! update streams join its staged records, and the checkpoint log does one append and one
//! `fdatasync`, see [`crate::journal`]), and only then carries the batch's effects out
//! ([`AgentLoop::settle`]): status updates due now first, then answers, kills, watches,
//! checks, events to executors, timers, and last the launches (at most [`MAX_LAUNCHES`] a
//! round, a task group never split). What the launches' results change goes into the next
//! batch, which starts at once.
//!
//! Reply channels stay here, keyed by a [`ReplyId`] the core answers by; executors'
//! streams likewise by [`SubscriptionId`]. The one decision taken here rather than in the
//! core is flow control of an executor's stream (at most [`MAX_PENDING_MESSAGES`]
//! framework messages waiting on it), because that count belongs to the stream.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_proto::pb::{self, executor_event, task_status::Reason};
use drover_proto::{AgentId, ExecutorId, FrameworkId};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::core::{AgentCore, Effect, Exit, Launch, Now, Query, ReplyId, SubscriptionId};
use super::executors::{ExecutorRequest, Refusal, Timer, MAX_PENDING_MESSAGES};
use super::groups::{launch_round, make_shared_volume, GroupKey};
use super::recovery::RecoveredTask;
use super::views;
use crate::api::{Answer, EventSender};
use crate::checks::{Checks, Report};
use crate::config::Settings;
use crate::containerizer::linux::holder;
use crate::containerizer::{Containerizer, Termination};
use crate::error::{AgentError, IoContext};
use crate::fsutil::{create_dir_all_durable, fsync_dir, write_atomic};
use crate::journal::Journal;
use crate::layout::{Layout, TaskKey};
use crate::master_link::LinkEvent;
use crate::metrics::Metrics;
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
    Report => Check,
}

struct Session {
    outbound: mpsc::UnboundedSender<pb::AgentMessage>,
}

/// A request whose answer waits for the core (see [`Effect::Reply`], [`Effect::Answer`]).
enum Pending {
    State(oneshot::Sender<pb::GetAgentStateResponse>),
    Registration(oneshot::Sender<pb::agent_message::Register>),
    /// An executor's call; a refused subscription's stream is dropped with the answer.
    Call {
        answer: Answer,
        subscription: Option<SubscriptionId>,
    },
}

/// One subscription of a custom executor: its event stream.
struct Subscriber {
    events: EventSender,
    /// Framework messages on `events` not taken by the stream yet: the driver adds one
    /// per message it queues, the stream takes one off per message it yields.
    pending_messages: Arc<AtomicUsize>,
}

/// The time, read once per input.
fn now() -> Now {
    // tokio's clock (the real one in production; a test's paused one in tests).
    Now {
        instant: tokio::time::Instant::now().into_std(),
        unix_seconds: drover_proto::unix_seconds(),
    }
}

/// See the module docs.
pub(crate) struct AgentLoop {
    pub(crate) core: AgentCore,
    containerizer: Arc<dyn Containerizer>,
    metrics: Arc<Metrics>,
    pub(crate) events_tx: mpsc::Sender<Event>,
    session: Option<Session>,
    checks: Checks,
    pending: BTreeMap<ReplyId, Pending>,
    subscribers: BTreeMap<SubscriptionId, Subscriber>,
    next_id: u64,
    /// Executors' timers ([`Effect::Timer`]), by when they fall due.
    timers: BTreeMap<(Instant, u64), Timer>,
    /// Launches of committed batches not started yet (see [`MAX_LAUNCHES`]).
    launches: Vec<Launch>,
    /// Launches taken out of `launches` ([`Effect::WithdrawLaunch`]) whose tasks the core
    /// has not been told of yet.
    withdrawn: Vec<TaskKey>,
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
        let checks = Checks::new(
            std::path::PathBuf::from("/proc/self/exe"),
            settings.docker_socket.clone(),
        );
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let core = AgentCore::new(
            settings,
            info,
            agent_id,
            metrics.clone(),
            journal,
            root,
            now(),
        );
        AgentLoop {
            core,
            containerizer,
            metrics,
            events_tx,
            session: None,
            checks,
            pending: BTreeMap::new(),
            subscribers: BTreeMap::new(),
            next_id: 0,
            timers: BTreeMap::new(),
            launches: Vec::new(),
            withdrawn: Vec::new(),
        }
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn layout(&self) -> &Layout {
        &self.core.layout
    }

    /// After a restart: finds the containers of what the log held (see
    /// [`super::restart::probes_needed`]), lets the core rebuild its state, and ends with
    /// the log rewritten to exactly the recovered state. Nothing is ever launched here.
    pub(crate) async fn recover(&mut self, found: Vec<RecoveredTask>) -> Result<(), AgentError> {
        let legacy: Vec<TaskKey> = found
            .iter()
            .filter(|f| f.legacy)
            .map(|f| f.key.clone())
            .collect();
        let mut probes = BTreeMap::new();
        for key in super::restart::probes_needed(&found) {
            // A crash between the log's sync and its directories' (see `Journal::commit`)
            // can leave a checkpointed task without its meta directory; it was not
            // launched then, and the containerizer records that in the directory.
            let meta = self.layout().task_meta(&key);
            create_dir_all_durable(meta.dir())
                .ctx(|| format!("creating {}", meta.dir().display()))?;
            let recovered = self.containerizer.recover(&key).await?;
            let name = self.containerizer.containerizer_of(&key);
            probes.insert(key, (recovered, name));
        }
        self.core.recover(now(), found, &probes);
        self.destroy_unclaimed_holders();
        // The log becomes exactly the recovered state: what recovery enqueued is made
        // durable, completed tasks and any cut-off tail disappear, and tasks read from an
        // older agent's files are now in the log, so those files can go.
        self.commit()?;
        self.compact()?;
        for key in legacy {
            let meta = self.layout().task_meta(&key);
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
        // Watches, checks, timers and teardowns recovery asked for.
        for effect in self.core.take_effects() {
            self.carry_out(effect).await;
        }
        self.refresh_gauges();
        Ok(())
    }

    /// Namespace holders that no recovered task group claims (every task of their group
    /// was forgotten before the restart).
    fn destroy_unclaimed_holders(&self) {
        let root = self.layout().executors_root();
        let Ok(frameworks) = std::fs::read_dir(&root) else {
            return;
        };
        for fw in frameworks.flatten() {
            let Ok(executors) = std::fs::read_dir(fw.path()) else {
                continue;
            };
            for ex in executors.flatten() {
                let gk = GroupKey {
                    framework_id: FrameworkId::new(fw.file_name().to_string_lossy()),
                    executor_id: ExecutorId::new(ex.file_name().to_string_lossy()),
                };
                if !self.core.groups.contains_key(&gk) {
                    destroy_holder(self.layout(), &gk);
                }
            }
        }
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
            self.settle(MAX_LAUNCHES).await?;
            self.refresh_gauges();
            // Never sleep on a batch that is not committed yet (what the launches just
            // changed): go round at once, with whatever has arrived meanwhile.
            let wake = if self.unsettled() {
                Some(now().instant)
            } else {
                self.next_wake()
            };
            let mut exit = None;
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    self.finish().await?;
                    return Ok(Exit::Requested);
                }
                ev = link.recv() => match ev {
                    Some(ev) => exit = self.on_link(ev)?,
                    None => return Err(AgentError::Config("the master link stopped".into())),
                },
                Some(ev) = events.recv() => self.on_event(ev),
                _ = sleep_until(wake) => {}
            }
            self.fire_timers();
            if exit.is_none() {
                exit = self.take_ready(link, events)?;
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
        self.settle(usize::MAX).await?;
        self.settle(usize::MAX).await
    }

    /// Handles every event that is ready now (up to [`MAX_BATCH`]): the rest of a batch.
    fn take_ready(
        &mut self,
        link: &mut mpsc::Receiver<LinkEvent>,
        events: &mut mpsc::Receiver<Event>,
    ) -> Result<Option<Exit>, AgentError> {
        for _ in 0..MAX_BATCH {
            if let Ok(ev) = link.try_recv() {
                if let Some(exit) = self.on_link(ev)? {
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

    /// True when something waits for a durability point or for [`Self::settle`].
    fn unsettled(&self) -> bool {
        self.core.unsettled() || !self.launches.is_empty()
    }

    /// The next retry of a status update or executor timer.
    fn next_wake(&self) -> Option<Instant> {
        let timer = self.timers.keys().next().map(|(at, _)| *at);
        match (self.core.next_retry(), timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Hands the core every timer that is due.
    fn fire_timers(&mut self) {
        let now = now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now.instant {
                break;
            }
            let timer = entry.remove();
            self.core.on_timer(now, timer);
        }
    }

    /// Ends a batch: its durability point, then its effects (status updates first), then
    /// (at most `limit` of) the launches. What the launches' results change waits for the
    /// next batch.
    pub(crate) async fn settle(&mut self, limit: usize) -> Result<(), AgentError> {
        self.commit()?;
        self.core.after_commit(now());
        for effect in self.core.take_effects() {
            self.carry_out(effect).await;
        }
        self.launch(limit).await;
        let now = now();
        for key in std::mem::take(&mut self.withdrawn) {
            self.core.on_launch_withdrawn(now, &key);
        }
        Ok(())
    }

    /// The durability point of a batch: the changed status update streams join the
    /// staged records, and the checkpoint log syncs them all at once.
    pub(crate) fn commit(&mut self) -> Result<(), AgentError> {
        self.core.stage_updates();
        let journal = &mut self.core.journal;
        let synced = journal
            .commit()
            .ctx(|| format!("committing checkpoints to {}", journal.path().display()))?;
        if synced {
            self.metrics.checkpoint_synced();
        }
        if self.core.journal.wants_compaction() {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the checkpoint log with the live tasks only. Called right after a commit,
    /// when the in-memory state is exactly what is durable.
    fn compact(&mut self) -> Result<(), AgentError> {
        let live = self.core.live_records();
        let journal = &mut self.core.journal;
        journal
            .compact(live)
            .ctx(|| format!("compacting {}", journal.path().display()))?;
        self.metrics.checkpoint_synced();
        Ok(())
    }

    /// Carries one effect out (see [`Effect`]).
    async fn carry_out(&mut self, effect: Effect) {
        match effect {
            Effect::Launch(launch) => self.launches.push(*launch),
            Effect::WithdrawLaunch(key) => {
                // Launches start only in `launch`, which hands every result to the core
                // before it returns: one still queued has not started. The core hears of
                // it after this round's launches (what it stages then is not durable,
                // and launches wait for a durable batch).
                if let Some(i) = self.launches.iter().position(|l| l.spec.key == key) {
                    self.launches.remove(i);
                    self.withdrawn.push(key);
                }
            }
            Effect::Kill { key, grace, reason } => {
                if let Err(e) = self.containerizer.kill(&key, grace, reason).await {
                    tracing::error!(task = %key, "kill failed: {e}");
                }
            }
            Effect::Watch(key) => {
                let containerizer = self.containerizer.clone();
                let events = self.events_tx.clone();
                tokio::spawn(async move {
                    let result = containerizer.wait(&key).await.map_err(AgentError::from);
                    let _ = events.send(Event::TaskEnded { key, result }).await;
                });
            }
            Effect::StartChecks { key, task, place } => {
                self.checks
                    .start(&key, &task, place, self.events_tx.clone());
            }
            Effect::StopChecks(key) => self.checks.stop(&key),
            Effect::Send(msg) => {
                let update = matches!(msg.msg, Some(pb::agent_message::Msg::StatusUpdate(_)));
                let sent = self
                    .session
                    .as_ref()
                    .is_some_and(|s| s.outbound.send(msg).is_ok());
                if sent && update {
                    self.metrics.updates_sent(1);
                }
                if !sent && self.session.is_some() {
                    // The session is gone; its Disconnected event is on its way. What was
                    // not sent is resent after the next registration.
                    self.session = None;
                    self.core.on_disconnected();
                }
            }
            Effect::ToExecutor {
                subscription,
                event,
            } => self.deliver(subscription, *event),
            Effect::EndSubscription { subscription, why } => {
                if let Some(s) = self.subscribers.remove(&subscription) {
                    let _ = s.events.send(Err(to_status(why)));
                }
            }
            Effect::Answer { reply, result } => {
                debug_assert!(
                    self.core.is_durable(),
                    "answering before the batch is durable"
                );
                if let Some(Pending::Call {
                    answer,
                    subscription,
                }) = self.pending.remove(&reply)
                {
                    if let (Err(_), Some(s)) = (&result, subscription) {
                        self.subscribers.remove(&s);
                    }
                    let _ = answer.send(result.map_err(to_status));
                }
            }
            Effect::Reply { reply, query } => {
                debug_assert!(
                    self.core.is_durable(),
                    "answering before the batch is durable"
                );
                match (self.pending.remove(&reply), query) {
                    (Some(Pending::State(tx)), Query::State) => {
                        let state = views::state(&self.core, |k| self.containerizer.usage(k));
                        let _ = tx.send(state);
                    }
                    (Some(Pending::Registration(tx)), Query::Registration) => {
                        let _ = tx.send(views::registration(&self.core));
                    }
                    _ => tracing::error!(reply, ?query, "no request waits for this answer"),
                }
            }
            Effect::Timer { at, timer } => {
                let seq = self.next_id();
                self.timers.insert((at, seq), timer);
            }
            Effect::MarkCompleted(key) => crate::gc::mark_completed(self.layout(), &key),
            Effect::DestroyGroup(gk) => destroy_holder(self.layout(), &gk),
            Effect::RenewSharedVolume(gk) => {
                let shared = self
                    .layout()
                    .executor_dir(gk.framework_id.as_str(), gk.executor_id.as_str())
                    .join("shared");
                // On failure the group's launches fail (they cannot mount the volume).
                if let Err(e) = make_shared_volume(&shared, create_dir_all_durable) {
                    tracing::warn!(group = ?gk, "making the shared volume {} again: {e}", shared.display());
                }
            }
        }
    }

    /// An event to an executor's stream, if it is still open.
    fn deliver(&mut self, subscription: SubscriptionId, event: pb::ExecutorEvent) {
        let Some(s) = self.subscribers.get(&subscription) else {
            return;
        };
        if matches!(event.event, Some(executor_event::Event::Message(_))) {
            if s.pending_messages.load(Ordering::Relaxed) >= MAX_PENDING_MESSAGES {
                tracing::warn!("dropping a framework message: {MAX_PENDING_MESSAGES} are already waiting for the executor to read them");
                return;
            }
            s.pending_messages.fetch_add(1, Ordering::Relaxed);
        }
        if s.events.send(Ok(event)).is_err() {
            tracing::info!(subscription, "the executor's stream closed");
            self.subscribers.remove(&subscription);
            self.core.on_subscription_closed(subscription);
        }
    }

    /// Starts (at most `limit` of) the containers of committed batches, oldest first and
    /// side by side (a Docker launch waits on the engine for a while, and the engine
    /// creates and starts containers in parallel), and hands the core their results.
    async fn launch(&mut self, limit: usize) {
        if self.launches.is_empty() {
            return;
        }
        if !self.core.is_durable() {
            debug_assert!(false, "launching before the batch is durable");
            tracing::error!("not launching tasks whose checkpoints are not durable yet");
            return;
        }
        let n = launch_round(&self.launches, limit);
        let batch: Vec<Launch> = self.launches.drain(..n).collect();
        let starts = batch.into_iter().map(|launch| {
            let mut spec = launch.spec;
            // A task group's namespace holder, made (or found) when the agent runs as root.
            if let (Some((ns, network)), Some(group)) = (launch.holder, spec.group.as_mut()) {
                match holder::create(&ns, network) {
                    Ok((ipc, net)) => {
                        group.ipc_namespace = Some(ipc);
                        group.net_namespace = net;
                    }
                    Err(e) => {
                        tracing::warn!(task = %spec.key, "cannot make the task group's namespaces: {e}")
                    }
                }
            }
            let key = spec.key.clone();
            let containerizer = self.containerizer.clone();
            async move {
                let result = containerizer.launch(spec).await.map_err(AgentError::from);
                let name = containerizer.containerizer_of(&key);
                (key, result, name)
            }
        });
        let results = futures::future::join_all(starts).await;
        self.core.on_launched(now(), results);
    }

    /// Kills every task that still runs and waits (bounded) for their terminal updates
    /// to be checkpointed, still serving the master link so they can be delivered.
    pub(crate) async fn kill_all_and_wait(
        &mut self,
        link: &mut mpsc::Receiver<LinkEvent>,
        events: &mut mpsc::Receiver<Event>,
        reason: Reason,
    ) -> Result<(), AgentError> {
        let longest = self.core.kill_all(now(), reason);
        self.settle(MAX_LAUNCHES).await?;
        // The supervisors SIGKILL at the end of the grace period; allow them time to
        // record the outcome after that.
        let deadline = tokio::time::Instant::now() + longest + Duration::from_secs(5);
        // Both loops below wake for the executors' timers (and the updates' retries) as
        // the main loop does: an executor's registration or shutdown timeout still ends
        // it while the agent stops.
        while self.core.any_running() {
            let wake = self.next_wake();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("some tasks did not end in time; their supervisors will finish the kill");
                    break;
                }
                _ = sleep_until(wake) => {}
                Some(ev) = events.recv() => self.on_event(ev),
                Some(ev) = link.recv() => {
                    if let Some(Exit::ShutdownByMaster(r)) = self.on_link(ev)? {
                        tracing::warn!("shutdown from the master while stopping: {r}");
                    }
                }
            }
            self.fire_timers();
            self.settle(MAX_LAUNCHES).await?;
        }
        // Give the master a moment to receive and acknowledge the terminal updates; what
        // is not acknowledged is checkpointed and resent by the next agent anyway.
        let drain_deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while self.session.is_some() && self.core.updates.core().total_pending() > 0 {
            let wake = self.next_wake();
            tokio::select! {
                _ = tokio::time::sleep_until(drain_deadline) => break,
                _ = sleep_until(wake) => {}
                Some(ev) = events.recv() => self.on_event(ev),
                Some(ev) = link.recv() => {
                    self.on_link(ev)?;
                }
            }
            self.fire_timers();
            self.settle(MAX_LAUNCHES).await?;
        }
        self.commit()?;
        self.refresh_gauges();
        Ok(())
    }

    fn on_link(&mut self, ev: LinkEvent) -> Result<Option<Exit>, AgentError> {
        match ev {
            LinkEvent::NeedRegistration(reply) => {
                let id = self.next_id();
                self.pending.insert(id, Pending::Registration(reply));
                self.core.ask(id, Query::Registration);
            }
            LinkEvent::Registered {
                agent_id,
                master,
                outbound,
                ..
            } => {
                self.persist_agent_id(&agent_id)?;
                self.core.on_registered(now(), agent_id, master);
                self.session = Some(Session { outbound });
            }
            LinkEvent::Disconnected { master, error } => {
                tracing::warn!(%master, "lost the master: {error}");
                self.session = None;
                self.core.on_disconnected();
            }
            LinkEvent::Message(msg) => return self.core.on_master_message(now(), *msg),
        }
        Ok(None)
    }

    /// Persists a new agent id (fsync'd) before anything else happens under it.
    fn persist_agent_id(&self, agent_id: &AgentId) -> Result<(), AgentError> {
        if self.core.agent_id.as_ref() == Some(agent_id) {
            return Ok(());
        }
        let path = self.layout().agent_id_file();
        write_atomic(&path, agent_id.as_str().as_bytes())
            .ctx(|| format!("persisting the agent id to {}", path.display()))
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::TaskEnded { key, result } => self.core.on_task_ended(now(), &key, result),
            Event::Api(api::StateRequest::GetState(reply)) => {
                let id = self.next_id();
                self.pending.insert(id, Pending::State(reply));
                self.core.ask(id, Query::State);
            }
            // Answered at once: nothing in these needs to be durable.
            Event::Api(api::StateRequest::TaskActive { key, reply }) => {
                let _ = reply.send(views::task_active(&self.core, &key));
            }
            Event::Disk(disk::Request::ActiveTasks(reply)) => {
                let _ = reply.send(views::watched_tasks(&self.core));
            }
            Event::Gc(gc::Request::KnownTasks(reply)) => {
                let _ = reply.send(views::known_keys(&self.core));
            }
            Event::Executor(request) => self.on_executor_request(request),
            Event::Check(report) => self.core.on_check_report(now(), report),
        }
    }

    fn on_executor_request(&mut self, request: ExecutorRequest) {
        let id = self.next_id();
        match request {
            ExecutorRequest::Subscribe {
                request,
                events,
                pending_messages,
                reply,
            } => {
                let subscription = self.next_id();
                self.subscribers.insert(
                    subscription,
                    Subscriber {
                        events,
                        pending_messages,
                    },
                );
                self.pending.insert(
                    id,
                    Pending::Call {
                        answer: reply,
                        subscription: Some(subscription),
                    },
                );
                self.core
                    .on_executor_subscribe(now(), request, subscription, id);
            }
            ExecutorRequest::Update { call, reply } => {
                self.pending.insert(
                    id,
                    Pending::Call {
                        answer: reply,
                        subscription: None,
                    },
                );
                self.core.on_executor_update(now(), call, id);
            }
            ExecutorRequest::Message { call, reply } => {
                self.pending.insert(
                    id,
                    Pending::Call {
                        answer: reply,
                        subscription: None,
                    },
                );
                self.core.on_executor_message(now(), call, id);
            }
        }
    }

    pub(crate) fn refresh_gauges(&self) {
        self.metrics
            .set_tasks_running(self.core.tasks.values().filter(|e| !e.terminal).count());
        self.metrics
            .set_updates_pending(self.core.updates.core().total_pending());
    }
}

/// The gRPC status an executor sees for a refusal.
/// Messages are bounded, so that the error reaches the executor whatever it quotes.
fn to_status(refusal: Refusal) -> Status {
    let b = drover_proto::bound_error_message;
    match refusal {
        Refusal::NotFound(m) => Status::not_found(b(m)),
        Refusal::InvalidArgument(m) => Status::invalid_argument(b(m)),
        Refusal::Unavailable(m) => Status::unavailable(b(m)),
        Refusal::PermissionDenied(m) => Status::permission_denied(b(m)),
        Refusal::FailedPrecondition(m) => Status::failed_precondition(b(m)),
        Refusal::ResourceExhausted(m) => Status::resource_exhausted(b(m)),
        Refusal::Aborted(m) => Status::aborted(b(m)),
    }
}

/// Releases an ended group's namespaces, then removes its executor folder with the
/// shared volume (which lives as long as the group: a later group under the same
/// executor id starts empty, and nothing of it piles up on the agent). The folder
/// stays while a namespace mount in it could not be undone.
fn destroy_holder(layout: &Layout, gk: &GroupKey) {
    let dir = layout.executor_dir(gk.framework_id.as_str(), gk.executor_id.as_str());
    let ns = dir.join("ns");
    if ns.exists() {
        match holder::destroy(&ns) {
            Ok(()) => {
                tracing::info!(group = ?gk, "task group ended; its namespaces are released")
            }
            Err(e) => {
                tracing::warn!(group = ?gk, "tearing down the task group's namespaces: {e}");
                return;
            }
        }
    }
    // `remove_dir_all` removes symlinks the tasks left, never what they point to.
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(group = ?gk, "removing {}: {e}", dir.display());
        }
    }
}

async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}
