//! Typed ids. Each id is its own protobuf message (`drover.v1.FrameworkId`, …), so the
//! Rust type system keeps them apart on the wire and in code alike.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::pb::{AgentId, ExecutorId, FrameworkId, OfferId, TaskId};

macro_rules! typed_id {
    ($t:ident) => {
        impl $t {
            /// Wraps an existing id string.
            pub fn new(value: impl Into<String>) -> Self {
                Self {
                    value: value.into(),
                }
            }

            /// A fresh random (UUID v4) id.
            pub fn random() -> Self {
                Self::new(uuid::Uuid::new_v4().to_string())
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.value
            }

            /// True when the id is empty (unset on the wire).
            pub fn is_empty(&self) -> bool {
                self.value.is_empty()
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.value)
            }
        }

        impl From<&str> for $t {
            fn from(s: &str) -> Self {
                Self::new(s)
            }
        }

        impl From<String> for $t {
            fn from(s: String) -> Self {
                Self::new(s)
            }
        }

        impl From<&$t> for $t {
            fn from(id: &$t) -> Self {
                id.clone()
            }
        }
    };
}

typed_id!(FrameworkId);
typed_id!(AgentId);
typed_id!(OfferId);
typed_id!(TaskId);
typed_id!(ExecutorId);

/// See [`TaskKey::executor`]. `+` is outside the id alphabet (see [`validate_id`]).
const EXECUTOR_KEY_PREFIX: &str = "executor+";

/// A task is unique per framework: `(framework id, task id)`. The one key of a task for
/// the master (registry, leader) and the agent (containers, checkpoints, sandboxes).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskKey {
    /// The framework that launched the task.
    pub framework_id: FrameworkId,
    /// The task's id, unique within its framework.
    pub task_id: TaskId,
}

impl TaskKey {
    /// The key of `task_id` of `framework_id` (ids, `&str` or `String` alike).
    pub fn new(framework_id: impl Into<FrameworkId>, task_id: impl Into<TaskId>) -> Self {
        TaskKey {
            framework_id: framework_id.into(),
            task_id: task_id.into(),
        }
    }

    /// The key of a custom executor's container on an agent: the agent's containerizers,
    /// checkpoint log and work dir layout treat it like a task's, under a task id no real
    /// task can have.
    pub fn executor(framework_id: &FrameworkId, executor_id: &ExecutorId) -> Self {
        TaskKey {
            framework_id: framework_id.clone(),
            task_id: TaskId::new(format!("{EXECUTOR_KEY_PREFIX}{executor_id}")),
        }
    }

    /// The executor id, when this is the key of a custom executor's container.
    pub fn executor_id(&self) -> Option<ExecutorId> {
        self.task_id
            .as_str()
            .strip_prefix(EXECUTOR_KEY_PREFIX)
            .map(ExecutorId::new)
    }

    /// Both ids are usable as single path components (see [`validate_id`]). Only valid
    /// keys ever get a directory on an agent's disk.
    pub fn validate(&self) -> Result<(), String> {
        validate_id("framework", self.framework_id.as_str())?;
        match self.executor_id() {
            Some(id) => validate_id("executor", id.as_str()),
            None => validate_id("task", self.task_id.as_str()),
        }
    }
}

impl fmt::Display for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.framework_id, self.task_id)
    }
}

/// Longest id the master accepts; longer ids are refused as invalid input.
pub const MAX_ID_LEN: usize = 256;

/// Checks that a framework-chosen id is usable: non-empty, bounded, and free of
/// characters that would be unsafe in a sandbox path.
pub fn validate_id(kind: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{kind} id is empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(format!("{kind} id is longer than {MAX_ID_LEN} bytes"));
    }
    if value == "." || value == ".." {
        return Err(format!("{kind} id '{value}' is not allowed"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@')))
    {
        return Err(format!(
            "{kind} id '{value}' contains '{c}'; allowed are letters, digits and - _ . : @"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_display_and_validate() {
        let t = TaskId::new("task-1");
        assert_eq!(t.to_string(), "task-1");
        assert!(validate_id("task", "task-1").is_ok());
        assert!(validate_id("task", "").is_err());
        assert!(validate_id("task", "..").is_err());
        assert!(validate_id("task", "a/b").is_err());
        assert!(validate_id("task", &"x".repeat(300)).is_err());
        assert_ne!(FrameworkId::random(), FrameworkId::random());
    }

    #[test]
    fn task_keys() {
        let k = TaskKey::new("fw-1", "task-1");
        assert!(k.validate().is_ok());
        assert_eq!(k.to_string(), "fw-1/task-1");
        // Built from ids (borrowed or not) or strings alike.
        let (fw, task) = (FrameworkId::new("fw-1"), TaskId::new("task-1"));
        assert_eq!(k, TaskKey::new(&fw, &task));
        assert_eq!(k, TaskKey::new(fw, task));
        assert!(TaskKey::new("fw", "../x").validate().is_err());
        assert!(TaskKey::new("", "x").validate().is_err());

        let e = TaskKey::executor(&FrameworkId::new("fw-1"), &ExecutorId::new("ex-1"));
        assert!(e.validate().is_ok());
        assert_eq!(e.executor_id(), Some(ExecutorId::new("ex-1")));
        assert_eq!(k.executor_id(), None);
        // A real task can never be mistaken for an executor's container.
        assert!(TaskKey::new("fw-1", "executor+ex-1").validate().is_ok());
        assert!(validate_id("task", "executor+ex-1").is_err());
        assert!(
            TaskKey::executor(&FrameworkId::new("fw"), &ExecutorId::new("../x"))
                .validate()
                .is_err()
        );
    }
}
