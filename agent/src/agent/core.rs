//! [`AgentCore`]: every decision of the agent, as a synchronous state machine.
//!
//! The core owns the agent's state (tasks, task groups, custom executors, the status
//! update streams, the latest check results) and nothing that talks: no containerizer,
//! no channel, no clock. Its handlers (`on_*`, in this file and in `tasks.rs`,
//! `groups.rs`, `executors/`, `health.rs`) take the time as a [`Now`] and one input
//! (a master's message, a container's end, a round of launch results, an executor's
//! call, a check's report, a timer), change the state, stage checkpoint records in the
//! [`Journal`], and push [`Effect`]s onto a list the driver takes with
//! [`AgentCore::take_effects`].
//!
//! The rule the driver keeps (see `driver.rs`): the journal records and the status update
//! streams a batch of inputs changed are made durable (one group commit) before any
//! effect of that batch is carried out. So a task is checkpointed before it is launched,
//! an update before it is sent, an acknowledgement before it is answered. Status updates
//! leave only through [`AgentCore::after_commit`], which the driver calls right after a
//! commit. What an effect's outcome changes comes back as another input (a launch's
//! result, a container's end) and waits for the next commit like any other.
//!
//! What the core still does on disk, deliberately: staging in the journal, and the
//! directories and files a task needs before its checkpoint can be durable (its meta
//! directory and sandbox with empty `stdout`/`stderr`, a task group's shared volume, the
//! clearing of an earlier executor's records), the directories made through
//! [`Journal::create_dir_all`] so the batch's commit syncs them. Failing to make them is the handler's decision
//! (TASK_FAILED), which is why they are not effects. It also reads the work dir (whether a
//! task already ran here, a disk limitation's figures). Unit tests give the core a
//! temporary work dir (`core_tests/`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_proto::pb::{self, master_message::Msg, task_status::Reason, TaskState};
use drover_proto::{states, AgentId};

use super::executors::{Executors, Refusal, Timer};
use super::groups::{Group, GroupKey};
use super::health::Health;
use crate::checks::Place;
use crate::config::Settings;
use crate::containerizer::LaunchSpec;
use crate::error::AgentError;
use crate::journal::{Journal, Record, TaskCheckpoint};
use crate::layout::{Layout, TaskKey};
use crate::metrics::Metrics;
use crate::status_updates::checkpoint::StatusUpdates;
use crate::status_updates::{RetryPolicy, StatusUpdate};

/// The time as the driver read it for one input: a steady-clock instant for every deadline
/// (retries, timers, rate windows) and the wall clock for the timestamps of updates.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now {
    pub instant: Instant,
    pub unix_seconds: f64,
}

impl Now {
    /// `self` moved on by `d` (both clocks).
    #[cfg(test)]
    pub(crate) fn after(self, d: Duration) -> Now {
        Now {
            instant: self.instant + d,
            unix_seconds: self.unix_seconds + d.as_secs_f64(),
        }
    }
}

/// Where the core's fresh ids (status update uuids) come from: random in the daemon
/// ([`RandomIds`]), a sequence in tests, so that the same inputs give the same effects.
pub(crate) trait Ids: Send {
    /// A fresh, unique 16-byte id.
    fn uuid(&mut self) -> [u8; 16];
}

/// Version 4 (random) uuids: the daemon's [`Ids`].
pub(crate) struct RandomIds;

impl Ids for RandomIds {
    fn uuid(&mut self) -> [u8; 16] {
        *uuid::Uuid::new_v4().as_bytes()
    }
}

/// 1, 2, 3, ... as big-endian 16-byte ids: the tests' [`Ids`].
#[cfg(test)]
#[derive(Default)]
pub(crate) struct SequentialIds(u128);

#[cfg(test)]
impl Ids for SequentialIds {
    fn uuid(&mut self) -> [u8; 16] {
        self.0 += 1;
        self.0.to_be_bytes()
    }
}

/// Names a request the driver holds the reply channel of (a `GetState`, a master link's
/// registration, an executor's call): the core answers by id.
pub(crate) type ReplyId = u64;

/// Names one subscription of a custom executor: the driver holds its event stream.
pub(crate) type SubscriptionId = u64;

/// An answer computed from the agent's state when it is given, after the batch's commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Query {
    /// `GetState` (see `views.rs`).
    State,
    /// The master link asks what to register with (see `views.rs`).
    Registration,
}

/// A container to start, with what the driver prepares for it.
#[derive(Clone, Debug)]
pub(crate) struct Launch {
    pub spec: LaunchSpec,
    /// For a task of a group, when the agent runs as root: the group's namespace holder
    /// directory and whether it holds an ISOLATED network too.
    pub holder: Option<(std::path::PathBuf, bool)>,
}

