//! Sandbox garbage collection: a task's sandbox and its meta directory are removed
//! `--gc-delay-secs` after its terminal update was acknowledged.
//!
//! When the acknowledgement of a terminal update arrives, the agent forgets the task and
//! writes `acknowledged_at` (Unix seconds) into its meta directory ([`mark_completed`]).
//! The collector ([`collect`]) scans the meta directories periodically, so the schedule
//! survives agent restarts: it is derived from that recorded time, never from memory. A
//! task the agent still tracks is never collected. Without the marker (a power loss just
//! after the acknowledgement; tasks of agents older than this module), the time the task
//! ended is used instead: the mtime of the supervisor's `exit.json`, or of the old
//! `completed` marker. A task with none of them is left alone.
//!
//! After collection the files API answers NOT_FOUND for the task, and the task's id is
//! no longer remembered on this agent (the master, which never reuses a task id of a
//! framework, keeps that promise). A meta directory whose container root filesystem is
//! still there (`image/`, its cleanup failed) is kept until it is gone, so that nothing
//! ever deletes through a mount.
//!
//! [`GcCore`] is the pure decision (what is due at `now`, when to look next).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, watch};

use crate::fsutil::replace_unsynced;
use crate::layout::{Layout, TaskKey};
use crate::outbox::Outbox;

/// The marker in a task's meta directory: when its terminal update was acknowledged.
pub const COMPLETED_MARKER: &str = "acknowledged_at";

/// Longest pause between two scans.
const MAX_SCAN_INTERVAL: Duration = Duration::from_secs(60);
/// Shortest pause between two scans.
const MIN_SCAN_INTERVAL: Duration = Duration::from_millis(200);

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Records that `key`'s terminal update was acknowledged now. Not synced: if a power
/// loss takes it, the collector falls back on when the task ended (see the module docs).
pub fn mark_completed(layout: &Layout, key: &TaskKey) {
    if key.validate().is_err() {
        return;
    }
    let dir = layout.task_meta(key);
    if !dir.dir().is_dir() {
        return;
    }
    let path = dir.dir().join(COMPLETED_MARKER);
    if let Err(e) = replace_unsynced(&path, format!("{:.3}", unix_now()).as_bytes()) {
        tracing::warn!(task = %key, "writing {}: {e}", path.display());
    }
}

/// When the task whose meta directory is `meta` completed, in Unix seconds, if known.
pub fn completed_at(meta: &Path) -> Option<f64> {
    if let Ok(text) = std::fs::read_to_string(meta.join(COMPLETED_MARKER)) {
        if let Ok(t) = text.trim().parse::<f64>() {
            if t.is_finite() {
                return Some(t);
            }
        }
    }
    ["exit.json", "completed"].iter().find_map(|name| {
        let modified = std::fs::metadata(meta.join(name)).ok()?.modified().ok()?;
        Some(modified.duration_since(UNIX_EPOCH).ok()?.as_secs_f64())
    })
}

/// The pure decision of the collector.
pub struct GcCore {
    delay: Duration,
}

impl GcCore {
    pub fn new(delay: Duration) -> Self {
        GcCore { delay }
    }

    /// How long to pause between scans: a fraction of the delay, within bounds.
    pub fn scan_interval(&self) -> Duration {
        (self.delay / 2).clamp(MIN_SCAN_INTERVAL, MAX_SCAN_INTERVAL)
    }

    /// Of the completed tasks (with their completion times), those due at `now` (Unix
    /// seconds), and the earliest time one of the others will be.
    pub fn due(&self, now: f64, completed: &[(TaskKey, f64)]) -> (Vec<TaskKey>, Option<f64>) {
        let delay = self.delay.as_secs_f64();
        let mut due = Vec::new();
        let mut next: Option<f64> = None;
        for (key, at) in completed {
            let when = at + delay;
            if when <= now {
                due.push(key.clone());
            } else {
                next = Some(next.map_or(when, |n| n.min(when)));
            }
        }
        (due, next)
    }
}

/// Every task with a meta directory that the agent does not track, with its completion
/// time when one is known. `times` remembers the times already read, so that a scan of
/// a week of completed tasks lists directories but rereads no marker.
fn completed_tasks(
    layout: &Layout,
    known: &HashSet<TaskKey>,
    times: &mut HashMap<TaskKey, f64>,
) -> Vec<(TaskKey, f64)> {
    let mut out = Vec::new();
    let Ok(frameworks) = std::fs::read_dir(layout.frameworks_meta()) else {
        times.clear();
        return out;
    };
    for fw in frameworks.flatten() {
        let Ok(tasks) = std::fs::read_dir(fw.path().join("tasks")) else {
            continue;
        };
        for task in tasks.flatten() {
            let key = TaskKey::new(
                fw.file_name().to_string_lossy().into_owned(),
                task.file_name().to_string_lossy().into_owned(),
            );
            if key.validate().is_err() || known.contains(&key) {
                continue;
            }
            let at = match times.get(&key) {
                Some(at) => Some(*at),
                None => completed_at(&task.path()),
            };
            if let Some(at) = at {
                out.push((key, at));
            }
        }
    }
    *times = out.iter().cloned().collect();
    out
}

