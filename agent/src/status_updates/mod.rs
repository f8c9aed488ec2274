//! The status update manager: reliable, ordered delivery of task status updates to the
//! framework, through the master.
//!
//! [`StatusUpdateManager`] is the pure core (inputs in, decisions out; no I/O, no clock
//! reads: time comes in as arguments), in the style of raft-rs. [`checkpoint`] is the thin
//! shell that hands each changed queue to the checkpoint log, which the agent commits
//! before anything is sent.
//!
//! Rules (Mesos's status update manager):
//! - one FIFO stream per task; only the head of a stream is ever in flight;
//! - the head is resent with exponential backoff (10 s doubling, capped at 10 min) until an
//!   acknowledgement for exactly its uuid arrives; then the next update is sent at once;
//! - after every (re)registration all heads are resent immediately;
//! - a stream ends when its terminal update is acknowledged.

pub mod checkpoint;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use drover_proto::pb::{self, TaskState};
use drover_proto::{states, FrameworkId};
use serde::{Deserialize, Serialize};

use crate::layout::TaskKey;

/// One update as the master receives it (`AgentMessage.status_update`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    pub framework_id: FrameworkId,
    pub status: pb::TaskStatus,
}

impl StatusUpdate {
    pub fn state(&self) -> TaskState {
        states::from_i32(self.status.state)
    }

    /// The wire message.
    pub fn to_message(&self) -> pb::AgentMessage {
        pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::StatusUpdate(
                pb::agent_message::StatusUpdate {
                    framework_id: Some(self.framework_id.clone()),
                    status: Some(self.status.clone()),
                },
            )),
        }
    }
}

/// What is persisted per task (an `updates` record of the checkpoint log).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamCheckpoint {
    /// The state of the newest update ever enqueued: what the agent reports for the task
    /// when it re-registers, even after the update itself was acknowledged.
    pub latest_state: i32,
    pub latest_exit_code: Option<i32>,
    /// Unacknowledged updates, oldest first.
    pub pending: Vec<StatusUpdate>,
}

/// Retry schedule of an unacknowledged head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(600),
        }
    }
}

/// Why an update was not enqueued. Each is a bug in the caller, never the network's doing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    #[error("task {0} already has a terminal update")]
    AfterTerminal(TaskKey),
    #[error("update for task {0} has no uuid")]
    NoUuid(TaskKey),
    #[error("update for task {0} repeats a pending uuid")]
    DuplicateUuid(TaskKey),
}

/// The fate of an acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// The head was popped. `completed`: it was the terminal update, the stream is gone.
    Accepted { completed: bool },
    /// No stream for this task (already completed, or never known).
    UnknownTask,
    /// The uuid is not the head's (a duplicate or stale ack): ignored.
    WrongUuid,
}

#[derive(Clone, Copy, Debug)]
struct Retry {
    due: Instant,
    backoff: Duration,
}

#[derive(Debug)]
struct Stream {
    pending: VecDeque<StatusUpdate>,
    latest_state: TaskState,
    latest_exit_code: Option<i32>,
    /// `None` while the head has not been sent since it became the head (or since the
    /// last re-registration).
    retry: Option<Retry>,
}

/// The pure core. Invariants: a key is in `unsent` iff its stream has a head that is
/// due now; `(due, key)` is in `schedule` iff its head was sent and awaits a retry.
#[derive(Debug)]
pub struct StatusUpdateManager {
    policy: RetryPolicy,
    streams: HashMap<TaskKey, Stream>,
    unsent: BTreeSet<TaskKey>,
    schedule: BTreeSet<(Instant, TaskKey)>,
}

impl StatusUpdateManager {
    pub fn new(policy: RetryPolicy) -> Self {
        StatusUpdateManager {
            policy,
            streams: HashMap::new(),
            unsent: BTreeSet::new(),
            schedule: BTreeSet::new(),
        }
    }

    /// Restores a stream from its checkpoint (agent restart). Its head, if any, is due.
    pub fn restore(&mut self, key: TaskKey, cp: StreamCheckpoint) {
        self.forget(&key);
        let pending: VecDeque<_> = cp.pending.into();
        if !pending.is_empty() {
            self.unsent.insert(key.clone());
        }
        self.streams.insert(
            key,
            Stream {
                pending,
                latest_state: states::from_i32(cp.latest_state),
                latest_exit_code: cp.latest_exit_code,
                retry: None,
            },
        );
    }