/// What the core asks the driver to carry out once the batch that produced it is
/// durable. Carried out in order.
#[derive(Clone, Debug)]
pub(crate) enum Effect {
    /// Start a container; its result comes back through [`AgentCore::on_launched`].
    Launch(Box<Launch>),
    /// The task was killed while its launch waits: if the driver has not started the
    /// container yet, it drops the launch and tells [`AgentCore::on_launch_withdrawn`];
    /// otherwise the kill waits for the launch's result, as the core arranged.
    WithdrawLaunch(TaskKey),
    /// SIGTERM the container now and SIGKILL it after `grace`; its end comes back through
    /// [`AgentCore::on_task_ended`] (the container's waiter).
    Kill {
        key: TaskKey,
        grace: Duration,
        reason: Reason,
    },
    /// Follow a container until it ends ([`AgentCore::on_task_ended`]).
    Watch(TaskKey),
    /// Start the checks of a running task (reports come back through
    /// [`AgentCore::on_check_report`]).
    StartChecks {
        key: TaskKey,
        task: Box<pb::TaskInfo>,
        place: Place,
    },
    /// Stop the checks of a task.
    StopChecks(TaskKey),
    /// A message to the connected master.
    Send(pb::AgentMessage),
    /// An event to one subscription of a custom executor.
    ToExecutor {
        subscription: SubscriptionId,
        event: Box<pb::ExecutorEvent>,
    },
    /// End one subscription of a custom executor with this error.
    EndSubscription {
        subscription: SubscriptionId,
        why: Refusal,
    },
    /// Answer an executor's call.
    Answer {
        reply: ReplyId,
        result: Result<(), Refusal>,
    },
    /// Answer a request from the agent's state as it is when the answer is given.
    Reply { reply: ReplyId, query: Query },
    /// Call [`AgentCore::on_timer`] with `timer` at `at`.
    Timer { at: Instant, timer: Timer },
    /// Record that the task's terminal update was acknowledged (for the collector).
    MarkCompleted(TaskKey),
    /// Release an ended task group's namespaces and remove its executor folder.
    DestroyGroup(GroupKey),
    /// Make (durably, and empty) the shared volume of a group started in the batch that
    /// tore down the previous group of the same executor id: that teardown removed it.
    RenewSharedVolume(GroupKey),
}

/// Why the agent stops.
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

/// See the module docs.
pub(crate) struct AgentCore {
    pub(crate) settings: Arc<Settings>,
    pub(crate) layout: Layout,
    pub(crate) info: pb::AgentInfo,
    pub(crate) agent_id: Option<AgentId>,
    pub(crate) tasks: BTreeMap<TaskKey, TaskEntry>,
    pub(crate) updates: StatusUpdates,
    pub(crate) metrics: Arc<Metrics>,
    /// Set while shutting down: new launches are refused (dropped; the master will
    /// reconcile them when the agent is back).
    pub(crate) stopping: bool,
    /// The checkpoint log: handlers stage records, the driver commits.
    pub(crate) journal: Journal,
    /// Task groups with a task that has not ended (see `groups.rs`).
    pub(crate) groups: BTreeMap<GroupKey, Group>,
    /// Containers asked for ([`Effect::Launch`]) whose result has not come back.
    pub(crate) launching: BTreeSet<TaskKey>,
    /// Kills of tasks whose launch is under way: the launch is withdrawn if it has not
    /// started ([`Effect::WithdrawLaunch`], the task then ends KILLED without a
    /// container); otherwise carried out once the container exists, so the kill meets it
    /// (and the task's story stays STARTING, RUNNING, KILLED).
    pub(crate) kills_after_launch: BTreeMap<TaskKey, (Option<pb::KillPolicy>, Reason)>,
    /// Latest check results of running tasks.
    pub(crate) health: Health,
    /// The connected master, if any: status updates go out only while there is one.
    pub(crate) master: Option<String>,
    /// Custom executors; see `executors/`.
    pub(crate) executors: Executors,
    /// The agent runs as root: task groups get namespace holders (linux containers).
    pub(crate) root: bool,
    /// The time of the input being handled.
    pub(crate) now: Now,
    /// Fresh ids (see [`Ids`]).
    ids: Box<dyn Ids>,
    /// Counts the status updates enqueued and the executors' messages relayed, so they
    /// leave in the order they came (see [`Self::after_commit`]).
    order: u64,
    /// For each task with updates enqueued since the last commit: the first of them (its
    /// place in [`Self::order`] and its uuid).
    first_enqueued: BTreeMap<TaskKey, (u64, Vec<u8>)>,
    /// Executors' messages to their frameworks since the last commit, with their place.
    relayed: Vec<(u64, pb::AgentMessage)>,
    effects: Vec<Effect>,
}

