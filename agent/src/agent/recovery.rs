//! Reading the checkpointed tasks back after a restart.
//!
//! Only the reading lives here: the checkpoint log ([`crate::journal`]), plus the
//! per-task files older agents wrote (`task.json`, `updates.json`, `completed`), which are
//! moved into the log once. What to do with each task (reattach, report its recorded exit,
//! or report that it never started) is decided by the agent loop with the containerizer's
//! help, in `state.rs`.

use std::fs;
use std::io;

use crate::error::{AgentError, IoContext};
use crate::fsutil::read_json;
use crate::journal::{Journal, TaskCheckpoint};
use crate::layout::{Layout, TaskKey};
use crate::status_updates::StreamCheckpoint;

/// A task found on disk that is not completed.
#[derive(Clone, Debug)]
pub struct RecoveredTask {
    pub key: TaskKey,
    pub checkpoint: TaskCheckpoint,
    pub stream: Option<StreamCheckpoint>,
    /// Found in an older agent's per-task files rather than in the log: its files are
    /// removed once the log holds it durably.
    pub legacy: bool,
}

/// Opens the checkpoint log and returns it with every task that is not completed, from
/// the log and from an older agent's files (the log wins where both know a task).
pub fn load(layout: &Layout) -> Result<(Journal, Vec<RecoveredTask>), AgentError> {
    let path = layout.checkpoint_log();
    let (journal, live) = Journal::open(&path).ctx(|| format!("recovering {}", path.display()))?;
    let mut out = Vec::new();
    for (key, found) in live {
        let Some(checkpoint) = found.task else {
            // Cannot happen with this agent (a task's record precedes its updates); keep
            // going rather than invent a task.
            tracing::warn!(task = %key, "status updates without a task checkpoint; ignoring them");
            continue;
        };
        out.push(RecoveredTask {
            key,
            checkpoint,
            stream: found.stream,
            legacy: false,
        });
    }
    for task in scan_legacy(layout)? {
        if !out.iter().any(|t| t.key == task.key) {
            out.push(task);
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok((journal, out))
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

/// Every task an older agent checkpointed in per-task files and that is not marked
/// completed. A checkpoint that exists but cannot be parsed stops recovery with an error
/// naming the file: guessing could launch a task twice or lose its exit status.
fn scan_legacy(layout: &Layout) -> Result<Vec<RecoveredTask>, AgentError> {
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
                // A task of the checkpoint log, or an older agent stopped while creating
                // the directory, before the checkpoint that precedes any launch.
                continue;
            };
            let path = meta.updates_file();
            let stream = read_json(&path).ctx(|| format!("recovering {}", path.display()))?;
            out.push(RecoveredTask {
                key,
                checkpoint,
                stream,
                legacy: true,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::{create_dir_all_durable, write_atomic, write_json_atomic};
    use crate::journal::Record;
    use drover_proto::{pb, FrameworkId};

    fn checkpoint(name: &str) -> TaskCheckpoint {
        TaskCheckpoint {
            framework_id: FrameworkId::new("fw"),
            framework_info: None,
            task: pb::TaskInfo {
                name: name.into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn loads_the_log_and_an_older_agents_files_and_skips_completed_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        create_dir_all_durable(&layout.frameworks_meta()).unwrap();
        assert!(load(&layout).unwrap().1.is_empty());

        for t in ["a", "b", "c", "d"] {
            let key = TaskKey::new("fw", t);
            let meta = layout.task_meta(&key);
            create_dir_all_durable(meta.dir()).unwrap();
            if t != "c" {
                write_json_atomic(&meta.task_file(), &checkpoint(t)).unwrap();
            }
        }
        write_atomic(
            &layout.task_meta(&TaskKey::new("fw", "b")).completed_file(),
            b"",
        )
        .unwrap();
        {
            // "d" is in the log too (moved there by an earlier start): the log wins.
            let (mut journal, _) = load(&layout).unwrap();
            for t in ["d", "e"] {
                journal.stage(&Record::Task {
                    key: TaskKey::new("fw", t),
                    task: Box::new(checkpoint(&format!("{t} from the log"))),
                });
            }
            journal.commit().unwrap();
        }
        let found = load(&layout).unwrap().1;
        let names: Vec<_> = found
            .iter()
            .map(|t| {
                (
                    t.key.task_id.to_string(),
                    t.checkpoint.task.name.clone(),
                    t.legacy,
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("a".into(), "a".into(), true),
                ("d".into(), "d from the log".into(), false),
                ("e".into(), "e from the log".into(), false),
            ]
        );
        assert!(found[0].stream.is_none());

        fs::write(
            layout.task_meta(&TaskKey::new("fw", "a")).task_file(),
            b"garbage",
        )
        .unwrap();
        let err = load(&layout).unwrap_err().to_string();
        assert!(err.contains("task.json"), "{err}");
    }
}
