//! Sandbox disk: usage measured and held to each task's `disk` resource, and the timing
//! of `stdout`/`stderr` rotation.
//!
//! **Measurement** ([`measure`]) walks the sandbox through directory descriptors with
//! `O_NOFOLLOW`, as the files API does: the task owns the sandbox and could swap in a
//! symlink to `/` to make the agent walk the whole machine. It counts allocated blocks
//! (what the disk really holds; a sparse file costs what it stores), each hard-linked
//! inode once, stays on the sandbox's filesystem, and is bounded: it stops at
//! [`MAX_ENTRIES`] entries, at [`MAX_DEPTH`] levels, and as soon as the total passes the
//! point where the answer is already "over the limit".
//!
//! **Enforcement**: every `--disk-check-interval-secs`, each active task's sandbox is
//! measured; the figures go into the task's `ResourceStatistics` (`disk_used_bytes`,
//! `disk_limit_bytes`), and a task over its `disk` resource is killed at once with
//! REASON_CONTAINER_LIMITATION_DISK (reported as TASK_FAILED, with the figures in the
//! message, kept in `disk_limitation.json` in the task's meta directory so a restarted
//! agent reports the same). `--enforce-disk-limits false` measures and reports only.
//!
//! **Rotation** of `stdout`/`stderr` (copy-truncate) lives with the files API
//! ([`crate::files_api::rotation`]), which follows files across it; the watcher only
//! decides when. A running custom executor's sandbox is measured, but with no disk
//! resource of its own it is never killed for its disk.
//!
//! [`DiskCore`] is the pure timing core (which task is due, which is over); [`watch`] is
//! the shell that asks the agent loop for its tasks, measures, rotates and kills.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_proto::pb::task_status::Reason;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch as tokio_watch};

use crate::containerizer::{Containerizer, DiskUsage};
use crate::files_api::rotation::{rotate_all, Rotations};
use crate::files_api::{fstat, is_kind, lstatat, openat, DIR_FLAGS};
use crate::fsutil::{read_json, write_json_atomic};
use crate::layout::{Layout, TaskKey};
use crate::outbox::Outbox;
use crate::sandbox_flags::SandboxSettings;

/// Most directory entries one measurement visits.
pub const MAX_ENTRIES: u64 = 1_000_000;
/// Deepest directory level one measurement enters.
pub const MAX_DEPTH: usize = 64;
/// How often `stdout`/`stderr` sizes are checked for rotation (or the disk interval, if
/// shorter).
pub const ROTATION_INTERVAL: Duration = Duration::from_secs(2);
/// The file in a task's meta directory recording why it was killed for its disk.
const LIMITATION_FILE: &str = "disk_limitation.json";

/// What one measurement found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Measured {
    pub bytes: u64,
    pub entries: u64,
    /// False when a bound stopped the walk early (`bytes` is then a lower bound).
    pub complete: bool,
}

struct Walk {
    dev: libc::dev_t,
    seen: HashSet<(libc::dev_t, libc::ino_t)>,
    out: Measured,
    stop_above: u64,
}

impl Walk {
    fn stopped(&self) -> bool {
        self.out.bytes > self.stop_above || self.out.entries >= MAX_ENTRIES
    }
}

/// The names in a directory (`.` and `..` left out). Consumes a duplicate of `dir`.
fn names_in(dir: RawFd) -> io::Result<Vec<CString>> {
    // SAFETY: dup of a descriptor we hold; the copy is owned by the stream below.
    let copy = unsafe { libc::fcntl(dir, libc::F_DUPFD_CLOEXEC, 0) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fdopendir takes the duplicate; closedir releases it.
    let dirp = unsafe { libc::fdopendir(copy) };
    if dirp.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so the duplicate is still ours.
        unsafe { libc::close(copy) };
        return Err(e);
    }
    // Readdir continues from the shared offset: start from the beginning.
    // SAFETY: valid stream.
    unsafe { libc::rewinddir(dirp) };
    let mut out = Vec::new();
    loop {
        // SAFETY: valid stream; the entry is copied before the next call.
        let ent = unsafe { libc::readdir(dirp) };
        if ent.is_null() {
            break;
        }
        // SAFETY: d_name is NUL-terminated inside the entry.
        let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            out.push(name.to_owned());
        }
        if out.len() as u64 >= MAX_ENTRIES {
            break;
        }
    }
    // SAFETY: opened above, closed once.
    unsafe { libc::closedir(dirp) };
    Ok(out)
}

