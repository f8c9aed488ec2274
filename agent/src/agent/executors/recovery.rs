//! Custom executors across an agent restart: their checkpoints in the log's compaction,
//! and reattaching to their containers, their tasks joining them.

use std::collections::{BTreeMap, BTreeSet};

use drover_proto::pb::{task_status::Reason, task_status::Source, TaskState};

use super::*;
use crate::containerizer::Recovered;
use crate::journal::Record;
use crate::layout::TaskKey;

impl AgentCore {
    /// The checkpoint records of running executors, for the log's compaction.
    pub(crate) fn executor_records(&self) -> Vec<Record> {
        self.executors
            .entries
            .iter()
            .map(|(k, e)| Record::Task {
                key: k.clone(),
                task: Box::new(e.checkpoint.clone()),
            })
            .collect()
    }

    /// Recovery, first step, for each executor found in the log: what its container's
    /// probe found decides whether it is waited for again.
    pub(crate) fn recover_executor(&mut self, f: RecoveredTask, recovered: Recovered) {
        let ekey = f.key;
        if recovered == Recovered::NeverStarted {
            tracing::info!(executor = %ekey, "the executor never started");
            self.journal.stage(&Record::Completed { key: ekey });
            return;
        }
        let info = f.checkpoint.task.executor.clone().unwrap_or_default();
        let generation = self.executors.next();
        self.executors.entries.insert(
            ekey.clone(),
            ExecutorEntry {
                checkpoint: f.checkpoint,
                info,
                phase: Phase::Registering,
                tasks: BTreeSet::new(),
                sent: BTreeSet::new(),
                killing: BTreeMap::new(),
                subscriber: None,
                watched: true,
                generation,
                timed_out: false,
                message_window: None,
            },
        );
        tracing::info!(executor = %ekey, ?recovered, "recovered an executor; waiting for it to subscribe again");
        self.push(Effect::Watch(ekey.clone()));
        if recovered == Recovered::Running {
            let timeout = self.settings.executor_registration_timeout;
            self.schedule(&ekey, generation, TimerKind::Registration, timeout);
        }
    }

    /// Recovery of a task that is not terminal: true when it runs on a custom executor
    /// (it joins its executor, or fails when the executor is gone).
    pub(crate) fn recover_executor_task(&mut self, key: &TaskKey) -> bool {
        let Some(executor_id) = self.executor_of(key) else {
            return false;
        };
        let ekey = TaskKey::executor(&key.framework_id, &executor_id);
        match self.executors.entries.get_mut(&ekey) {
            Some(entry) => {
                entry.tasks.insert(key.task_id.clone());
            }
            None => self.enqueue_status(
                key,
                TaskState::TaskFailed,
                Source::Agent,
                Reason::ExecutorTerminated,
                "the task's executor was gone when the agent restarted".into(),
                None,
            ),
        }
        true
    }

    /// Recovery, last step: an executor left without tasks is shut down.
    pub(crate) fn recover_executors_done(&mut self) {
        let idle: Vec<TaskKey> = self
            .executors
            .entries
            .iter()
            .filter(|(_, e)| e.tasks.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for ekey in idle {
            self.shut_down_executor(&ekey);
        }
    }
}