    /// Appends an update to its task's stream. It is sent by [`Self::due`] once it
    /// reaches the head.
    pub fn enqueue(&mut self, key: &TaskKey, update: StatusUpdate) -> Result<(), EnqueueError> {
        if update.status.uuid.is_empty() {
            return Err(EnqueueError::NoUuid(key.clone()));
        }
        let stream = self.streams.entry(key.clone()).or_insert_with(|| Stream {
            pending: VecDeque::new(),
            latest_state: TaskState::Unspecified,
            latest_exit_code: None,
            retry: None,
        });
        if states::is_terminal(stream.latest_state) {
            return Err(EnqueueError::AfterTerminal(key.clone()));
        }
        if stream
            .pending
            .iter()
            .any(|u| u.status.uuid == update.status.uuid)
        {
            return Err(EnqueueError::DuplicateUuid(key.clone()));
        }
        stream.latest_state = update.state();
        stream.latest_exit_code = update.status.exit_code.or(stream.latest_exit_code);
        stream.pending.push_back(update);
        if stream.pending.len() == 1 {
            self.unsent.insert(key.clone());
        }
        Ok(())
    }

    /// Handles an acknowledgement relayed by the master.
    pub fn acknowledge(&mut self, key: &TaskKey, uuid: &[u8]) -> Ack {
        let Some(stream) = self.streams.get_mut(key) else {
            return Ack::UnknownTask;
        };
        match stream.pending.front() {
            Some(head) if head.status.uuid == uuid => {}
            _ => return Ack::WrongUuid,
        }
        stream.pending.pop_front();
        if let Some(r) = stream.retry.take() {
            self.schedule.remove(&(r.due, key.clone()));
        }
        self.unsent.remove(key);
        if !stream.pending.is_empty() {
            self.unsent.insert(key.clone());
            return Ack::Accepted { completed: false };
        }
        if states::is_terminal(stream.latest_state) {
            self.streams.remove(key);
            return Ack::Accepted { completed: true };
        }
        Ack::Accepted { completed: false }
    }

    /// The heads to send now: every head not yet sent, and every head whose retry time
    /// has come. Each returned head is scheduled for its next retry.
    pub fn due(&mut self, now: Instant) -> Vec<(TaskKey, StatusUpdate)> {
        let mut keys: Vec<TaskKey> = std::mem::take(&mut self.unsent).into_iter().collect();
        while let Some((due, _)) = self.schedule.first() {
            if *due > now {
                break;
            }
            let (_, key) = self.schedule.pop_first().expect("checked non-empty");
            keys.push(key);
        }
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(stream) = self.streams.get_mut(&key) else {
                continue;
            };
            let Some(head) = stream.pending.front() else {
                continue;
            };
            let backoff = match stream.retry {
                None => self.policy.initial,
                Some(r) => (r.backoff * 2).min(self.policy.max),
            };
            let due = now + backoff;
            stream.retry = Some(Retry { due, backoff });
            self.schedule.insert((due, key.clone()));
            out.push((key, head.clone()));
        }
        out
    }

    /// After a (re)registration: every head is due now, with its backoff reset.
    pub fn resend_all(&mut self) {
        self.schedule.clear();
        for (key, stream) in &mut self.streams {
            stream.retry = None;
            if !stream.pending.is_empty() {
                self.unsent.insert(key.clone());
            }
        }
    }

    /// When the next retry falls due (heads not yet sent are due at once: see
    /// [`Self::has_unsent`]).
    /// True when an update with this uuid waits for its acknowledgement.
    pub fn has_pending_uuid(&self, key: &TaskKey, uuid: &[u8]) -> bool {
        self.streams
            .get(key)
            .is_some_and(|s| s.pending.iter().any(|u| u.status.uuid == uuid))
    }

    pub fn next_retry(&self) -> Option<Instant> {
        self.schedule.first().map(|(due, _)| *due)
    }

    /// True when some head has not been sent yet.
    pub fn has_unsent(&self) -> bool {
        !self.unsent.is_empty()
    }

    /// The stream's persistent form, `None` when the task has no stream.
    pub fn checkpoint(&self, key: &TaskKey) -> Option<StreamCheckpoint> {
        self.streams.get(key).map(|s| StreamCheckpoint {
            latest_state: s.latest_state as i32,
            latest_exit_code: s.latest_exit_code,
            pending: s.pending.iter().cloned().collect(),
        })
    }

    pub fn latest_state(&self, key: &TaskKey) -> Option<TaskState> {
        self.streams.get(key).map(|s| s.latest_state)
    }

    pub fn latest_exit_code(&self, key: &TaskKey) -> Option<i32> {
        self.streams.get(key).and_then(|s| s.latest_exit_code)
    }

    pub fn pending(&self, key: &TaskKey) -> usize {
        self.streams.get(key).map_or(0, |s| s.pending.len())
    }

    pub fn total_pending(&self) -> usize {
        self.streams.values().map(|s| s.pending.len()).sum()
    }

    /// Drops a stream without acknowledgement.
    pub fn forget(&mut self, key: &TaskKey) {
        if let Some(s) = self.streams.remove(key) {
            if let Some(r) = s.retry {
                self.schedule.remove(&(r.due, key.clone()));
            }
        }
        self.unsent.remove(key);
    }
}

#[cfg(test)]
mod tests;
