//! Where everything lives under `--work-dir`.
//!
//! ```text
//! <work_dir>/
//!   agent.lock                     flock held while an agent uses the work dir
//!   agent_id                       the id the master gave this agent (fsync'd)
//!   term                           highest master term seen (fencing)
//!   meta/checkpoints.log           every task's TaskInfo (checkpointed before launch) and
//!                                  status update stream, group-committed (see `journal`)
//!   meta/frameworks/<fw>/tasks/<task>/
//!     spec.json                    what the supervisor runs
//!     supervisor.json              the supervisor's claim: its pid + start time, task pid
//!     kill_request.json            written by the agent before it signals the supervisor
//!     exit.json                    the supervisor's exit record
//!     supervisor.log               the supervisor's own diagnostics
//!     containerizer                which containerizer runs the task (absent: process)
//!     container.json               linux containers: container id and cgroup paths
//!     task.json, updates.json,     checkpoints of agents before the checkpoint log: read
//!     completed                    once by recovery, moved into the log, then removed
//!   sandboxes/<fw>/<task>/         the task's cwd: stdout, stderr, whatever it writes
//!   meta/frameworks/<fw>/tasks/executor+<id>/, sandboxes/<fw>/executor+<id>/
//!                                  a custom executor's container: its key is a task key
//!                                  whose task id is `executor+<executor id>` (see
//!                                  [`TaskKey::executor`]); `+` is not allowed in ids, so
//!                                  it never meets a real task's directory
//!   images/                        the image store (see `crate::images`)
//! ```
//!
//! Meta files sit outside the sandbox on purpose: the task owns its sandbox and could
//! forge or swap anything written there.

use std::path::{Path, PathBuf};

/// The one task key, shared with the master (see [`drover_proto::TaskKey`]).
pub use drover_proto::TaskKey;

/// Paths under the work dir.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        Layout {
            root: work_dir.into(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn lock_file(&self) -> PathBuf {
        self.root.join("agent.lock")
    }

    pub fn agent_id_file(&self) -> PathBuf {
        self.root.join("agent_id")
    }

    pub fn term_file(&self) -> PathBuf {
        self.root.join("term")
    }

    /// `meta/checkpoints.log`: the agent's checkpoint log (its `journal` module).
    pub fn checkpoint_log(&self) -> PathBuf {
        self.root.join("meta").join("checkpoints.log")
    }

    /// `meta/frameworks`: one directory per framework, each with a `tasks` directory.
    pub fn frameworks_meta(&self) -> PathBuf {
        self.root.join("meta").join("frameworks")
    }

    pub fn sandboxes_root(&self) -> PathBuf {
        self.root.join("sandboxes")
    }

    /// `images/`: the image store (see [`crate::images`]).
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    /// The task's meta directory. The key must be valid (see [`TaskKey::validate`]).
    pub fn task_meta(&self, key: &TaskKey) -> TaskMeta {
        TaskMeta::new(
            self.frameworks_meta()
                .join(key.framework_id.as_str())
                .join("tasks")
                .join(key.task_id.as_str()),
        )
    }

    /// `executors/`: one directory per task group's executor (see [`Self::executor_dir`]).
    pub fn executors_root(&self) -> PathBuf {
        self.root.join("executors")
    }

    /// The sandbox of a task group's (built-in default) executor:
    /// `executors/<framework>/<executor>/`, holding the group's shared volume `shared/`
    /// and its namespace files `ns/`. Both ids must be valid.
    pub fn executor_dir(&self, framework_id: &str, executor_id: &str) -> PathBuf {
        self.executors_root().join(framework_id).join(executor_id)
    }

    /// The task's sandbox. The key must be valid (see [`TaskKey::validate`]).
    pub fn sandbox(&self, key: &TaskKey) -> PathBuf {
        self.sandboxes_root()
            .join(key.framework_id.as_str())
            .join(key.task_id.as_str())
    }
}

/// The files of one task's meta directory.
#[derive(Clone, Debug)]
pub struct TaskMeta {
    dir: PathBuf,
}

impl TaskMeta {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        TaskMeta { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Legacy (before the checkpoint log): the task's `TaskCheckpoint`.
    pub fn task_file(&self) -> PathBuf {
        self.dir.join("task.json")
    }

    /// Legacy (before the checkpoint log): the task's `StreamCheckpoint`.
    pub fn updates_file(&self) -> PathBuf {
        self.dir.join("updates.json")
    }

    pub fn spec_file(&self) -> PathBuf {
        self.dir.join("spec.json")
    }

    pub fn supervisor_file(&self) -> PathBuf {
        self.dir.join("supervisor.json")
    }

    pub fn kill_request_file(&self) -> PathBuf {
        self.dir.join("kill_request.json")
    }

    pub fn exit_file(&self) -> PathBuf {
        self.dir.join("exit.json")
    }

    pub fn supervisor_log(&self) -> PathBuf {
        self.dir.join("supervisor.log")
    }

    /// Legacy (before the checkpoint log): marker of a task whose terminal update was
    /// acknowledged.
    pub fn completed_file(&self) -> PathBuf {
        self.dir.join("completed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_validation() {
        let l = Layout::new("/w");
        let k = TaskKey::new("fw-1", "task-1");
        assert_eq!(
            l.task_meta(&k).exit_file(),
            Path::new("/w/meta/frameworks/fw-1/tasks/task-1/exit.json")
        );
        assert_eq!(l.sandbox(&k), Path::new("/w/sandboxes/fw-1/task-1"));

        let e = TaskKey::executor(&"fw-1".into(), &"ex-1".into());
        assert_eq!(l.sandbox(&e), Path::new("/w/sandboxes/fw-1/executor+ex-1"));
    }
}
