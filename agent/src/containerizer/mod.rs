//! Containerizers: how a task's processes are started, watched, killed and found again
//! after an agent restart.
//!
//! [`Containerizer`] is the seam between the agent's bookkeeping (which knows tasks,
//! status updates and the master) and the machinery that runs processes. Only
//! [`process::ProcessContainerizer`] exists today; `linux` (namespaces + cgroups) and
//! `docker` arrive with the containers issue and implement the same trait.

pub mod process;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use drover_proto::pb::{self, task_status::Reason, task_status::Source, TaskState};
use drover_proto::AgentId;

use crate::error::AgentError;
use crate::layout::{TaskKey, TaskMeta};
use crate::supervisor::records::{ExitOutcome, ExitRecord};

/// Everything a containerizer needs to start one task.
#[derive(Clone, Debug)]
pub struct LaunchSpec {
    pub key: TaskKey,
    pub task: pb::TaskInfo,
    pub agent_id: AgentId,
    /// Already created; `stdout` and `stderr` in it are created if missing.
    pub sandbox: PathBuf,
    /// Already created; `task.json` is checkpointed in it.
    pub meta: TaskMeta,
}

/// What recovery found for a task that was not known to have ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovered {
    /// Its container is still running; [`Containerizer::wait`] follows it.
    Running,
    /// Its container is gone; [`Containerizer::wait`] returns how it ended at once.
    Ended,
    /// The agent stopped before the container started, and now never will.
    NeverStarted,
}

/// How a container ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Termination {
    /// The container's supervisor recorded the outcome.
    Recorded(ExitRecord),
    /// The supervisor disappeared without recording anything (killed, crashed).
    Vanished { detail: String },
}

/// A container runtime. Implementations must be idempotent where the agent may repeat
/// itself after a restart (`kill`, `recover`).
#[async_trait]
pub trait Containerizer: Send + Sync + 'static {
    /// The name used by `--containerizers`.
    fn name(&self) -> &'static str;

    /// Starts the task. Returns once the container exists and will run (or record why
    /// it could not); the task's own outcome comes from [`Containerizer::wait`].
    async fn launch(&self, spec: LaunchSpec) -> Result<(), AgentError>;

    /// Finds a task's container again after an agent restart.
    async fn recover(&self, key: &TaskKey) -> Result<Recovered, AgentError>;

    /// Resolves when the task's container has ended. Call once per launch or recovery.
    async fn wait(&self, key: &TaskKey) -> Result<Termination, AgentError>;

    /// Asks the container to stop: SIGTERM now, SIGKILL after `grace`. The outcome is
    /// reported as killed with `reason`. Killing an ended container is a no-op.
    async fn kill(&self, key: &TaskKey, grace: Duration, reason: Reason) -> Result<(), AgentError>;
}

/// The terminal status a [`Termination`] becomes.
#[derive(Clone, Debug, PartialEq)]
pub struct TerminalStatus {
    pub state: TaskState,
    pub reason: Reason,
    pub source: Source,
    pub message: String,
    pub exit_code: Option<i32>,
}

/// Maps how a container ended onto the task's terminal state (Mesos's command executor
/// semantics): exit 0 → FINISHED; non-zero → FAILED with the code; a signal → FAILED;
/// anything that ended after a requested kill → KILLED.
pub fn terminal_status(t: &Termination) -> TerminalStatus {
    let record = match t {
        Termination::Vanished { detail } => {
            return TerminalStatus {
                state: TaskState::TaskFailed,
                reason: Reason::ExecutorTerminated,
                source: Source::Agent,
                message: format!(
                    "the task's supervisor exited without recording how the task ended ({detail})"
                ),
                exit_code: None,
            }
        }
        Termination::Recorded(r) => r,
    };
    let exit_code = match record.outcome {
        ExitOutcome::Exited { code } => Some(code),
        _ => None,
    };
    let what = match &record.outcome {
        ExitOutcome::Exited { code } => format!("command exited with status {code}"),
        ExitOutcome::Signaled { signal } => format!("terminated by signal {signal}"),
        ExitOutcome::LaunchFailed { message } => format!("failed to launch the command: {message}"),
        ExitOutcome::NotStarted => "the command was never started".to_string(),
    };
    if record.killed {
        let reason = record
            .kill_reason
            .and_then(|r| Reason::try_from(r).ok())
            .filter(|r| *r != Reason::Unspecified)
            .unwrap_or(Reason::KilledByFramework);
        return TerminalStatus {
            state: TaskState::TaskKilled,
            reason,
            source: Source::Executor,
            message: format!("killed on request; {what}"),
            exit_code,
        };
    }
    let (state, reason) = match &record.outcome {
        ExitOutcome::Exited { code: 0 } => (TaskState::TaskFinished, Reason::Unspecified),
        ExitOutcome::Exited { .. } | ExitOutcome::Signaled { .. } => {
            (TaskState::TaskFailed, Reason::Unspecified)
        }
        ExitOutcome::LaunchFailed { .. } => (TaskState::TaskFailed, Reason::ContainerLaunchFailed),
        // Not started yet not killed cannot be written by a supervisor; be explicit anyway.
        ExitOutcome::NotStarted => (TaskState::TaskFailed, Reason::ContainerLaunchFailed),
    };
    TerminalStatus {
        state,
        reason,
        source: Source::Executor,
        message: what,
        exit_code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(outcome: ExitOutcome, killed: bool, reason: Option<i32>) -> Termination {
        Termination::Recorded(ExitRecord {
            outcome,
            killed,
            kill_reason: reason,
            task_pid: Some(1),
            finished_at: 0.0,
        })
    }

    #[test]
    fn maps_outcomes_onto_states() {
        let s = terminal_status(&rec(ExitOutcome::Exited { code: 0 }, false, None));
        assert_eq!((s.state, s.exit_code), (TaskState::TaskFinished, Some(0)));

        let s = terminal_status(&rec(ExitOutcome::Exited { code: 3 }, false, None));
        assert_eq!(s.state, TaskState::TaskFailed);
        assert_eq!(s.exit_code, Some(3));
        assert_eq!(s.message, "command exited with status 3");

        let s = terminal_status(&rec(ExitOutcome::Signaled { signal: 9 }, false, None));
        assert_eq!(s.state, TaskState::TaskFailed);
        assert_eq!(s.exit_code, None);
        assert_eq!(s.message, "terminated by signal 9");

        let s = terminal_status(&rec(ExitOutcome::Signaled { signal: 15 }, true, None));
        assert_eq!(
            (s.state, s.reason),
            (TaskState::TaskKilled, Reason::KilledByFramework)
        );
        let s = terminal_status(&rec(
            ExitOutcome::NotStarted,
            true,
            Some(Reason::FrameworkRemoved as i32),
        ));
        assert_eq!(
            (s.state, s.reason),
            (TaskState::TaskKilled, Reason::FrameworkRemoved)
        );

        let s = terminal_status(&rec(
            ExitOutcome::LaunchFailed {
                message: "no such file".into(),
            },
            false,
            None,
        ));
        assert_eq!(
            (s.state, s.reason),
            (TaskState::TaskFailed, Reason::ContainerLaunchFailed)
        );

        let s = terminal_status(&Termination::Vanished { detail: "x".into() });
        assert_eq!(
            (s.state, s.reason, s.source),
            (
                TaskState::TaskFailed,
                Reason::ExecutorTerminated,
                Source::Agent
            )
        );
    }
}