/// Removes a completed task's sandbox, then its meta directory, then the framework's
/// directories once empty. Returns whether everything of the task is gone.
pub fn remove_task(layout: &Layout, key: &TaskKey) -> bool {
    let meta = layout.task_meta(key);
    if meta.dir().join("image").exists() {
        tracing::warn!(task = %key, "not collecting the task yet: its container's root filesystem is still there");
        return false;
    }
    let sandbox = layout.sandbox(key);
    // remove_dir_all never follows symlinks: whatever the task left in its sandbox,
    // only the sandbox goes.
    for dir in [sandbox.as_path(), meta.dir()] {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(task = %key, "removing {}: {e}", dir.display());
                return false;
            }
        }
    }
    let fw = key.framework_id.as_str();
    // Fails (harmlessly) while the framework has other tasks.
    let _ = std::fs::remove_dir(layout.sandboxes_root().join(fw));
    let fw_meta = layout.frameworks_meta().join(fw);
    let _ = std::fs::remove_dir(fw_meta.join("tasks"));
    let _ = std::fs::remove_dir(&fw_meta);
    true
}

/// What the collector asks the agent loop.
#[derive(Debug)]
pub enum Request {
    /// Every task the agent still tracks; their sandboxes are never collected.
    KnownTasks(oneshot::Sender<Vec<TaskKey>>),
}

/// Asks the agent loop for the tasks it still tracks.
async fn known_tasks(events: &Outbox<Request>) -> Option<HashSet<TaskKey>> {
    let (reply, answer) = oneshot::channel();
    if !events.send(Request::KnownTasks(reply)).await {
        return None;
    }
    answer.await.ok().map(|v| v.into_iter().collect())
}

/// The collector: scans, removes what is due, until `stop` turns true.
pub async fn collect(
    layout: Layout,
    delay: Duration,
    events: Outbox<Request>,
    mut stop: watch::Receiver<bool>,
) {
    let core = GcCore::new(delay);
    let mut times = HashMap::new();
    loop {
        let Some(known) = known_tasks(&events).await else {
            return;
        };
        let layout2 = layout.clone();
        let scanned = tokio::task::spawn_blocking(move || {
            let found = completed_tasks(&layout2, &known, &mut times);
            (found, times)
        })
        .await;
        let scanned = match scanned {
            Ok((found, kept)) => {
                times = kept;
                found
            }
            Err(e) => {
                tracing::error!("the sandbox collector's scan panicked: {e}");
                times = HashMap::new();
                Vec::new()
            }
        };
        let (due, next) = core.due(unix_now(), &scanned);
        if !due.is_empty() {
            let layout2 = layout.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for key in due {
                    if remove_task(&layout2, &key) {
                        tracing::info!(task = %key, "garbage-collected the task's sandbox");
                    }
                }
            })
            .await;
        }
        let mut pause = core.scan_interval();
        if let Some(next) = next {
            pause = pause.min(Duration::from_secs_f64((next - unix_now()).max(0.0)));
        }
        tokio::select! {
            _ = tokio::time::sleep(pause.max(MIN_SCAN_INTERVAL)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_after_the_delay_by_the_given_clock() {
        let core = GcCore::new(Duration::from_secs(3600));
        let (a, b) = (TaskKey::new("fw", "a"), TaskKey::new("fw", "b"));
        let done = [(a.clone(), 1000.0), (b.clone(), 2000.0)];
        assert_eq!(core.due(1000.0, &done), (vec![], Some(4600.0)));
        assert_eq!(core.due(4599.9, &done), (vec![], Some(4600.0)));
        assert_eq!(core.due(4600.0, &done), (vec![a.clone()], Some(5600.0)));
        assert_eq!(core.due(9999.0, &done), (vec![a, b], None));
        assert_eq!(core.scan_interval(), MAX_SCAN_INTERVAL);
        assert_eq!(
            GcCore::new(Duration::ZERO).scan_interval(),
            MIN_SCAN_INTERVAL
        );
        assert_eq!(
            GcCore::new(Duration::from_secs(10)).scan_interval(),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn completion_comes_from_the_marker_else_the_exit_record_and_removal_is_thorough() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let key = TaskKey::new("fw", "t");
        let meta = layout.task_meta(&key);
        std::fs::create_dir_all(meta.dir()).unwrap();
        assert_eq!(completed_at(meta.dir()), None, "no evidence the task ended");
        std::fs::write(meta.exit_file(), b"{}").unwrap();
        let from_exit = completed_at(meta.dir()).unwrap();
        assert!((from_exit - unix_now()).abs() < 3600.0);
        mark_completed(&layout, &key);
        std::fs::write(meta.dir().join(COMPLETED_MARKER), b"1234.5").unwrap();
        assert_eq!(completed_at(meta.dir()), Some(1234.5));

        // Tracked tasks are not candidates; others are, with their times.
        let known: HashSet<TaskKey> = [key.clone()].into_iter().collect();
        let mut times = HashMap::new();
        assert!(completed_tasks(&layout, &known, &mut times).is_empty());
        assert_eq!(
            completed_tasks(&layout, &HashSet::new(), &mut times),
            [(key.clone(), 1234.5)]
        );
        // Read once: a later change of the marker is not looked at again.
        std::fs::write(meta.dir().join(COMPLETED_MARKER), b"99").unwrap();
        assert_eq!(
            completed_tasks(&layout, &HashSet::new(), &mut times),
            [(key.clone(), 1234.5)]
        );

        // The sandbox goes, never what its symlinks point at.
        let sandbox = layout.sandbox(&key);
        std::fs::create_dir_all(sandbox.join("sub")).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), sandbox.join("sub/link")).unwrap();
        // A root filesystem still there holds the collection back.
        std::fs::create_dir(meta.dir().join("image")).unwrap();
        assert!(!remove_task(&layout, &key));
        assert!(sandbox.exists());
        std::fs::remove_dir(meta.dir().join("image")).unwrap();
        assert!(remove_task(&layout, &key));
        assert!(!sandbox.exists() && !meta.dir().exists());
        assert!(!layout.sandboxes_root().join("fw").exists());
        assert!(!layout.frameworks_meta().join("fw").exists());
        assert!(outside.path().join("keep").exists());
    }
}