impl AgentCore {
    pub(crate) fn new(
        settings: Arc<Settings>,
        info: pb::AgentInfo,
        agent_id: Option<AgentId>,
        metrics: Arc<Metrics>,
        journal: Journal,
        root: bool,
        now: Now,
    ) -> Self {
        let policy = RetryPolicy {
            initial: settings.status_update_retry,
            ..RetryPolicy::default()
        };
        AgentCore {
            layout: Layout::new(&settings.work_dir),
            updates: StatusUpdates::new(policy),
            settings,
            info,
            agent_id,
            tasks: BTreeMap::new(),
            metrics,
            stopping: false,
            journal,
            groups: BTreeMap::new(),
            launching: BTreeSet::new(),
            kills_after_launch: BTreeMap::new(),
            health: Health::default(),
            master: None,
            executors: Executors::default(),
            root,
            now,
            ids: Box::new(RandomIds),
            order: 0,
            first_enqueued: BTreeMap::new(),
            relayed: Vec::new(),
            effects: Vec::new(),
        }
    }

    /// The core with its ids from `ids` instead of [`RandomIds`] (tests, a simulation).
    #[cfg(test)]
    pub(crate) fn with_ids(mut self, ids: Box<dyn Ids>) -> Self {
        self.ids = ids;
        self
    }

    /// Adds an effect for the driver.
    pub(crate) fn push(&mut self, effect: Effect) {
        self.effects.push(effect);
    }

    /// The effects staged so far.
    pub(crate) fn effects(&self) -> &[Effect] {
        &self.effects
    }

    /// Drops staged effects that no longer apply.
    pub(crate) fn retain_effects(&mut self, keep: impl FnMut(&Effect) -> bool) {
        self.effects.retain(keep);
    }

    /// Everything staged since the last call; the driver carries it out after a commit.
    pub(crate) fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// True when something waits for a commit or for the driver.
    pub(crate) fn unsettled(&self) -> bool {
        !self.journal.is_clean()
            || self.updates.is_dirty()
            || !self.effects.is_empty()
            || !self.relayed.is_empty()
    }

    /// True when everything the agent's state says is on disk.
    pub(crate) fn is_durable(&self) -> bool {
        self.journal.is_clean() && !self.updates.is_dirty()
    }

    /// The status update streams changed since the last commit, staged with the rest of
    /// the batch's records. The driver calls this right before it commits.
    pub(crate) fn stage_updates(&mut self) {
        for change in self.updates.take_checkpoints() {
            self.journal.stage(&change.into());
        }
    }

    /// Right after a commit: every status update due now (new heads, retries) goes to
    /// the master, if one is connected, with the executors' messages relayed since the
    /// last commit. Only here: what is sent is on disk. They go ahead of the batch's other
    /// effects, so a KILLING is on its way before the kill's first signal; among
    /// themselves, updates enqueued before this batch first, then the batch's updates
    /// and messages in the order they came, so an executor's message and its next
    /// update (or its update and its next message) reach the master in that order.
    pub(crate) fn after_commit(&mut self, now: Now) {
        self.now = now;
        let first_enqueued = std::mem::take(&mut self.first_enqueued);
        let relayed = std::mem::take(&mut self.relayed);
        if self.master.is_none() {
            return;
        }
        let due = self.updates.due(now.instant);
        let mut out: Vec<(u64, pb::AgentMessage)> = due
            .into_iter()
            .map(|(key, update)| {
                let place = match first_enqueued.get(&key) {
                    Some((place, uuid)) if *uuid == update.status.uuid => *place,
                    // Enqueued before this batch (a retry, a head its ack uncovered).
                    _ => 0,
                };
                (place, update.to_message())
            })
            .collect();
        out.extend(relayed);
        out.sort_by_key(|(place, _)| *place);
        let sends = out.into_iter().map(|(_, msg)| Effect::Send(msg));
        self.effects.splice(0..0, sends);
    }

    /// Enqueues a status update (checkpointed by the batch's commit, sent after it).
    pub(crate) fn enqueue_update(&mut self, key: &TaskKey, update: StatusUpdate) {
        self.order += 1;
        self.first_enqueued
            .entry(key.clone())
            .or_insert_with(|| (self.order, update.status.uuid.clone()));
        self.updates.enqueue(key, update);
    }

    /// An executor's message to its framework, sent after the batch's commit in its
    /// place among the batch's status updates.
    pub(crate) fn relay(&mut self, message: pb::AgentMessage) {
        self.order += 1;
        self.relayed.push((self.order, message));
    }

    /// When the core next wants [`Self::after_commit`] for a retry.
    pub(crate) fn next_retry(&self) -> Option<Instant> {
        self.master.as_ref().and(self.updates.core().next_retry())
    }

