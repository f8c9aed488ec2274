//! Reading the checkpointed tasks back after a restart.
//!
//! Only the scan lives here (pure file reading); what to do with each task (reattach,
//! report its recorded exit, or report that it never started) is decided by the agent
//! loop with the containerizer's help, in `state.rs`.

use std::fs;
use std::io;

use drover_proto::pb;
use drover_proto::FrameworkId;
use serde::{Deserialize, Serialize};

use crate::error::{AgentError, IoContext};
use crate::fsutil::read_json;
use crate::layout::{Layout, TaskKey};
use crate::status_updates::checkpoint::StatusUpdates;
use crate::status_updates::StreamCheckpoint;

/// `task.json`: everything needed to report and relaunch-proof a task, written before
/// its container is started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskCheckpoint {
    pub framework_id: FrameworkId,
    pub framework_info: Option<pb::FrameworkInfo>,
    pub task: pb::TaskInfo,
}

/// A task found on disk that is not completed.
#[derive(Clone, Debug)]
pub struct RecoveredTask {
    pub key: TaskKey,
    pub checkpoint: TaskCheckpoint,
    pub stream: Option<StreamCheckpoint>,
}

fn dir_names(path: &std::path::Path) -> Result<Vec<String>, AgentError> {
    let entries = match fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AgentError::io(format!("listing {}", path.display()), e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.ctx(|| format!("listing {}", path.display()))?;
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            if let Some(name) = e.file_name().to_str() {
                out.push(name.to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Every checkpointed task that is not marked completed. A checkpoint that exists but
/// cannot be parsed stops recovery with an error naming the file: guessing could launch
/// a task twice or lose its exit status.
pub fn scan(layout: &Layout) -> Result<Vec<RecoveredTask>, AgentError> {
    let mut out = Vec::new();
    let frameworks = layout.frameworks_meta();
    for fw in dir_names(&frameworks)? {
        for task in dir_names(&frameworks.join(&fw).join("tasks"))? {
            let key = TaskKey::new(fw.clone(), task);
            if let Err(e) = key.validate() {
                tracing::warn!("ignoring {}: {e}", key);
                continue;
            }
            let meta = layout.task_meta(&key);
            if meta.completed_file().exists() {
                continue;
            }
            let path = meta.task_file();
            let checkpoint: Option<TaskCheckpoint> =
                read_json(&path).ctx(|| format!("recovering {}", path.display()))?;
            let Some(checkpoint) = checkpoint else {
                // The agent stopped while creating the directory, before the checkpoint
                // that precedes any launch: nothing ran and nothing was reported.
                tracing::warn!(task = %key, "meta directory without task.json; ignoring it");
                continue;
            };
            let stream = StatusUpdates::load(layout, &key)?;
            out.push(RecoveredTask {
                key,
                checkpoint,
                stream,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::{create_dir_all_durable, write_atomic, write_json_atomic};

    #[test]
    fn scans_checkpoints_and_skips_completed_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        assert!(scan(&layout).unwrap().is_empty());

        for t in ["a", "b", "c"] {
            let key = TaskKey::new("fw", t);
            let meta = layout.task_meta(&key);
            create_dir_all_durable(meta.dir()).unwrap();
            if t != "c" {
                let cp = TaskCheckpoint {
                    framework_id: FrameworkId::new("fw"),
                    framework_info: None,
                    task: pb::TaskInfo {
                        name: t.into(),
                        ..Default::default()
                    },
                };
                write_json_atomic(&meta.task_file(), &cp).unwrap();
            }
        }
        write_atomic(
            &layout.task_meta(&TaskKey::new("fw", "b")).completed_file(),
            b"",
        )
        .unwrap();
        let found = scan(&layout).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].key, TaskKey::new("fw", "a"));
        assert!(found[0].stream.is_none());

        fs::write(
            layout.task_meta(&TaskKey::new("fw", "a")).task_file(),
            b"garbage",
        )
        .unwrap();
        let err = scan(&layout).unwrap_err().to_string();
        assert!(err.contains("task.json"), "{err}");
    }
}
