//! The shell around [`StatusUpdateManager`]: it remembers which task streams changed
//! since the last durability point and hands their checkpoints ([`StreamChange`]s) to the
//! agent loop as one batch, which writes them to the checkpoint log (`crate::journal`,
//! which sits below this module: it stores [`StreamCheckpoint`]s). The agent loop commits that batch before it
//! sends anything ([`StatusUpdates::due`] refuses to run while a change is not taken), so
//! an update that left the agent is always on disk, an acknowledgement is on disk before
//! the next update of its task goes out, and a restarted agent resends what was not
//! acknowledged.
//!
//! Several changes to one stream within a batch (STARTING then RUNNING, an acknowledgement
//! then a new update) become a single record holding the stream's final state.
//!
//! Tasks whose ids are not valid path components (refused at launch with TASK_ERROR) are
//! never checkpointed; their streams live in memory only.

use std::collections::BTreeSet;
use std::time::Instant;

use super::{Ack, RetryPolicy, StatusUpdate, StatusUpdateManager, StreamCheckpoint};
use crate::layout::TaskKey;

/// A stream that changed since the last durability point, as it must be checkpointed.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamChange {
    /// The stream as it is now (replaces the previous checkpoint).
    Updated {
        key: TaskKey,
        stream: StreamCheckpoint,
    },
    /// The task's terminal update was acknowledged: recovery forgets it.
    Completed { key: TaskKey },
}

/// A checkpointing status update manager.
#[derive(Debug)]
pub struct StatusUpdates {
    core: StatusUpdateManager,
    /// Streams changed since [`Self::take_checkpoints`] last ran (valid keys only).
    dirty: BTreeSet<TaskKey>,
}

impl StatusUpdates {
    pub fn new(policy: RetryPolicy) -> Self {
        StatusUpdates {
            core: StatusUpdateManager::new(policy),
            dirty: BTreeSet::new(),
        }
    }

    /// Restores a recovered stream (already durable).
    pub fn restore(&mut self, key: TaskKey, cp: StreamCheckpoint) {
        self.core.restore(key, cp);
    }

    /// Enqueues an update; it is checkpointed by the next commit and sent after it.
    pub fn enqueue(&mut self, key: &TaskKey, update: StatusUpdate) {
        if let Err(e) = self.core.enqueue(key, update) {
            // A caller bug, not a reason to stop the agent: the stream stays as it was.
            tracing::error!(task = %key, "status update refused: {e}");
            return;
        }
        self.touch(key);
    }

    /// Handles an acknowledgement. The terminal one ends the stream, which is checkpointed
    /// as completed so that recovery forgets the task (its meta directory and sandbox stay
    /// until garbage collection).
    pub fn acknowledge(&mut self, key: &TaskKey, uuid: &[u8]) -> Ack {
        let ack = self.core.acknowledge(key, uuid);
        if let Ack::Accepted { .. } = ack {
            self.touch(key);
        }
        ack
    }

    /// Drops a stream whose terminal update is already acknowledged (recovery), recording
    /// the task as completed.
    pub fn complete(&mut self, key: &TaskKey) {
        self.core.forget(key);
        self.touch(key);
    }

    fn touch(&mut self, key: &TaskKey) {
        if key.validate().is_ok() {
            self.dirty.insert(key.clone());
        }
    }

    /// True when some change still has to be handed to the log.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Every stream changed since the last call: its current checkpoint, or `Completed`
    /// when the stream has ended.
    pub fn take_checkpoints(&mut self) -> Vec<StreamChange> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|key| match self.core.checkpoint(&key) {
                Some(stream) => StreamChange::Updated { key, stream },
                None => StreamChange::Completed { key },
            })
            .collect()
    }

    /// See [`StatusUpdateManager::due`]. Callers commit the checkpoint log first, so
    /// everything returned is already on disk; with changes not even handed to the log
    /// this returns nothing (a bug in the caller, caught loudly in debug builds).
    pub fn due(&mut self, now: Instant) -> Vec<(TaskKey, StatusUpdate)> {
        if self.is_dirty() {
            debug_assert!(
                false,
                "status updates due before their checkpoints were taken"
            );
            tracing::error!("not sending status updates that are not checkpointed yet");
            return Vec::new();
        }
        self.core.due(now)
    }

    /// The pure core, for read-only questions and scheduling.
    pub fn core(&self) -> &StatusUpdateManager {
        &self.core
    }

    pub fn core_mut(&mut self) -> &mut StatusUpdateManager {
        &mut self.core
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_proto::pb::{self, TaskState};
    use drover_proto::FrameworkId;

    /// One update of task `t` of `fw`; `n` fills its uuid.
    fn update(state: TaskState, n: u8) -> StatusUpdate {
        StatusUpdate {
            framework_id: FrameworkId::new("fw"),
            status: pb::TaskStatus {
                task_id: Some(drover_proto::TaskId::new("t")),
                state: state as i32,
                uuid: vec![n; 16],
                exit_code: (state == TaskState::TaskFailed).then_some(3),
                ..Default::default()
            },
        }
    }

    #[test]
    fn changes_of_a_batch_make_one_checkpoint_per_stream() {
        let key = TaskKey::new("fw", "t");
        let mut su = StatusUpdates::new(RetryPolicy::default());
        su.enqueue(&key, update(TaskState::TaskRunning, 1));
        su.enqueue(&key, update(TaskState::TaskFailed, 2));
        let changes = su.take_checkpoints();
        assert_eq!(changes.len(), 1);
        assert!(!su.is_dirty());
        let StreamChange::Updated { stream, .. } = &changes[0] else {
            panic!("{changes:?}")
        };
        assert_eq!(stream.pending.len(), 2);
        assert_eq!(*stream, su.core().checkpoint(&key).unwrap());

        su.due(Instant::now());
        assert_eq!(
            su.acknowledge(&key, &[1; 16]),
            Ack::Accepted { completed: false }
        );
        su.take_checkpoints();
        su.due(Instant::now());
        assert_eq!(
            su.acknowledge(&key, &[2; 16]),
            Ack::Accepted { completed: true }
        );
        assert_eq!(su.take_checkpoints(), vec![StreamChange::Completed { key }]);
    }

    #[test]
    #[cfg_attr(
        debug_assertions,
        should_panic(expected = "before their checkpoints were taken")
    )]
    fn nothing_is_due_before_it_is_checkpointed() {
        let key = TaskKey::new("fw", "t");
        let mut su = StatusUpdates::new(RetryPolicy::default());
        su.enqueue(&key, update(TaskState::TaskRunning, 1));
        assert!(su.due(Instant::now()).is_empty());
    }

    #[test]
    fn invalid_ids_stay_in_memory() {
        let key = TaskKey::new("fw", "a/b");
        let mut su = StatusUpdates::new(RetryPolicy::default());
        su.enqueue(&key, update(TaskState::TaskError, 1));
        assert_eq!(su.core().pending(&key), 1);
        assert!(!su.is_dirty());
        assert!(su.take_checkpoints().is_empty());
    }
}
