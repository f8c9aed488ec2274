//! Custom executors: programs of a framework's, written with the SDK's `Executor` trait,
//! that the agent starts for the framework's tasks and that subscribe back to the agent's
//! `Executor` service.
//!
//! An executor runs in a container of its own, started through the containerizers like a
//! task (supervisor, cgroups, recovery), under the key [`TaskKey::executor`]: its
//! `TaskInfo` (built from the `ExecutorInfo`) is checkpointed in the checkpoint log next to
//! the tasks, its sandbox is `sandboxes/<fw>/executor+<id>`. One executor per (framework,
//! executor id) runs at a time; the tasks that name it while it runs join it.
//!
//! Life of an executor:
//! - `Launching`: the first task naming it arrived; the container starts once the batch
//!   is durable. Its tasks wait.
//! - `Registering`: the container runs; it has `--executor-registration-timeout-secs` to
//!   subscribe, else it is killed and its tasks fail with
//!   REASON_EXECUTOR_REGISTRATION_TIMEOUT.
//! - `Subscribed`: it received SUBSCRIBED and a LAUNCH for every task it does not already
//!   run; its updates go through the status update manager like any other.
//! - `ShuttingDown`: it has no live task left (or its framework is shut down). It gets
//!   SHUTDOWN, and its container is killed if it has not exited [`SHUTDOWN_GRACE`] later.
//!
//! When its container ends, each of its tasks that has not ended is reported: TASK_KILLED
//! if a kill was asked for, else TASK_FAILED with REASON_EXECUTOR_TERMINATED (or the
//! registration timeout's reason). A kill of one of its tasks becomes a KILL event; if the
//! task is still running the task's grace period plus [`SHUTDOWN_GRACE`] later, the agent
//! kills the executor's container.
//!
//! Everything an executor is told (events) and every answer to its calls waits for the
//! batch's durability point, like everything else that leaves the agent.
//!
//! `calls.rs` handles the executor's calls and what goes back to it; `recovery.rs`, its
//! checkpoint and its return after an agent restart.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use drover_proto::ids::validate_id;
mod calls;
mod recovery;

use drover_proto::pb::{
    self, executor_event, task_status::Reason, task_status::Source, ExecutorEvent, TaskState,
};
use drover_proto::{ExecutorId, FrameworkId, TaskId};

use super::core::{AgentCore, Effect, Launch, SubscriptionId};
use super::recovery::RecoveredTask;
pub use crate::api::ExecutorRequest;
use crate::containerizer::{terminal_status, LaunchSpec, Termination};
use crate::error::AgentError;
use crate::journal::{Record, TaskCheckpoint};
use crate::layout::TaskKey;

/// Between SHUTDOWN and the kill of an executor's container; also the slack an executor
/// gets beyond a task's grace period to report a killed task.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Most framework messages queued to one executor and not yet taken by its stream: an
/// executor that does not read while its framework keeps sending must not grow the
/// agent's memory. Beyond it messages are dropped (they are best effort anyway).
pub const MAX_PENDING_MESSAGES: usize = 64;

/// Most messages one executor may send its framework per second. They share the agent's
/// one stream to the master with every task's status updates, so an executor (user
/// code) must not be able to flood it; beyond, `Message` answers RESOURCE_EXHAUSTED.
pub const MAX_MESSAGES_PER_SECOND: u32 = 100;
/// Why the agent refuses an executor's call, or ends its subscription: the kinds of
/// refusal the `Executor` service tells apart (the driver maps each to a gRPC code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotFound(String),
    InvalidArgument(String),
    /// Retryable: subscribe (again), or send later.
    Unavailable(String),
    PermissionDenied(String),
    FailedPrecondition(String),
    ResourceExhausted(String),
    /// The subscription ended (replaced by a newer one, or the container ended).
    Aborted(String),
}

/// A timer of an executor (see the module docs), set with [`Effect::Timer`].
#[derive(Debug, Clone)]
pub(crate) struct Timer {
    key: TaskKey,
    generation: u64,
    kind: TimerKind,
}