fn walk(dir: &OwnedFd, depth: usize, w: &mut Walk) -> io::Result<()> {
    if depth > MAX_DEPTH {
        w.out.complete = false;
        return Ok(());
    }
    for name in names_in(dir.as_raw_fd())? {
        if w.stopped() {
            w.out.complete = false;
            return Ok(());
        }
        w.out.entries += 1;
        let st = match lstatat(dir.as_raw_fd(), &name) {
            Ok(st) => st,
            // Removed meanwhile: the task is busy; it holds nothing now.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if st.st_dev != w.dev {
            // Another filesystem mounted inside: not the sandbox's disk.
            continue;
        }
        if st.st_nlink > 1 && !is_kind(&st, libc::S_IFDIR) && !w.seen.insert((st.st_dev, st.st_ino))
        {
            continue;
        }
        w.out.bytes = w.out.bytes.saturating_add(st.st_blocks as u64 * 512);
        if is_kind(&st, libc::S_IFDIR) {
            match openat(dir.as_raw_fd(), &name, DIR_FLAGS) {
                Ok(child) => walk(&child, depth + 1, w)?,
                // Swapped for a symlink or removed since the lstat: not followed.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR | libc::EACCES)
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Measures the directory `root` (see the module docs). The walk may stop once the total
/// is above `stop_above`.
pub fn measure(root: &Path, stop_above: u64) -> io::Result<Measured> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(root.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let fd = openat(libc::AT_FDCWD, &c, DIR_FLAGS)?;
    let st = fstat(fd.as_raw_fd())?;
    let mut w = Walk {
        dev: st.st_dev,
        seen: HashSet::new(),
        out: Measured {
            bytes: st.st_blocks as u64 * 512,
            entries: 0,
            complete: true,
        },
        stop_above,
    };
    walk(&fd, 0, &mut w)?;
    Ok(w.out)
}

/// Megabytes as people read them in messages.
fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0))
}

/// A task the disk watcher looks after: active, with its `disk` resource in bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchedTask {
    pub key: TaskKey,
    pub disk_limit_bytes: Option<u64>,
}

/// `disk_limitation.json`: why a task was killed for its disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiskLimitation {
    pub used_bytes: u64,
    pub limit_bytes: u64,
    pub message: String,
}

/// The message of a task killed for its disk, if it was.
pub fn limitation_message(layout: &Layout, key: &TaskKey) -> Option<String> {
    let path = layout.task_meta(key).dir().join(LIMITATION_FILE);
    read_json::<DiskLimitation>(&path)
        .ok()
        .flatten()
        .map(|l| l.message)
}

/// The pure timing core of the watcher: when each task is due for a measurement, when
/// rotation is due, and which measurement means a kill (once per task).
pub struct DiskCore {
    interval: Duration,
    rotation_interval: Duration,
    enforce: bool,
    next_check: HashMap<TaskKey, Instant>,
    next_rotation: Option<Instant>,
    killed: HashSet<TaskKey>,
}

/// What a measurement means.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Within,
    /// Over the limit: kill with this message (given once per task).
    Over(String),
}

impl DiskCore {
    pub fn new(settings: &SandboxSettings) -> Self {
        DiskCore {
            interval: settings.disk_check_interval,
            rotation_interval: ROTATION_INTERVAL.min(settings.disk_check_interval),
            enforce: settings.enforce_disk_limits,
            next_check: HashMap::new(),
            next_rotation: None,
            killed: HashSet::new(),
        }
    }

    /// The tasks due for a measurement at `now` among the active `tasks` (a task is first
    /// measured one interval after it is first seen); forgets tasks no longer active.
    pub fn due(&mut self, now: Instant, tasks: &[TaskKey]) -> Vec<TaskKey> {
        let live: HashSet<&TaskKey> = tasks.iter().collect();
        self.next_check.retain(|k, _| live.contains(k));
        self.killed.retain(|k| live.contains(k));
        let mut due = Vec::new();
        for key in tasks {
            let next = *self
                .next_check
                .entry(key.clone())
                .or_insert(now + self.interval);
            if next <= now {
                due.push(key.clone());
                self.next_check.insert(key.clone(), now + self.interval);
            }
        }
        due
    }

