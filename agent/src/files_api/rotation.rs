//! Rotation of a sandbox's `stdout` and `stderr`, and the record of rotations that lets
//! [`super::follow`] follow a file across them.
//!
//! Rotation is copy-truncate: a `stdout` or `stderr` larger than `--log-max-size-mb`
//! has its newest `--log-max-size-mb` copied to `stdout.1` (older copies shift to
//! `stdout.2` … up to `--log-max-files`, the oldest dropped), then is truncated to zero.
//! Every writer of these files (the supervisor's task, a container's init, the docker
//! containerizer's log copier) opens them with `O_APPEND`, so after the truncation they
//! go on writing at the new end with no hole. The trade-off: bytes written between the
//! copy and the truncation are lost (the window is one `ftruncate` after a final
//! catch-up copy), and only the newest `--log-max-size-mb` of an oversized file is kept.
//! What the writers appended during the copy comes in with the catch-up, so the copy's
//! oldest bytes are then dropped again: a copy never holds more than
//! `--log-max-size-mb`. A copy keeps the owner and permission bits of its file.
//! The alternative, a pipe through a rotating logger, would tie the task's output to a
//! process that must outlive the agent; files keep the design's "files, never pipes".
//! A running custom executor's own `stdout`/`stderr` rotate the same way.
//!
//! Files are opened as the files API opens them (through the sandbox's directory
//! descriptor, never following a symlink): the task owns its sandbox. The disk watcher
//! (`crate::disk`) decides when to rotate ([`rotate_all`]).

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use super::{fstat, is_kind, lstatat, openat, DIR_FLAGS};
use crate::layout::{Layout, TaskKey};

/// One rotation of a file, for followers ([`super::follow`]): the rotated copy
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
    pub fn retain(&self, live: &HashSet<TaskKey>) {
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
    rotate_with(dir, name, max_bytes, max_files, track, &mut || {})
}

/// [`rotate`], running `during_copy` between the copy and its catch-up: the moment at
/// which the bytes of writers that go on writing while the file rotates arrive (the
/// tests write there; [`rotate`] has nothing to do).
fn rotate_with(
    dir: &OwnedFd,
    name: &str,
    max_bytes: u64,
    max_files: u32,
    track: Option<(&Rotations, &TaskKey)>,
    during_copy: &mut dyn FnMut(),
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
    // Created private, then given the file's owner and permission bits (whatever the
    // agent's umask): the task's user reads its rotated logs as it reads the file.
    let copy = create_at(
        dir.as_raw_fd(),
        &tmp,
        libc::O_RDWR | libc::O_NOFOLLOW,
        0o600,
    )?;
    // SAFETY: fchown and fchmod of a descriptor we own. An agent that may not chown
    // (not root) owns the file already, and keeps it.
    unsafe {
        libc::fchown(copy.as_raw_fd(), st.st_uid, st.st_gid);
        if libc::fchmod(copy.as_raw_fd(), st.st_mode & 0o777) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let src = std::fs::File::from(fd);
    let dst = std::fs::File::from(copy);
    // The newest `max_bytes` of the file as it is now...
    let first_end = src.metadata()?.len();
    let first_start = first_end.saturating_sub(max_bytes);
    copy_range(&src, &dst, 0, first_start, first_end)?;
    during_copy();
    // ...then what was appended meanwhile, read just before the truncation so that as
    // little as possible is lost. (A file the task shrank meanwhile has nothing to add.)
    let end = src.metadata()?.len().max(first_end);
    copy_range(&src, &dst, first_end - first_start, first_end, end)?;
    src.set_len(0)?;
    // The catch-up put the copy over `max_bytes`: its oldest bytes go, so that it holds
    // the newest `max_bytes` of the file as it was truncated. Done after the truncation,
    // which it would otherwise delay (losing more of what the writers write), and before
    // the copy takes its name: followers wait for the rotation to end, and other readers
    // never see a copy half-moved. (`<name>.1` was shifted away or still holds the
    // previous copy meanwhile, as during the copy itself.) A failure here still names
    // the copy: the file itself is gone.
    let start = end.saturating_sub(max_bytes).max(first_start);
    let trimmed = drop_front(&dst, start - first_start, end - first_start);
    rename_in(dir.as_raw_fd(), &tmp, &numbered(1)?)?;
    trimmed?;
    guard.done = Some(Rotation {
        old_size: end,
        kept_from: start,
    });
    Ok(true)
}

/// Creates `name` in `dir` (it must not exist; `O_EXCL`) with `mode` (less the umask).
fn create_at(dir: RawFd, name: &CString, flags: i32, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let flags = flags | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
    // SAFETY: valid dirfd and NUL-terminated name; with O_CREAT, openat reads the mode
    // argument, which is passed. The returned fd is ours.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags, mode) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Drops the first `n` of the `len` bytes of `file`, moving the rest to its start.
fn drop_front(file: &std::fs::File, n: u64, len: u64) -> io::Result<()> {
    if n == 0 {
        return Ok(());
    }
    copy_range(file, file, 0, n.min(len), len)?;
    file.set_len(len.saturating_sub(n))
}

/// Copies bytes `from..to` of `src` (up to its end) to `dst` at `dst_at`. `dst` may be
/// `src` when `dst_at <= from`: every chunk is read before a write can reach it.
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

/// Rotates the `stdout` and `stderr` of every task in `keys` that are over `max_bytes`.
pub fn rotate_all(
    layout: &Layout,
    keys: &[TaskKey],
    max_bytes: u64,
    max_files: u32,
    rotations: &Rotations,
) {
    for key in keys {
        let Ok(dir) = super::open_sandbox(layout, key) else {
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