#[derive(Debug, Clone)]
enum TimerKind {
    Registration,
    Shutdown,
    KillTask(TaskId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Launching,
    Registering,
    Subscribed,
    ShuttingDown,
}

struct ExecutorEntry {
    checkpoint: TaskCheckpoint,
    info: pb::ExecutorInfo,
    phase: Phase,
    /// Its tasks that have not ended.
    tasks: BTreeSet<TaskId>,
    /// Tasks the current subscriber has (launched to it, or named on subscription).
    sent: BTreeSet<TaskId>,
    /// Tasks a kill was asked for, with its reason.
    killing: BTreeMap<TaskId, Reason>,
    /// The current subscription (the driver holds its stream).
    subscriber: Option<SubscriptionId>,
    /// Its container exists and is watched.
    watched: bool,
    /// Changes whenever a pending timer must no longer act.
    generation: u64,
    timed_out: bool,
    /// The executor's messages to its framework in the current one-second window: when
    /// it began and how many (see [`MAX_MESSAGES_PER_SECOND`]).
    message_window: Option<(Instant, u32)>,
}

/// The core's executor table.
#[derive(Default)]
pub(crate) struct Executors {
    entries: BTreeMap<TaskKey, ExecutorEntry>,
    counter: u64,
    /// Uuids of the acknowledged updates of executors' live tasks (the latest few per
    /// task, in memory only): a resend of one after a reconnection is answered with its
    /// acknowledgement instead of being delivered again.
    acknowledged: BTreeMap<TaskKey, Vec<Vec<u8>>>,
}

impl Executors {
    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// Whether the custom executor of `ekey` ([`TaskKey::executor`]) is starting or runs.
    pub(crate) fn runs(&self, ekey: &TaskKey) -> bool {
        self.entries.contains_key(ekey)
    }

    /// The keys of the executors the agent runs or is starting.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &TaskKey> {
        self.entries.keys()
    }

    /// The keys of the executors whose containers run and are watched.
    pub(crate) fn watched_keys(&self) -> impl Iterator<Item = &TaskKey> {
        self.entries
            .iter()
            .filter(|(_, e)| e.watched)
            .map(|(key, _)| key)
    }