    /// True when `stdout`/`stderr` sizes should be checked at `now`.
    pub fn rotation_due(&mut self, now: Instant) -> bool {
        match self.next_rotation {
            Some(t) if t > now => false,
            _ => {
                self.next_rotation = Some(now + self.rotation_interval);
                true
            }
        }
    }

    /// When the watcher should look again.
    pub fn next_wake(&self) -> Option<Instant> {
        self.next_check
            .values()
            .copied()
            .chain(self.next_rotation)
            .min()
    }

    /// Judges one measurement of `key`'s sandbox.
    pub fn judge(&mut self, key: &TaskKey, used: u64, limit: Option<u64>) -> Verdict {
        let Some(limit) = limit else {
            return Verdict::Within;
        };
        if !self.enforce || used <= limit || !self.killed.insert(key.clone()) {
            return Verdict::Within;
        }
        Verdict::Over(format!(
            "the task's sandbox uses {} on disk, over its disk resource of {} (measured \
             every {} s); the agent killed the task",
            mb(used),
            mb(limit),
            self.interval.as_secs_f64()
        ))
    }
}

/// What the disk watcher asks the agent loop.
#[derive(Debug)]
pub enum Request {
    /// The tasks whose containers run, with their `disk`.
    ActiveTasks(oneshot::Sender<Vec<WatchedTask>>),
}

/// Asks the agent loop for its active tasks.
async fn active_tasks(events: &Outbox<Request>) -> Option<Vec<WatchedTask>> {
    let (reply, answer) = oneshot::channel();
    if !events.send(Request::ActiveTasks(reply)).await {
        return None;
    }
    answer.await.ok()
}

/// The disk watcher: runs until `stop` turns true (see the module docs).
pub async fn watch(
    layout: Layout,
    settings: SandboxSettings,
    events: Outbox<Request>,
    containerizer: Arc<dyn Containerizer>,
    usage: Arc<DiskUsage>,
    rotations: Arc<Rotations>,
    mut stop: tokio_watch::Receiver<bool>,
) {
    let mut core = DiskCore::new(&settings);
    // With nothing scheduled yet, look for new tasks this often.
    let idle = core.rotation_interval;
    loop {
        let now = Instant::now();
        let wake = core.next_wake().unwrap_or(now + idle).min(now + idle);
        tokio::select! {
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let Some(tasks) = active_tasks(&events).await else {
            return;
        };
        let now = Instant::now();
        let keys: Vec<TaskKey> = tasks.iter().map(|t| t.key.clone()).collect();
        let live: HashSet<TaskKey> = keys.iter().cloned().collect();
        usage.retain(&live);
        rotations.retain(&live);
        if let (true, Some(max)) = (core.rotation_due(now), settings.log_max_bytes) {
            let (layout, keys, files) = (layout.clone(), keys.clone(), settings.log_max_files);
            let rotations = rotations.clone();
            let _ = tokio::task::spawn_blocking(move || {
                rotate_all(&layout, &keys, max, files, &rotations)
            })
            .await;
        }
        for key in core.due(now, &keys) {
            let limit = tasks
                .iter()
                .find(|t| t.key == key)
                .and_then(|t| t.disk_limit_bytes);
            let sandbox = layout.sandbox(&key);
            // Once past twice the limit the verdict cannot change: stop counting there.
            let stop_above = limit.map_or(u64::MAX, |l| l.saturating_mul(2));
            let measured = tokio::task::spawn_blocking(move || measure(&sandbox, stop_above)).await;
            let measured = match measured {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => {
                    tracing::debug!(task = %key, "measuring the sandbox: {e}");
                    continue;
                }
                Err(_) => continue,
            };
            usage.set(&key, measured.bytes, limit);
            if let Verdict::Over(message) = core.judge(&key, measured.bytes, limit) {
                tracing::warn!(task = %key, "{message}");
                let record = DiskLimitation {
                    used_bytes: measured.bytes,
                    limit_bytes: limit.unwrap_or(0),
                    message,
                };
                let path = layout.task_meta(&key).dir().join(LIMITATION_FILE);
                if let Err(e) = write_json_atomic(&path, &record) {
                    tracing::warn!(task = %key, "writing {}: {e}", path.display());
                }
                if let Err(e) = containerizer
                    .kill(&key, Duration::ZERO, Reason::ContainerLimitationDisk)
                    .await
                {
                    tracing::error!(task = %key, "killing the task over its disk: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
