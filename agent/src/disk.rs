//! Sandbox disk: usage measured and held to each task's `disk` resource, and the
//! rotation of `stdout`/`stderr`.
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
//! **Rotation** is copy-truncate: a `stdout` or `stderr` larger than `--log-max-size-mb`
//! has its newest `--log-max-size-mb` copied to `stdout.1` (older copies shift to
//! `stdout.2` … up to `--log-max-files`, the oldest dropped), then is truncated to zero.
//! Every writer of these files (the supervisor's task, a container's init, the docker
//! containerizer's log copier) opens them with `O_APPEND`, so after the truncation they
//! go on writing at the new end with no hole. The trade-off: bytes written between the
//! copy and the truncation are lost (the window is one `ftruncate` after a final
//! catch-up copy), and only the newest `--log-max-size-mb` of an oversized file is kept.
//! The alternative, a pipe through a rotating logger, would tie the task's output to a
//! process that must outlive the agent; files keep the design's "files, never pipes".
//! A running custom executor's own `stdout`/`stderr` rotate the same way, and its sandbox
//! is measured, but with no disk resource of its own it is never killed for its disk.
//!
//! [`DiskCore`] is the pure timing core (which task is due, which is over); [`watch`] is
//! the shell that asks the agent loop for its tasks, measures, rotates and kills.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_proto::pb::{self, task_status::Reason};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch as tokio_watch};

use crate::agent::Event;
use crate::containerizer::Containerizer;
use crate::files_api::{fstat, is_kind, lstatat, openat, DIR_FLAGS};
use crate::fsutil::{read_json, write_json_atomic};
use crate::layout::{Layout, TaskKey};
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

/// One rotation of a file, for followers ([`crate::files_api::follow`]): the rotated copy
/// (`<name>.1`) holds bytes `kept_from..old_size` of the file as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub old_size: u64,
    pub kept_from: u64,
}

/// Where a file stands in its rotations: `generation` is odd while a rotation runs and
/// goes up by two with each one (a seqlock, so a follower can tell a read that raced a
/// rotation); `last` describes the latest (absent when it failed half-way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RotationState {
    pub generation: u64,
    pub last: Option<Rotation>,
}

/// The rotation states of the files the agent rotated, shared by the disk watcher (which
/// rotates) and the files API (which follows).
#[derive(Default)]
pub struct Rotations(Mutex<HashMap<(TaskKey, String), RotationState>>);

impl Rotations {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(TaskKey, String), RotationState>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state of `name` (a sandbox path such as `stdout`) of `key`'s sandbox.
    pub fn state(&self, key: &TaskKey, name: &str) -> RotationState {
        self.map()
            .get(&(key.clone(), name.to_string()))
            .copied()
            .unwrap_or_default()
    }

    fn bump(&self, key: &TaskKey, name: &str, last: Option<Option<Rotation>>) {
        let mut map = self.map();
        let state = map.entry((key.clone(), name.to_string())).or_default();
        state.generation += 1;
        if let Some(last) = last {
            state.last = last;
        }
    }

    /// Forgets the files of tasks not in `live` (they no longer rotate).
    fn retain(&self, live: &HashSet<TaskKey>) {
        self.map().retain(|(k, _), _| live.contains(k));
    }
}

/// Ends a rotation however `rotate` returns: a failure half-way leaves no `last`.
struct RotationGuard<'a> {
    rotations: Option<(&'a Rotations, &'a TaskKey)>,
    name: &'a str,
    done: Option<Rotation>,
}

impl Drop for RotationGuard<'_> {
    fn drop(&mut self) {
        if let Some((r, key)) = self.rotations {
            r.bump(key, self.name, Some(self.done));
        }
    }
}