    /// Number of executors the agent runs or is starting.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The task's executor, when it names a CUSTOM one.
pub(crate) fn custom_executor(task: &pb::TaskInfo) -> Option<&pb::ExecutorInfo> {
    task.executor
        .as_ref()
        .filter(|e| e.r#type == pb::executor_info::Type::Custom as i32)
}

/// Why a task's executor cannot run, if it cannot (the agent's own check of what the
/// master's gate checks).
pub(crate) fn invalid_executor(task: &pb::TaskInfo) -> Option<String> {
    let info = task.executor.as_ref()?;
    if info.r#type != pb::executor_info::Type::Custom as i32 {
        return Some("a single task runs on the command executor or on a CUSTOM executor; DEFAULT executors run task groups".into());
    }
    let id = info.executor_id.clone().unwrap_or_default();
    if let Err(e) = validate_id("executor", id.as_str()) {
        return Some(e);
    }
    let command = info.command.as_ref();
    let empty = command.is_none_or(|c| {
        c.value.trim().is_empty() && c.arguments.first().is_none_or(|a| a.trim().is_empty())
    });
    if empty {
        return Some(format!("executor {id} has no command"));
    }
    if info
        .container
        .as_ref()
        .is_some_and(|c| c.r#type == pb::container_info::Type::Docker as i32)
    {
        return Some(format!(
            "executor {id} asks for a DOCKER container; custom executors run in linux or process containers"
        ));
    }
    None
}

/// Two launches name the same executor only with the same description (the framework
/// id is the master's to fill in).
fn same_executor(a: &pb::ExecutorInfo, b: &pb::ExecutorInfo) -> bool {
    let strip = |e: &pb::ExecutorInfo| pb::ExecutorInfo {
        framework_id: None,
        ..e.clone()
    };
    strip(a) == strip(b)
}

pub(crate) fn executor_id_of(task: &pb::TaskInfo) -> Option<ExecutorId> {
    custom_executor(task).map(|e| e.executor_id.clone().unwrap_or_default())
}

fn event(e: executor_event::Event) -> ExecutorEvent {
    ExecutorEvent { event: Some(e) }
}

impl AgentCore {
    /// `run_task` of a task that names a CUSTOM executor (already validated and
    /// checkpointed, in the task table): it joins its running executor, or starts one.
    pub(crate) fn run_on_executor(
        &mut self,
        key: &TaskKey,
        checkpoint: &TaskCheckpoint,
    ) -> Result<(), AgentError> {
        let Some(info) = custom_executor(&checkpoint.task).cloned() else {
            return Ok(());
        };
        let id = info.executor_id.clone().unwrap_or_default();
        let ekey = TaskKey::executor(&key.framework_id, &id);
        if let Some(entry) = self.executors.entries.get_mut(&ekey) {
            if !same_executor(&entry.info, &info) {
                self.enqueue_status(
                    key,
                    TaskState::TaskError,
                    Source::Agent,
                    Reason::TaskInvalid,
                    format!(
                        "executor {id} already runs here with a different ExecutorInfo; every task naming it must carry the same one"
                    ),
                    None,
                );
                return Ok(());
            }
            if entry.phase == Phase::ShuttingDown {
                self.enqueue_status(
                    key,
                    TaskState::TaskFailed,
                    Source::Agent,
                    Reason::ExecutorTerminated,
                    format!(
                        "executor {id} is shutting down; launch the task again to start a new one"
                    ),
                    None,
                );
                return Ok(());
            }
            entry.tasks.insert(key.task_id.clone());
            if entry.phase == Phase::Subscribed {
                self.send_launch(&ekey, key);
            }
            return Ok(());
        }

        // A new executor. An earlier one of this id left its container's records in the
        // meta directory: they must not be read as the new container's.
        let meta = self.layout.task_meta(&ekey);
        // An earlier container's root filesystem still mounted there must not be removed
        // through its mount; that, or any failure to clear the records, fails this task
        // only (never the agent).
        let cleared = if meta.dir().join("image").exists() {
            Err(format!(
                "the previous executor {id}'s root filesystem is still mounted in {}",
                meta.dir().display()
            ))
        } else {
            match std::fs::remove_dir_all(meta.dir()) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(format!("cannot clear {}: {e}", meta.dir().display())),
            }
        };
        if let Err(why) = cleared {
            tracing::warn!(executor = %ekey, task = %key, "cannot start the executor: {why}");
            self.enqueue_status(
                key,
                TaskState::TaskFailed,
                Source::Agent,
                Reason::ContainerLaunchFailed,
                format!("cannot start executor {id}: {why}"),
                None,
            );
            return Ok(());
        }
        let mut command = info.command.clone().unwrap_or_default();
        for (name, value) in [
            (
                "DROVER_AGENT_ENDPOINT",
                format!("http://{}", self.info.address),
            ),
            ("DROVER_EXECUTOR_ID", id.to_string()),
        ] {
            command.environment.retain(|e| e.name != name);
            command.environment.push(pb::EnvironmentVariable {
                name: name.into(),
                value,
            });
        }
        let task = pb::TaskInfo {
            name: format!("executor {id}"),
            task_id: Some(ekey.task_id.clone()),
            agent_id: self.agent_id.clone(),
            resources: info.resources.clone(),
            command: Some(command),
            container: info.container.clone(),
            executor: Some(info.clone()),
            ..Default::default()
        };
        let cp = TaskCheckpoint {
            framework_id: key.framework_id.clone(),
            framework_info: checkpoint.framework_info.clone(),
            task: task.clone(),
        };
        self.checkpoint_task(&ekey, &cp)?;
        let sandbox = self.layout.sandbox(&ekey);
        if let Err(e) = super::tasks::create_sandbox(&mut self.journal, &sandbox) {
            self.enqueue_status(
                key,
                TaskState::TaskFailed,
                Source::Agent,
                Reason::ContainerLaunchFailed,
                format!(
                    "cannot create the sandbox of executor {id} ({}): {e}",
                    sandbox.display()
                ),
                None,
            );
            self.journal.stage(&Record::Completed { key: ekey });
            return Ok(());
        }
        tracing::info!(executor = %ekey, task = %key, "starting a custom executor");
        self.launching.insert(ekey.clone());
        self.push(Effect::Launch(Box::new(Launch {
            spec: LaunchSpec {
                key: ekey.clone(),
                task: self.as_launched(&cp),
                agent_id: self.agent_id.clone().unwrap_or_default(),
                sandbox,
                meta,
                group: None,
            },
            holder: None,
        })));
        let generation = self.executors.next();
        self.executors.entries.insert(
            ekey,
            ExecutorEntry {
                checkpoint: cp,
                info,
                phase: Phase::Launching,
                tasks: BTreeSet::from([key.task_id.clone()]),
                sent: BTreeSet::new(),
                killing: BTreeMap::new(),
                subscriber: None,
                watched: false,
                generation,
                timed_out: false,
                message_window: None,
            },
        );
        Ok(())
    }

    fn send_launch(&mut self, ekey: &TaskKey, key: &TaskKey) {
        let Some(task) = self.tasks.get(key).map(|e| e.checkpoint.task.clone()) else {
            return;
        };
        let Some(entry) = self.executors.entries.get_mut(ekey) else {
            return;
        };
        entry.sent.insert(key.task_id.clone());
        self.tell_executor(
            ekey,
            event(executor_event::Event::Launch(executor_event::Launch {
                task: Some(task),
            })),
        );
    }

    /// An event for the executor's current subscription (none: it is not told).
    fn tell_executor(&mut self, ekey: &TaskKey, event: ExecutorEvent) {
        let subscription = self.executors.entries.get(ekey).and_then(|e| e.subscriber);
        if let Some(subscription) = subscription {
            self.push(Effect::ToExecutor {
                subscription,
                event: Box::new(event),
            });
        }
    }

    /// The container of an executor started (or could not).
    pub(crate) fn on_executor_launched(&mut self, ekey: &TaskKey, result: Result<(), AgentError>) {
        match result {
            Ok(()) => {
                self.metrics.task_launched();
                self.push(Effect::Watch(ekey.clone()));
                let generation = self.executors.next();
                let timeout = self.settings.executor_registration_timeout;
                let Some(entry) = self.executors.entries.get_mut(ekey) else {
                    return;
                };
                entry.watched = true;
                if entry.phase == Phase::ShuttingDown {
                    // Its tasks were all killed while it was starting.
                    self.kill_executor_container(ekey);
                    return;
                }
                entry.phase = Phase::Registering;
                entry.generation = generation;
                self.schedule(ekey, generation, TimerKind::Registration, timeout);
            }
            Err(e) => {
                tracing::warn!(executor = %ekey, "the executor could not start: {e}");
                let Some(entry) = self.executors.entries.remove(ekey) else {
                    return;
                };
                for task_id in entry.tasks {
                    let key = TaskKey {
                        framework_id: ekey.framework_id.clone(),
                        task_id,
                    };
                    self.enqueue_status(
                        &key,
                        TaskState::TaskFailed,
                        Source::Agent,
                        Reason::ContainerLaunchFailed,
                        format!("the task's executor could not start: {e}"),
                        None,
                    );
                }
                self.journal.stage(&Record::Completed { key: ekey.clone() });
            }
        }
    }

    /// An executor's container ended: its tasks that have not ended are reported.
    pub(crate) fn on_executor_ended(
        &mut self,
        ekey: &TaskKey,
        result: Result<Termination, AgentError>,
    ) {
        let Some(entry) = self.executors.entries.remove(ekey) else {
            return;
        };
        let how = match &result {
            Ok(t) => terminal_status(t).message,
            Err(e) => format!("the agent lost track of its container: {e}"),
        };
        let how = if how.is_empty() {
            "it exited".to_string()
        } else {
            how
        };
        tracing::info!(executor = %ekey, live_tasks = entry.tasks.len(), "the executor ended: {how}");
        if let Some(subscription) = entry.subscriber {
            self.push(Effect::EndSubscription {
                subscription,
                why: Refusal::Aborted("the executor's container ended".into()),
            });
        }
        for task_id in &entry.tasks {
            let key = TaskKey {
                framework_id: ekey.framework_id.clone(),
                task_id: task_id.clone(),
            };
            if self.tasks.get(&key).is_none_or(|t| t.terminal) {
                continue;
            }
            let (state, reason, message) = if let Some(reason) = entry.killing.get(task_id) {
                (
                    TaskState::TaskKilled,
                    *reason,
                    format!("killed with its executor ({how})"),
                )
            } else if entry.timed_out {
                (
                    TaskState::TaskFailed,
                    Reason::ExecutorRegistrationTimeout,
                    format!(
                        "the executor did not subscribe within {:?} and was killed",
                        self.settings.executor_registration_timeout
                    ),
                )
            } else {
                (
                    TaskState::TaskFailed,
                    Reason::ExecutorTerminated,
                    format!("the task's executor ended before the task did: {how}"),
                )
            };
            self.enqueue_status(&key, state, Source::Agent, reason, message, None);
        }
        self.journal.stage(&Record::Completed { key: ekey.clone() });
    }

    /// A kill of a task an executor runs (or was to run). Returns false for other tasks.
    pub(crate) fn kill_on_executor(
        &mut self,
        key: &TaskKey,
        policy: Option<&pb::KillPolicy>,
        reason: Reason,
    ) -> bool {
        let Some(task) = self.tasks.get(key) else {
            return false;
        };
        let Some(executor_id) = executor_id_of(&task.checkpoint.task) else {
            return false;
        };
        if task.terminal {
            return true;
        }
        let ekey = TaskKey::executor(&key.framework_id, &executor_id);
        let grace = self.grace_for(key, policy);
        let Some(entry) = self.executors.entries.get_mut(&ekey) else {
            return true;
        };
        if entry.sent.contains(&key.task_id) {
            tracing::info!(task = %key, executor = %executor_id, "asking the executor to kill the task");
            entry.killing.insert(key.task_id.clone(), reason);
            let generation = entry.generation;
            if entry.subscriber.is_some() {
                self.send_kill(&ekey, key, policy.copied());
            }
            self.schedule(
                &ekey,
                generation,
                TimerKind::KillTask(key.task_id.clone()),
                grace + SHUTDOWN_GRACE,
            );
            return true;
        }
        // The executor never got the task: it ends here.
        entry.tasks.remove(&key.task_id);
        let empty = entry.tasks.is_empty();
        self.enqueue_status(
            key,
            TaskState::TaskKilled,
            Source::Agent,
            reason,
            "killed before its executor started it".into(),
            None,
        );
        if empty {
            self.shut_down_executor(&ekey);
        }
        true
    }

    fn send_kill(&mut self, ekey: &TaskKey, key: &TaskKey, policy: Option<pb::KillPolicy>) {
        let policy = policy.or_else(|| {
            self.tasks
                .get(key)
                .and_then(|t| t.checkpoint.task.kill_policy)
        });
        self.tell_executor(
            ekey,
            event(executor_event::Event::Kill(executor_event::Kill {
                task_id: Some(key.task_id.clone()),
                kill_policy: policy,
            })),
        );
    }

    /// Asks an executor to exit (SHUTDOWN, then a kill after [`SHUTDOWN_GRACE`]); one
    /// that is not subscribed is killed at once.
    fn shut_down_executor(&mut self, ekey: &TaskKey) {
        let generation = self.executors.next();
        let Some(entry) = self.executors.entries.get_mut(ekey) else {
            return;
        };
        if entry.phase == Phase::ShuttingDown {
            return;
        }
        tracing::info!(executor = %ekey, "shutting the executor down");
        entry.phase = Phase::ShuttingDown;
        entry.generation = generation;
        if entry.subscriber.is_some() {
            self.tell_executor(
                ekey,
                event(executor_event::Event::Shutdown(executor_event::Shutdown {})),
            );
            self.schedule(ekey, generation, TimerKind::Shutdown, SHUTDOWN_GRACE);
        } else if entry.watched {
            self.kill_executor_container(ekey);
        }
        // Still launching: killed once its container exists.
    }

    /// A framework's message to one of its custom executors: handed to the subscribed
    /// executor once; dropped (best effort, as in Mesos) when it is not subscribed. (The
    /// driver drops it too when [`MAX_PENDING_MESSAGES`] wait on the executor's stream:
    /// that count belongs to the stream.)
    pub(crate) fn on_framework_message(&mut self, m: pb::master_message::FrameworkMessage) {
        let fw = m.framework_id.unwrap_or_default();
        let executor_id = m.executor_id.unwrap_or_default();
        if validate_id("framework", fw.as_str()).is_err()
            || validate_id("executor", executor_id.as_str()).is_err()
        {
            tracing::warn!("ignoring a framework message with bad ids");
            return;
        }
        let ekey = TaskKey::executor(&fw, &executor_id);
        let subscribed = self
            .executors
            .entries
            .get(&ekey)
            .filter(|e| e.phase != Phase::ShuttingDown)
            .is_some_and(|e| e.subscriber.is_some());
        if !subscribed {
            tracing::debug!(executor = %ekey, "dropping a framework message: the executor is not subscribed here");
            return;
        }
        self.tell_executor(
            &ekey,
            event(executor_event::Event::Message(executor_event::Message {
                data: m.data,
            })),
        );
    }

    /// The framework's SHUTDOWN of one of its executors. A custom executor is asked to
    /// exit; its tasks still running when its container ends count as killed (the
    /// framework asked for it), not as failed. The tasks of a task group (the built-in
    /// default executor) are killed. An executor the agent does not run is ignored: the
    /// master checked what it knew, and the executor may have ended since.
    pub(crate) fn on_shutdown_executor(
        &mut self,
        framework_id: &FrameworkId,
        executor_id: &ExecutorId,
    ) {
        if let Err(e) = validate_id("executor", executor_id.as_str()) {
            tracing::warn!(framework = %framework_id, "ignoring a shutdown of a bad executor id: {e}");
            return;
        }
        let ekey = TaskKey::executor(framework_id, executor_id);
        if let Some(entry) = self.executors.entries.get_mut(&ekey) {
            tracing::info!(executor = %ekey, "the framework shuts its executor down");
            for task_id in entry.tasks.clone() {
                entry
                    .killing
                    .entry(task_id)
                    .or_insert(Reason::KilledByFramework);
            }
            self.shut_down_executor(&ekey);
            return;
        }
        let group: Vec<TaskKey> = self
            .tasks
            .iter()
            .filter(|(key, e)| {
                !e.terminal
                    && super::groups::group_of(&key.framework_id, &e.checkpoint.task).is_some_and(
                        |g| &g.framework_id == framework_id && &g.executor_id == executor_id,
                    )
            })
            .map(|(key, _)| key.clone())
            .collect();
        if group.is_empty() {
            tracing::info!(executor = %ekey, "shutdown of an executor this agent does not run; ignored");
            return;
        }
        tracing::info!(executor = %ekey, tasks = group.len(), "the framework shuts its task group down");
        for key in group {
            self.on_kill_task(&key, None, Reason::KilledByFramework);
        }
    }

    /// `ShutdownFramework`: its executors are shut down (after its tasks were killed).
    pub(crate) fn shut_down_framework_executors(&mut self, framework_id: &FrameworkId) {
        let keys: Vec<TaskKey> = self
            .executors
            .entries
            .keys()
            .filter(|k| &k.framework_id == framework_id)
            .cloned()
            .collect();
        for ekey in keys {
            self.shut_down_executor(&ekey);
        }
    }

    /// Kills every executor's container (the agent is stopping and kills its tasks).
    pub(crate) fn kill_all_executors(&mut self) {
        let keys: Vec<TaskKey> = self
            .executors
            .entries
            .iter()
            .filter(|(_, e)| e.watched)
            .map(|(k, _)| k.clone())
            .collect();
        for ekey in keys {
            self.kill_executor_container(&ekey);
        }
    }

    fn kill_executor_container(&mut self, ekey: &TaskKey) {
        tracing::info!(executor = %ekey, "killing the executor's container");
        // The outcome arrives through the container's waiter.
        self.push(Effect::Kill {
            key: ekey.clone(),
            grace: self.settings.default_grace,
            reason: Reason::ExecutorTerminated,
        });
    }

    fn schedule(&mut self, ekey: &TaskKey, generation: u64, kind: TimerKind, after: Duration) {
        let timer = Timer {
            key: ekey.clone(),
            generation,
            kind,
        };
        self.push(Effect::Timer {
            at: self.now.instant + after,
            timer,
        });
    }

    /// A timer set with [`Effect::Timer`] is due.
    pub(crate) fn on_timer(&mut self, now: super::core::Now, timer: Timer) {
        self.now = now;
        let Some(entry) = self.executors.entries.get_mut(&timer.key) else {
            return;
        };
        match timer.kind {
            TimerKind::Registration => {
                if entry.generation != timer.generation || entry.phase != Phase::Registering {
                    return;
                }
                tracing::warn!(executor = %timer.key, "the executor did not subscribe in time; killing it");
                entry.timed_out = true;
                self.kill_executor_container(&timer.key);
            }
            TimerKind::Shutdown => {
                if entry.generation != timer.generation || entry.phase != Phase::ShuttingDown {
                    return;
                }
                tracing::warn!(executor = %timer.key, "the executor did not exit after SHUTDOWN");
                self.kill_executor_container(&timer.key);
            }
            TimerKind::KillTask(task_id) => {
                if !entry.killing.contains_key(&task_id) {
                    return;
                }
                tracing::warn!(executor = %timer.key, task = %task_id, "the executor did not end the killed task in time; killing the executor");
                self.kill_executor_container(&timer.key);
            }
        }
    }

    /// The driver found a subscription's stream closed: the executor is no longer
    /// subscribed (it subscribes again, or its container ends).
    pub(crate) fn on_subscription_closed(&mut self, subscription: SubscriptionId) {
        for entry in self.executors.entries.values_mut() {
            if entry.subscriber == Some(subscription) {
                entry.subscriber = None;
            }
        }
    }

    /// The executor a task runs on, if a custom one.
    pub(crate) fn executor_of(&self, key: &TaskKey) -> Option<ExecutorId> {
        self.tasks
            .get(key)
            .and_then(|t| executor_id_of(&t.checkpoint.task))
    }
}
