//! The core's side of an agent restart: from what the checkpoint log held
//! ([`RecoveredTask`]s, read by `recovery.rs`) and what the containerizers found of each
//! container ([`Probe`]s, asked by the driver), rebuild the task table and decide what each
//! task needs: reattach and watch it, report its recorded end, report it dropped (its
//! container never started), or forget it (its terminal update was acknowledged).
//! Nothing is ever launched here.

use std::collections::BTreeMap;

use drover_proto::pb::{self, task_status::Reason, TaskState};
use drover_proto::states;

use super::core::{AgentCore, Effect, Now, TaskEntry};
use super::executors::custom_executor;
use super::recovery::RecoveredTask;
use crate::containerizer::Recovered;
use crate::layout::TaskKey;

/// What the containerizers found of one container: its fate, and which of them runs it.
pub(crate) type Probe = (Recovered, Option<&'static str>);

/// The keys whose containers the driver must look for before [`AgentCore::recover`]: every
/// custom executor, and every task that has not ended and runs in a container of its own
/// (a task of a custom executor lives in its executor's).
pub(crate) fn probes_needed(found: &[RecoveredTask]) -> Vec<TaskKey> {
    let (executors, tasks): (Vec<_>, Vec<_>) =
        found.iter().partition(|f| f.key.executor_id().is_some());
    let live = tasks.into_iter().filter(|f| {
        let latest = f
            .stream
            .as_ref()
            .and_then(|s| TaskState::try_from(s.latest_state).ok())
            .unwrap_or(TaskState::TaskStaging);
        !states::is_terminal(latest) && custom_executor(&f.checkpoint.task).is_none()
    });
    executors
        .into_iter()
        .chain(live)
        .map(|f| f.key.clone())
        .collect()
}

impl AgentCore {
    /// Rebuilds the state from what the log held and what the containerizers found (see
    /// the module docs). The driver commits and compacts right after, so the log becomes
    /// exactly the recovered state.
    pub(crate) fn recover(
        &mut self,
        now: Now,
        found: Vec<RecoveredTask>,
        probes: &BTreeMap<TaskKey, Probe>,
    ) {
        self.now = now;
        let probe = |key: &TaskKey| {
            probes.get(key).copied().unwrap_or_else(|| {
                tracing::warn!(task = %key, "no container probe; taking the task as never started");
                (Recovered::NeverStarted, None)
            })
        };
        let (executors, tasks): (Vec<_>, Vec<_>) = found
            .into_iter()
            .partition(|f| f.key.executor_id().is_some());
        for f in executors {
            let (recovered, _) = probe(&f.key);
            self.recover_executor(f, recovered);
        }
        for found in tasks {
            let key = found.key;
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
                    self.push(Effect::MarkCompleted(key));
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
            let (recovered, name) = probe(&key);
            match recovered {
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
                    self.watch(&key, name);
                    if !killing {
                        self.start_checks(&key);
                    }
                }
                Recovered::Ended => {
                    tracing::info!(task = %key, "the task ended while the agent was away");
                    self.watch(&key, name);
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
    }
}
