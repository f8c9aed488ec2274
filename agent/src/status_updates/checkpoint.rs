//! The shell around [`StatusUpdateManager`]: every change to a task's stream is written to
//! `updates.json` (fsync + rename) before the caller may send anything, so an update that
//! left the agent is always on disk, and a restarted agent resends what was not
//! acknowledged.
//!
//! Tasks whose ids are not valid path components (refused at launch with TASK_ERROR) have
//! no directory; their streams live in memory only.

use std::time::Instant;

use super::{Ack, RetryPolicy, StatusUpdate, StatusUpdateManager, StreamCheckpoint};
use crate::error::{AgentError, IoContext};
use crate::fsutil::{read_json, write_atomic, write_json_atomic};
use crate::layout::{Layout, TaskKey};

/// A checkpointing status update manager.
#[derive(Debug)]
pub struct StatusUpdates {
    core: StatusUpdateManager,
    layout: Layout,
}

impl StatusUpdates {
    pub fn new(layout: Layout, policy: RetryPolicy) -> Self {
        StatusUpdates {
            core: StatusUpdateManager::new(policy),
            layout,
        }
    }

    /// Reads a task's checkpoint (recovery). `Ok(None)` when it has none.
    pub fn load(layout: &Layout, key: &TaskKey) -> Result<Option<StreamCheckpoint>, AgentError> {
        let path = layout.task_meta(key).updates_file();
        read_json(&path).ctx(|| format!("reading {}", path.display()))
    }

    /// Restores a recovered stream.
    pub fn restore(&mut self, key: TaskKey, cp: StreamCheckpoint) {
        self.core.restore(key, cp);
    }

    /// Enqueues and checkpoints an update. The update is sent by the next [`Self::due`].
    pub fn enqueue(&mut self, key: &TaskKey, update: StatusUpdate) -> Result<(), AgentError> {
        if let Err(e) = self.core.enqueue(key, update) {
            // A caller bug, not a reason to stop the agent: the stream stays as it was.
            tracing::error!(task = %key, "status update refused: {e}");
            return Ok(());
        }
        self.persist(key)
    }

    /// Handles an acknowledgement; on the terminal one, marks the task completed so that
    /// recovery forgets it (its meta directory and sandbox stay until garbage collection).
    pub fn acknowledge(&mut self, key: &TaskKey, uuid: &[u8]) -> Result<Ack, AgentError> {
        let ack = self.core.acknowledge(key, uuid);
        match ack {
            Ack::Accepted { completed: false } => self.persist(key)?,
            Ack::Accepted { completed: true } => {
                if key.validate().is_ok() {
                    let meta = self.layout.task_meta(key);
                    let path = meta.completed_file();
                    write_atomic(&path, b"").ctx(|| format!("writing {}", path.display()))?;
                    // The queue is empty now; drop the stale copy so nothing is resent.
                    let updates = meta.updates_file();
                    match std::fs::remove_file(&updates) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(AgentError::io(
                                format!("removing {}", updates.display()),
                                e,
                            ))
                        }
                    }
                }
            }
            Ack::UnknownTask | Ack::WrongUuid => {}
        }
        Ok(ack)
    }

    fn persist(&self, key: &TaskKey) -> Result<(), AgentError> {
        if key.validate().is_err() {
            return Ok(());
        }
        let Some(cp) = self.core.checkpoint(key) else {
            return Ok(());
        };
        let path = self.layout.task_meta(key).updates_file();
        write_json_atomic(&path, &cp).ctx(|| format!("checkpointing {}", path.display()))
    }

    /// See [`StatusUpdateManager::due`]. Everything returned is already on disk.
    pub fn due(&mut self, now: Instant) -> Vec<(TaskKey, StatusUpdate)> {
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
    fn checkpoint_round_trip_and_completion() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let key = TaskKey::new("fw", "t");
        let meta = layout.task_meta(&key);
        crate::fsutil::create_dir_all_durable(meta.dir()).unwrap();

        let mut su = StatusUpdates::new(layout.clone(), RetryPolicy::default());
        su.enqueue(&key, update(TaskState::TaskRunning, 1)).unwrap();
        su.enqueue(&key, update(TaskState::TaskFailed, 2)).unwrap();
        // Written before anything was sent.
        let cp = StatusUpdates::load(&layout, &key).unwrap().unwrap();
        assert_eq!(cp.pending.len(), 2);
        assert_eq!(cp, su.core().checkpoint(&key).unwrap());

        su.due(Instant::now());
        su.acknowledge(&key, &[1; 16]).unwrap();

        // A new agent restores exactly the remaining queue.
        let cp = StatusUpdates::load(&layout, &key).unwrap().unwrap();
        assert_eq!(cp.pending.len(), 1);
        assert_eq!(cp.latest_state, TaskState::TaskFailed as i32);
        assert_eq!(cp.latest_exit_code, Some(3));
        let mut again = StatusUpdates::new(layout.clone(), RetryPolicy::default());
        again.restore(key.clone(), cp);
        let sent = again.due(Instant::now());
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1.status.uuid, vec![2; 16]);
        assert_eq!(
            again.acknowledge(&key, &[2; 16]).unwrap(),
            Ack::Accepted { completed: true }
        );
        assert!(meta.completed_file().exists());
        assert!(!meta.updates_file().exists());
    }

    #[test]
    fn invalid_ids_stay_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let key = TaskKey::new("fw", "a/b");
        let mut su = StatusUpdates::new(layout, RetryPolicy::default());
        su.enqueue(&key, update(TaskState::TaskError, 1)).unwrap();
        assert_eq!(su.core().pending(&key), 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