    /// The records of everything live, for the log's compaction (right after a commit,
    /// when the state is exactly what is durable).
    pub(crate) fn live_records(&self) -> Vec<Record> {
        let updates = self.updates.core();
        let mut out = Vec::new();
        for (key, entry) in &self.tasks {
            if key.validate().is_err() {
                continue;
            }
            out.push(Record::Task {
                key: key.clone(),
                task: Box::new(entry.checkpoint.clone()),
            });
            if let Some(stream) = updates.checkpoint(key) {
                out.push(Record::Updates {
                    key: key.clone(),
                    stream,
                });
            }
        }
        out.extend(self.executor_records());
        out
    }

    /// A request answered from the state once the batch it arrived in is durable.
    pub(crate) fn ask(&mut self, reply: ReplyId, query: Query) {
        self.effects.push(Effect::Reply { reply, query });
    }

    /// The master link registered the agent (its id already persisted by the driver).
    pub(crate) fn on_registered(&mut self, now: Now, agent_id: AgentId, master: String) {
        self.now = now;
        if self.agent_id.as_ref() != Some(&agent_id) {
            if let Some(old) = &self.agent_id {
                tracing::warn!(old = %old, new = %agent_id, "the master gave this agent a new id");
            }
            self.agent_id = Some(agent_id);
        }
        self.master = Some(master);
        self.metrics.registered();
        // Every unacknowledged head goes out again on the new stream.
        self.updates.core_mut().resend_all();
    }

    /// The master link lost its master: updates wait for the next registration.
    pub(crate) fn on_disconnected(&mut self) {
        self.master = None;
    }

    /// A message of the leading master.
    pub(crate) fn on_master_message(
        &mut self,
        now: Now,
        msg: pb::MasterMessage,
    ) -> Result<Option<Exit>, AgentError> {
        self.now = now;
        match msg.msg {
            Some(Msg::RunTask(rt)) => self.on_run_task(rt)?,
            Some(Msg::RunTaskGroup(g)) => self.on_run_task_group(g)?,
            Some(Msg::KillTask(k)) => {
                let key = TaskKey {
                    framework_id: k.framework_id.unwrap_or_default(),
                    task_id: k.task_id.unwrap_or_default(),
                };
                self.on_kill_task(&key, k.kill_policy, Reason::KilledByFramework);
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
                    self.on_kill_task(&key, None, Reason::FrameworkRemoved);
                }
                self.shut_down_framework_executors(&fw);
            }
            Some(Msg::FrameworkMessage(m)) => self.on_framework_message(m),
            Some(Msg::ShutdownExecutor(s)) => {
                let fw = s.framework_id.unwrap_or_default();
                let executor_id = s.executor_id.unwrap_or_default();
                self.on_shutdown_executor(&fw, &executor_id);
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
                    self.effects.push(Effect::MarkCompleted(key.clone()));
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

    /// The agent stops and kills what runs (`reason` tells the tasks' terminal updates
    /// why): every custom executor's container and every task that has one. Returns the
    /// longest grace period given.
    pub(crate) fn kill_all(&mut self, now: Now, reason: Reason) -> Duration {
        self.now = now;
        self.stopping = true;
        self.kill_all_executors();
        let running: Vec<TaskKey> = self
            .tasks
            .iter()
            .filter(|(_, e)| !e.terminal && e.watched)
            .map(|(k, _)| k.clone())
            .collect();
        let mut longest = Duration::ZERO;
        for key in running {
            let grace = self.grace_for(&key, None);
            longest = longest.max(grace);
            tracing::info!(task = %key, "killing the task before exiting");
            self.stop_checks(&key);
            self.effects.push(Effect::Kill { key, grace, reason });
        }
        longest
    }

    /// True while a task's container runs.
    pub(crate) fn any_running(&self) -> bool {
        self.tasks.values().any(|e| !e.terminal && e.watched)
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
            timestamp: self.now.unix_seconds,
            uuid: self.ids.uuid().to_vec(),
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
        self.enqueue_update(
            key,
            StatusUpdate {
                framework_id: key.framework_id.clone(),
                status,
            },
        );
    }

    pub(crate) fn latest_state(&self, key: &TaskKey) -> TaskState {
        self.updates
            .core()
            .latest_state(key)
            .unwrap_or(TaskState::TaskStaging)
    }

    /// Creates the meta directory of a valid key and stages the task's checkpoint; both
    /// are durable once the batch commits, before the task is launched.
    pub(crate) fn checkpoint_task(
        &mut self,
        key: &TaskKey,
        cp: &TaskCheckpoint,
    ) -> Result<(), AgentError> {
        use crate::error::IoContext;
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

    /// Follows the task's container from now on (launched, or found by recovery).
    pub(crate) fn watch(&mut self, key: &TaskKey, containerizer: Option<&'static str>) {
        if let Some(e) = self.tasks.get_mut(key) {
            e.watched = true;
            e.containerizer = containerizer.or(e.containerizer);
        }
        self.effects.push(Effect::Watch(key.clone()));
    }
}
