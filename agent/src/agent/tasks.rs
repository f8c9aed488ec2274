//! Task-level handlers of the core: launch, kill, a round of launch results, and the end
//! of a container.

use std::fs::OpenOptions;
use std::time::Duration;

use drover_proto::pb::{
    self, master_message::RunTask, task_status::Reason, task_status::Source, TaskState,
};
use drover_proto::Resources;

use super::core::{AgentCore, Effect, Launch, Now, TaskEntry};
use crate::containerizer::{
    terminal_status, ContainerizerError, LaunchSpec, TerminalStatus, Termination,
};
use crate::error::AgentError;
use crate::journal::Journal;
use crate::journal::TaskCheckpoint;
use crate::layout::TaskKey;

/// How the start of one container went: its key, the result, and the containerizer that
/// runs it.
pub(crate) type LaunchResult = (TaskKey, Result<(), AgentError>, Option<&'static str>);

/// Longest grace period honoured from a kill policy: a typo of `1e9` must not leave a
/// task unkillable for decades.
const MAX_GRACE: Duration = Duration::from_secs(24 * 3600);

impl AgentCore {
    /// `run_task`: idempotent by (framework id, task id). Checkpoints the task, creates
    /// its sandbox, enqueues STARTING and stages the launch; the batch's commit makes all
    /// of it durable before the driver starts the container, so a restart at
    /// any point finds a consistent story (a checkpointed task without a container is
    /// reported as never started).
    pub(crate) fn on_run_task(&mut self, rt: RunTask) -> Result<(), AgentError> {
        let task = rt.task.unwrap_or_default();
        let key = TaskKey {
            framework_id: rt.framework_id.unwrap_or_default(),
            task_id: task.task_id.clone().unwrap_or_default(),
        };
        if self.stopping {
            tracing::warn!(task = %key, "ignoring a launch while the agent shuts down");
            return Ok(());
        }
        if self.tasks.contains_key(&key) {
            tracing::debug!(task = %key, "launch of a task already known; ignoring it");
            return Ok(());
        }
        // A task id shaped like an executor's container key never comes from the master
        // (its gate refuses `+`); one that does must not take an executor's place.
        let ids = match key.executor_id() {
            Some(_) => Err(format!("task id '{}' contains '+'", key.task_id)),
            None => key.validate(),
        };
        // Only valid ids name a directory; a task with bad ids is refused from memory.
        let durable = ids.is_ok();
        if durable && self.layout.task_meta(&key).dir().exists() {
            // Completed (terminal update acknowledged) but a launch arrives again: a task
            // id must never run twice on this agent.
            tracing::warn!(task = %key, "launch of a task that already ran here; ignoring it");
            return Ok(());
        }
        let checkpoint = TaskCheckpoint {
            framework_id: key.framework_id.clone(),
            framework_info: rt.framework_info,
            task,
        };
        // A lone task may name a CUSTOM executor only: DEFAULT ones run task groups
        // (whose members `groups.rs` checks against their group's executor instead).
        let problem = ids
            .err()
            .or_else(|| self.invalid_task(&checkpoint.task))
            .or_else(|| {
                checkpoint
                    .task
                    .executor
                    .as_ref()
                    .and_then(|_| super::executors::invalid_executor(&checkpoint.task))
            });
        if durable {
            self.checkpoint_task(&key, &checkpoint)?;
        }
        self.tasks.insert(
            key.clone(),
            TaskEntry {
                checkpoint: checkpoint.clone(),
                terminal: false,
                watched: false,
                containerizer: None,
            },
        );
        if let Some(problem) = problem {
            tracing::warn!(task = %key, "refusing an invalid task: {problem}");
            self.enqueue_status(
                &key,
                TaskState::TaskError,
                Source::Agent,
                Reason::TaskInvalid,
                problem,
                None,
            );
            return Ok(());
        }
        if super::executors::custom_executor(&checkpoint.task).is_some() {
            return self.run_on_executor(&key, &checkpoint);
        }

        let sandbox = self.layout.sandbox(&key);
        if let Err(e) = create_sandbox(&mut self.journal, &sandbox) {
            self.enqueue_status(
                &key,
                TaskState::TaskFailed,
                Source::Agent,
                Reason::ContainerLaunchFailed,
                format!("cannot create the sandbox {}: {e}", sandbox.display()),
                None,
            );
            return Ok(());
        }
        self.enqueue_status(
            &key,
            TaskState::TaskStarting,
            Source::Executor,
            Reason::Unspecified,
            String::new(),
            None,
        );
        let task = self.as_launched(&checkpoint);
        self.launching.insert(key.clone());
        self.push(Effect::Launch(Box::new(Launch {
            spec: LaunchSpec {
                key: key.clone(),
                task,
                agent_id: self.agent_id.clone().unwrap_or_default(),
                sandbox,
                meta: self.layout.task_meta(&key),
                group: None,
            },
            holder: None,
        })));
        Ok(())
    }

    /// The checkpointed task (or custom executor) as its container runs it: under its
    /// framework's user unless it names its own or `--switch-user` is off.
    pub(crate) fn as_launched(&self, checkpoint: &TaskCheckpoint) -> pb::TaskInfo {
        let framework_user = checkpoint
            .framework_info
            .as_ref()
            .map(|f| f.user.as_str())
            .unwrap_or_default();
        crate::users::task_for_launch(
            &checkpoint.task,
            framework_user,
            self.settings.sandbox.switch_user,
        )
    }

    /// A round of launches came back: each container started (with the containerizer
    /// that runs it), or could not. Task groups settle all or nothing (`groups.rs`);
    /// a kill that arrived meanwhile is carried out now that the container exists.
    pub(crate) fn on_launched(&mut self, now: Now, results: Vec<LaunchResult>) {
        self.now = now;
        for (key, _, _) in &results {
            self.launching.remove(key);
        }
        for (key, result, containerizer) in self.settle_group_launches(results) {
            if key.executor_id().is_some() {
                self.on_executor_launched(&key, result);
                continue;
            }
            match result {
                Ok(()) => {
                    self.metrics.task_launched();
                    self.watch(&key, containerizer);
                    self.enqueue_status(
                        &key,
                        TaskState::TaskRunning,
                        Source::Executor,
                        Reason::Unspecified,
                        String::new(),
                        None,
                    );
                    match self.kills_after_launch.remove(&key) {
                        Some((policy, reason)) => self.on_kill_task(&key, policy, reason),
                        None => self.start_checks(&key),
                    }
                }
                Err(e) => {
                    tracing::warn!(task = %key, "launch failed: {e}");
                    self.kills_after_launch.remove(&key);
                    self.launch_failed(&key, &e);
                }
            }
        }
    }

    /// The driver dropped the launch of a task killed before its container started
    /// ([`Effect::WithdrawLaunch`]): the task ends KILLED, with the kill's reason, without
    /// ever running (and a group it belongs to is taken down as by any KILLED task).
    pub(crate) fn on_launch_withdrawn(&mut self, now: Now, key: &TaskKey) {
        self.now = now;
        self.launching.remove(key);
        let reason = self
            .kills_after_launch
            .remove(key)
            .map(|(_, reason)| reason)
            .filter(|r| *r != Reason::Unspecified)
            .unwrap_or(Reason::KilledByFramework);
        if self.tasks.get(key).is_none_or(|e| e.terminal) {
            return;
        }
        tracing::info!(task = %key, "killed before its container started; it never ran");
        let status = TerminalStatus {
            state: TaskState::TaskKilled,
            reason,
            source: Source::Executor,
            message: "killed on request before its container started".into(),
            exit_code: None,
        };
        let status = self.adjust_group_status(key, status);
        let state = status.state;
        self.enqueue_status(
            key,
            status.state,
            status.source,
            status.reason,
            status.message,
            None,
        );
        self.on_group_task_ended(key, state);
    }

    /// A task's container could not start: TASK_FAILED, with the reason the error tells.
    pub(super) fn launch_failed(&mut self, key: &TaskKey, e: &AgentError) {
        // A user the task's image does not define is the task's mistake, told apart so a
        // framework can see it without parsing messages.
        let reason = match e {
            AgentError::Containerizer(ContainerizerError::UnknownUser(_)) => {
                Reason::TaskUserUnknown
            }
            _ => Reason::ContainerLaunchFailed,
        };
        self.enqueue_status(
            key,
            TaskState::TaskFailed,
            Source::Agent,
            reason,
            e.to_string(),
            None,
        );
    }

    /// Why a task cannot run, if it cannot. The master validates too; the agent checks
    /// again because it is the one that would run a bad command.
    pub(super) fn invalid_task(&self, task: &pb::TaskInfo) -> Option<String> {
        let docker = task
            .container
            .as_ref()
            .is_some_and(|c| c.r#type == pb::container_info::Type::Docker as i32);
        // A task running an image may leave its command out and run the image's own
        // (`Entrypoint` + `Cmd`); without one the containerizer reports it.
        let runs_image = crate::containerizer::linux::image_of(task).is_some();
        if super::executors::custom_executor(task).is_some() {
            // The executor interprets the task: its command is optional.
            if let Some(problem) = super::executors::invalid_executor(task) {
                return Some(problem);
            }
        } else if docker {
            // The rest is checked when its container is configured.
            if let Err(e) = crate::containerizer::docker::spec::image_of(task) {
                return Some(e);
            }
        } else {
            match &task.command {
                None if runs_image => {}
                None => return Some("the task has no command".into()),
                Some(c) if c.value.trim().is_empty() && (c.shell || !runs_image) => {
                    return Some("the task's command is empty".into())
                }
                Some(_) => {}
            }
        }
        if let Err(e) = Resources::from_proto(&task.resources) {
            return Some(format!("the task's resources are invalid: {e}"));
        }
        if let (Some(mine), Some(theirs)) = (&self.agent_id, &task.agent_id) {
            if !theirs.is_empty() && theirs != mine {
                return Some(format!(
                    "the task was meant for agent {theirs}, but this is agent {mine}"
                ));
            }
        }
        None
    }

    /// `kill_task`: an unknown task is ignored (as Mesos does: the master reconciles);
    /// a task that already ended is left to its pending terminal update.
    pub(crate) fn on_kill_task(
        &mut self,
        key: &TaskKey,
        policy: Option<pb::KillPolicy>,
        reason: Reason,
    ) {
        if self.launching.contains(key) {
            // Its container is to be started: the driver drops the launch if it has not
            // started it yet (see [`Self::on_launch_withdrawn`]); else the kill waits for
            // the container (see [`Self::on_launched`]), so it meets one. A second kill
            // replaces the first's policy and reason.
            tracing::info!(task = %key, "kill of a task whose launch is under way");
            let first = self
                .kills_after_launch
                .insert(key.clone(), (policy, reason))
                .is_none();
            if first {
                self.push(Effect::WithdrawLaunch(key.clone()));
            }
            return;
        }
        if self.kill_on_executor(key, policy.as_ref(), reason) {
            return;
        }
        let Some(entry) = self.tasks.get(key) else {
            tracing::info!(task = %key, "kill for a task this agent does not know; ignoring it");
            return;
        };
        if entry.terminal || !entry.watched {
            tracing::debug!(task = %key, "kill for a task that already ended; ignoring it");
            return;
        }
        let killing = reason == Reason::TaskUnhealthy
            || super::health::wants_killing_state(entry.checkpoint.framework_info.as_ref());
        self.stop_checks(key);
        if killing && self.latest_state(key) != TaskState::TaskKilling {
            // Durable and on its way before the first signal (the batch commits before
            // its effects, and its updates go out first): the framework hears KILLING
            // before the task's own reaction to SIGTERM can end it.
            self.enqueue_status(
                key,
                TaskState::TaskKilling,
                Source::Executor,
                reason,
                String::new(),
                None,
            );
        }
        let grace = self.grace_for(key, policy.as_ref());
        tracing::info!(task = %key, ?grace, "killing the task");
        self.push(Effect::Kill {
            key: key.clone(),
            grace,
            reason,
        });
    }

    /// The kill's own grace period, else the task's, else the agent's default.
    pub(crate) fn grace_for(&self, key: &TaskKey, policy: Option<&pb::KillPolicy>) -> Duration {
        let usable = |p: Option<&pb::KillPolicy>| {
            p.map(|p| p.grace_period_seconds)
                .filter(|g| g.is_finite() && *g > 0.0)
        };
        let task_policy = self
            .tasks
            .get(key)
            .and_then(|e| e.checkpoint.task.kill_policy.as_ref());
        usable(policy)
            .or_else(|| usable(task_policy))
            .map(|g| Duration::from_secs_f64(g).min(MAX_GRACE))
            .unwrap_or(self.settings.default_grace)
    }

    /// A container ended: its terminal update is enqueued (checkpointed by the commit).
    pub(crate) fn on_task_ended(
        &mut self,
        now: Now,
        key: &TaskKey,
        result: Result<Termination, AgentError>,
    ) {
        self.now = now;
        if key.executor_id().is_some() {
            self.on_executor_ended(key, result);
            return;
        }
        let Some(entry) = self.tasks.get_mut(key) else {
            return;
        };
        entry.watched = false;
        if entry.terminal {
            if let Some(gk) = self.group_key(key) {
                self.teardown_group_if_done(&gk);
            }
            return;
        }
        self.stop_checks(key);
        let mut status = match result {
            Ok(t) => terminal_status(&t),
            Err(e) => {
                tracing::error!(task = %key, "lost track of the task's container: {e}");
                crate::containerizer::TerminalStatus {
                    state: TaskState::TaskFailed,
                    reason: Reason::ExecutorTerminated,
                    source: Source::Agent,
                    message: format!("the agent lost track of the task's container: {e}"),
                    exit_code: None,
                }
            }
        };
        self.explain_unhealthy(key, &mut status);
        let status = self.adjust_group_status(key, status);
        let state = status.state;
        let message = match status.reason {
            Reason::ContainerLimitationDisk => crate::disk::limitation_message(&self.layout, key)
                .map(|figures| format!("{figures}; {}", status.message))
                .unwrap_or(status.message),
            _ => status.message,
        };
        self.enqueue_status(
            key,
            status.state,
            status.source,
            status.reason,
            message,
            status.exit_code,
        );
        self.on_group_task_ended(key, state);
    }
}

/// The sandbox directory with empty `stdout` and `stderr`, so the files API can serve
/// them from the moment the task is RUNNING. The directory is durable with the batch.
pub(super) fn create_sandbox(journal: &mut Journal, dir: &std::path::Path) -> std::io::Result<()> {
    journal.create_dir_all(dir)?;
    for name in ["stdout", "stderr"] {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(name))?;
    }
    Ok(())
}
