//! The core's side of checks (see [`crate::checks`]): asking the driver to start and stop
//! the check drivers ([`Effect::StartChecks`], [`Effect::StopChecks`]), turning their
//! reports into status updates, and killing unhealthy tasks.
//!
//! Every update of a checked task carries the latest `healthy` and `check_status` known
//! (so the master's view of the task, its latest update, always has them); an update
//! that changes them says so with its reason. An unhealthy task gets TASK_KILLING, then
//! SIGTERM and SIGKILL after its grace period, and ends TASK_KILLED with reason
//! `REASON_TASK_UNHEALTHY` and a message naming the check and its last result.

use std::collections::{BTreeMap, BTreeSet};

use drover_proto::pb::{self, task_status::Reason, task_status::Source, TaskState};

use super::core::{AgentCore, Effect, Now};
use crate::checks::schedule::Effect as CheckEffect;
use crate::checks::{docker_place, supervised_place, Report};
use crate::containerizer::TerminalStatus;
use crate::layout::TaskKey;

/// What the core knows about the checks of its tasks: their latest results.
#[derive(Default)]
pub(crate) struct Health {
    latest: BTreeMap<TaskKey, Latest>,
    /// Tasks whose checks were stopped (a kill was issued, or the task ended): reports
    /// still on their way from the check drivers (in the same batch as the kill, or
    /// before the driver's `StopChecks`) are ignored, so a killed task does not go back
    /// to RUNNING nor get killed again as unhealthy.
    stopped: BTreeSet<TaskKey>,
}

#[derive(Default)]
struct Latest {
    healthy: Option<bool>,
    check_status: Option<pb::CheckStatusInfo>,
    /// Set when the health check gave up on the task: why it is killed.
    unhealthy: Option<String>,
}

impl Health {
    /// What the task's next status update carries: (healthy, check_status).
    pub(crate) fn annotations(&self, key: &TaskKey) -> (Option<bool>, Option<pb::CheckStatusInfo>) {
        match self.latest.get(key) {
            Some(l) => (l.healthy, l.check_status),
            None => (None, None),
        }
    }
}

/// True when the framework asked for TASK_KILLING before its tasks are killed.
pub(crate) fn wants_killing_state(framework: Option<&pb::FrameworkInfo>) -> bool {
    framework.is_some_and(|f| {
        f.capabilities
            .contains(&(pb::framework_info::Capability::TaskKillingState as i32))
    })
}

impl AgentCore {
    /// Starts the checks of a task that is now RUNNING (launched or recovered).
    pub(crate) fn start_checks(&mut self, key: &TaskKey) {
        let Some(entry) = self.tasks.get(key) else {
            return;
        };
        let task = &entry.checkpoint.task;
        if task.check.is_none() && task.health_check.is_none() {
            return;
        }
        let place = if entry.containerizer == Some("docker") {
            let agent_id = self.agent_id.clone().unwrap_or_default();
            docker_place(agent_id.as_str(), key)
        } else {
            supervised_place(&self.layout, key)
        };
        let task = Box::new(task.clone());
        self.health.stopped.remove(key);
        self.push(Effect::StartChecks {
            key: key.clone(),
            task,
            place,
        });
    }

    /// The task ended or is being killed: no more attempts.
    pub(crate) fn stop_checks(&mut self, key: &TaskKey) {
        self.health.stopped.insert(key.clone());
        self.push(Effect::StopChecks(key.clone()));
    }

    /// A task was forgotten (terminal update acknowledged).
    pub(crate) fn forget_checks(&mut self, key: &TaskKey) {
        self.push(Effect::StopChecks(key.clone()));
        self.health.latest.remove(key);
        self.health.stopped.remove(key);
    }

    /// A check of a running task reports.
    pub(crate) fn on_check_report(&mut self, now: Now, report: Report) {
        self.now = now;
        let key = report.key;
        let live = self
            .tasks
            .get(&key)
            .is_some_and(|e| !e.terminal && e.watched);
        if !live || self.health.stopped.contains(&key) {
            return;
        }
        let latest = self.health.latest.entry(key.clone()).or_default();
        match report.effect {
            CheckEffect::CheckStatus(status) => {
                latest.check_status = Some(status);
                self.enqueue_status(
                    &key,
                    TaskState::TaskRunning,
                    Source::Executor,
                    Reason::TaskCheckStatusUpdated,
                    String::new(),
                    None,
                );
            }
            CheckEffect::Healthy(healthy) => {
                latest.healthy = Some(healthy);
                self.enqueue_status(
                    &key,
                    TaskState::TaskRunning,
                    Source::Executor,
                    Reason::TaskHealthCheckStatusUpdated,
                    String::new(),
                    None,
                );
            }
            CheckEffect::Unhealthy { message } => {
                tracing::warn!(task = %key, "{message}; killing the task");
                latest.healthy = Some(false);
                latest.unhealthy = Some(message);
                // KILLING is staged with the batch and sent before the kill goes out.
                self.on_kill_task(&key, None, Reason::TaskUnhealthy);
            }
        }
    }

    /// A killed unhealthy task's terminal update says why it was killed.
    pub(crate) fn explain_unhealthy(&mut self, key: &TaskKey, status: &mut TerminalStatus) {
        if status.reason != Reason::TaskUnhealthy {
            return;
        }
        let latest = self.health.latest.entry(key.clone()).or_default();
        latest.healthy = Some(false);
        match &latest.unhealthy {
            Some(why) => status.message = format!("killed as unhealthy: {why}"),
            // After an agent restart the check's last result is gone; the reason stays.
            None => status.message = format!("killed as unhealthy; {}", status.message),
        }
    }
}