/// Rotates `name` (`stdout` or `stderr`) in the sandbox open at `dir` when it is larger
/// than `max_bytes`, keeping `max_files` rotated copies. Returns whether it rotated.
/// Refuses (does nothing with) anything but a plain file with a single link: the task
/// could have made `stdout` a symlink or a hard link to a file that is not its own.
/// `track` records the rotation for followers of the file.
pub fn rotate(
    dir: &OwnedFd,
    name: &str,
    max_bytes: u64,
    max_files: u32,
    track: Option<(&Rotations, &TaskKey)>,
) -> io::Result<bool> {
    let cname = CString::new(name).map_err(io::Error::other)?;
    // Looked at before it is opened: opening a device node the task made could act on
    // the device. (A swap between the two steps is caught by the fstat below.)
    match lstatat(dir.as_raw_fd(), &cname) {
        Ok(st) if is_kind(&st, libc::S_IFREG) => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    let fd = match openat(
        dir.as_raw_fd(),
        &cname,
        libc::O_RDWR | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
    ) {
        Ok(fd) => fd,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ELOOP)) => return Ok(false),
        Err(e) => return Err(e),
    };
    let st = fstat(fd.as_raw_fd())?;
    if !is_kind(&st, libc::S_IFREG) || st.st_nlink != 1 || (st.st_size as u64) <= max_bytes {
        return Ok(false);
    }
    let numbered = |i: u32| CString::new(format!("{name}.{i}")).map_err(io::Error::other);
    if let Some((r, key)) = track {
        r.bump(key, name, None);
    }
    let mut guard = RotationGuard {
        rotations: track,
        name,
        done: None,
    };
    for i in (1..max_files).rev() {
        rename_in(dir.as_raw_fd(), &numbered(i)?, &numbered(i + 1)?)?;
    }
    let tmp = CString::new(format!(".{name}.rotating")).map_err(io::Error::other)?;
    // SAFETY: unlinkat with a valid dirfd and name; a leftover (or planted) name goes.
    unsafe { libc::unlinkat(dir.as_raw_fd(), tmp.as_ptr(), 0) };
    let copy = openat(
        dir.as_raw_fd(),
        &tmp,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
    )?;
    // SAFETY: fchown of a descriptor we own: the copy belongs to the task's user.
    unsafe { libc::fchown(copy.as_raw_fd(), st.st_uid, st.st_gid) };
    let src = std::fs::File::from(fd);
    let dst = std::fs::File::from(copy);
    let mut size = src.metadata()?.len();
    let start = size.saturating_sub(max_bytes);
    let mut at = start;
    // Copy, then catch up once with what was appended meanwhile; the copy takes its
    // place before the truncation, so a follower that sees the rotation finds it.
    for _ in 0..2 {
        copy_range(&src, &dst, at - start, at, size)?;
        at = size;
        size = src.metadata()?.len();
    }
    rename_in(dir.as_raw_fd(), &tmp, &numbered(1)?)?;
    src.set_len(0)?;
    guard.done = Some(Rotation {
        old_size: at,
        kept_from: start,
    });
    Ok(true)
}

fn copy_range(
    src: &std::fs::File,
    dst: &std::fs::File,
    mut dst_at: u64,
    mut from: u64,
    to: u64,
) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    while from < to {
        let want = ((to - from) as usize).min(buf.len());
        let n = src.read_at(&mut buf[..want], from)?;
        if n == 0 {
            break;
        }
        dst.write_all_at(&buf[..n], dst_at)?;
        from += n as u64;
        dst_at += n as u64;
    }
    Ok(())
}

fn rename_in(dir: RawFd, from: &CString, to: &CString) -> io::Result<()> {
    // SAFETY: renameat with a valid dirfd and names; it never follows symlinks.
    if unsafe { libc::renameat(dir, from.as_ptr(), dir, to.as_ptr()) } != 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::NotFound {
            return Err(e);
        }
    }
    Ok(())
}

/// Megabytes as people read them in messages.
fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0))
}

/// A task's latest disk figures, for its `ResourceStatistics`.
#[derive(Default)]
pub struct DiskUsage(Mutex<HashMap<TaskKey, (u64, Option<u64>)>>);

impl DiskUsage {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<TaskKey, (u64, Option<u64>)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the task's disk figures to `stats` (creating it when the container reports
    /// nothing else).
    pub fn fill(
        &self,
        key: &TaskKey,
        stats: Option<pb::ResourceStatistics>,
    ) -> Option<pb::ResourceStatistics> {
        let Some((used, limit)) = self.map().get(key).copied() else {
            return stats;
        };
        let mut stats = stats.unwrap_or_else(|| pb::ResourceStatistics {
            timestamp: drover_proto::unix_seconds(),
            ..Default::default()
        });
        stats.disk_used_bytes = used;
        stats.disk_limit_bytes = limit.unwrap_or(0);
        Some(stats)
    }

    fn set(&self, key: &TaskKey, used: u64, limit: Option<u64>) {
        self.map().insert(key.clone(), (used, limit));
    }

    fn retain(&self, live: &HashSet<TaskKey>) {
        self.map().retain(|k, _| live.contains(k));
    }
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

/// Asks the agent loop for its active tasks.
async fn active_tasks(events: &mpsc::Sender<Event>) -> Option<Vec<WatchedTask>> {
    let (reply, answer) = oneshot::channel();
    events.send(Event::ActiveTasks(reply)).await.ok()?;
    answer.await.ok()
}

/// The disk watcher: runs until `stop` turns true (see the module docs).
pub async fn watch(
    layout: Layout,
    settings: SandboxSettings,
    events: mpsc::Sender<Event>,
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

fn rotate_all(
    layout: &Layout,
    keys: &[TaskKey],
    max_bytes: u64,
    max_files: u32,
    rotations: &Rotations,
) {
    for key in keys {
        let Ok(dir) = crate::files_api::open_sandbox(layout, key) else {
            continue;
        };
        for name in ["stdout", "stderr"] {
            match rotate(&dir, name, max_bytes, max_files, Some((rotations, key))) {
                Ok(true) => tracing::debug!(task = %key, "rotated {name}"),
                Ok(false) => {}
                Err(e) => tracing::warn!(task = %key, "rotating {name}: {e}"),
            }
        }
    }
}

/// Opens `path` as a directory for [`rotate`] (tests and tools).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: open with a NUL-terminated path; the descriptor is ours.
    let fd = unsafe { libc::open(c.as_ptr(), DIR_FLAGS | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests;
