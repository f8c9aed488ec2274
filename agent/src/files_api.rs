//! The files API: reads and lists files inside a task's sandbox, and nothing outside it.
//!
//! The task owns its sandbox and can replace any file or directory with a symlink at any
//! moment, so "canonicalise, check the prefix, then open" would be a race the task can
//! win. Instead the sandbox directory is opened, and the path is walked one component at
//! a time with `openat(dirfd, name, O_NOFOLLOW)`: every step is relative to a directory we
//! already hold open, and a symlink anywhere is refused, never followed.
//!
//! These functions block; the gRPC layer runs them with `spawn_blocking`. [`follow`]
//! streams a file as it grows, with every read resolved this way again.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

use drover_proto::ids::validate_id;
use drover_proto::pb;

use crate::error::AgentError;
use crate::layout::{Layout, TaskKey};

/// Most bytes one ReadFile returns.
pub const MAX_READ_LENGTH: u64 = 1 << 20;

/// Splits a sandbox-relative path into components, refusing anything that could leave
/// the sandbox or that is ambiguous. `""` and `"."` name the sandbox itself.
pub fn split_path(path: &str) -> Result<Vec<&str>, AgentError> {
    if path.contains('\0') {
        return Err(AgentError::InvalidPath(
            "the path contains a NUL byte".into(),
        ));
    }
    if path.starts_with('/') {
        return Err(AgentError::InvalidPath(format!(
            "'{path}' is absolute; paths are relative to the task's sandbox (e.g. 'stdout')"
        )));
    }
    if path.is_empty() || path == "." {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" => {
                return Err(AgentError::InvalidPath(format!(
                    "'{path}' has an empty component (a doubled or trailing '/')"
                )))
            }
            ".." => {
                return Err(AgentError::InvalidPath(format!(
                    "'{path}' contains '..'; paths may not leave the sandbox"
                )))
            }
            "." => {}
            c => out.push(c),
        }
    }
    Ok(out)
}

fn cstring(name: &str) -> Result<CString, AgentError> {
    CString::new(name).map_err(|_| AgentError::InvalidPath("the path contains a NUL byte".into()))
}

pub(crate) fn openat(dir: RawFd, name: &CStr, flags: i32) -> io::Result<OwnedFd> {
    // With O_CREAT openat reads a mode argument, which this one does not pass.
    debug_assert_eq!(flags & libc::O_CREAT, 0, "openat cannot create files");
    // SAFETY: valid dirfd and NUL-terminated name; the returned fd is ours.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn lstatat(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

pub(crate) fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out-parameter; fd is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

pub(crate) fn is_kind(st: &libc::stat, kind: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == kind
}

/// Turns an `openat` failure on `shown` (the path so far) into the error a client sees.
fn open_error(err: io::Error, dir: RawFd, name: &CStr, shown: &str) -> AgentError {
    match err.raw_os_error() {
        Some(libc::ELOOP) => symlink_error(shown),
        // O_DIRECTORY on a symlink fails with ENOTDIR before O_NOFOLLOW's ELOOP: look.
        Some(libc::ENOTDIR) => match lstatat(dir, name) {
            Ok(st) if is_kind(&st, libc::S_IFLNK) => symlink_error(shown),
            _ => AgentError::WrongFileType(format!("'{shown}' is not a directory")),
        },
        Some(libc::ENOENT) => {
            AgentError::FileNotFound(format!("'{shown}' does not exist in the sandbox"))
        }
        _ => AgentError::io(format!("opening '{shown}' in the sandbox"), err),
    }
}

fn symlink_error(shown: &str) -> AgentError {
    AgentError::Symlink(format!(
        "'{shown}' is a symlink; the files API never follows symlinks"
    ))
}

pub(crate) const DIR_FLAGS: i32 = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;

/// The sandbox a files API request names: the task's, or, when `executor_id` is set instead
/// of `task_id`, the custom executor's (its tasks write inside it).
pub fn sandbox_key(
    framework_id: Option<pb::FrameworkId>,
    task_id: Option<pb::TaskId>,
    executor_id: Option<pb::ExecutorId>,
) -> Result<TaskKey, AgentError> {
    let framework_id = framework_id.unwrap_or_default();
    let task_id = task_id.filter(|t| !t.value.is_empty());
    let key = match (task_id, executor_id.filter(|e| !e.value.is_empty())) {
        (Some(_), Some(_)) => {
            return Err(AgentError::InvalidPath(
                "name a task_id or an executor_id, not both".into(),
            ))
        }
        (None, Some(executor_id)) => TaskKey::executor(&framework_id, &executor_id),
        (task_id, None) => {
            let task_id = task_id.unwrap_or_default();
            // Checked here as a task id: the executor form of a key must not be reachable
            // by spelling it out.
            validate_id("task", task_id.as_str()).map_err(AgentError::InvalidPath)?;
            TaskKey {
                framework_id,
                task_id,
            }
        }
    };
    key.validate().map_err(AgentError::InvalidPath)?;
    Ok(key)
}

/// Opens the sandbox of a task, or of a custom executor (see [`TaskKey::executor`]). The
/// key is checked first, so its ids are safe path components.
pub fn open_sandbox(layout: &Layout, key: &TaskKey) -> Result<OwnedFd, AgentError> {
    key.validate().map_err(AgentError::InvalidPath)?;
    let framework_id = key.framework_id.as_str();
    let task_id = key.task_id.as_str();
    let not_found = || {
        let whose = match key.executor_id() {
            Some(e) => format!("executor '{e}'"),
            None => format!("task '{task_id}'"),
        };
        AgentError::TaskNotFound(format!(
            "{whose} of framework '{framework_id}' has no sandbox on this agent"
        ))
    };
    let root = layout.sandboxes_root();
    let root_c = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| AgentError::Config("work dir contains NUL".into()))?;
    // The sandboxes root is the agent's own path; below it, tasks may have written.
    let root_fd = match openat(libc::AT_FDCWD, &root_c, libc::O_RDONLY | libc::O_DIRECTORY) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found()),
        Err(e) => return Err(AgentError::io(format!("opening {}", root.display()), e)),
    };
    // A task runs as the agent's user under the process containerizer and could plant a
    // symlink next to its sandbox, so these two steps are as careful as the rest.
    let step = |dir: &OwnedFd, id: &str| -> Result<OwnedFd, AgentError> {
        let name = cstring(id)?;
        openat(dir.as_raw_fd(), &name, DIR_FLAGS).map_err(|e| {
            match open_error(e, dir.as_raw_fd(), &name, id) {
                AgentError::FileNotFound(_) => not_found(),
                other => other,
            }
        })
    };
    let fw_fd = step(&root_fd, framework_id)?;
    step(&fw_fd, task_id)
}

/// Walks every component but the last, returning the directory that holds the last one.
fn walk_parents(sandbox: OwnedFd, comps: &[&str]) -> Result<OwnedFd, AgentError> {
    let mut dir = sandbox;
    for (i, comp) in comps.iter().enumerate().take(comps.len().saturating_sub(1)) {
        let name = cstring(comp)?;
        let shown = comps[..=i].join("/");
        dir = openat(dir.as_raw_fd(), &name, DIR_FLAGS)
            .map_err(|e| open_error(e, dir.as_raw_fd(), &name, &shown))?;
    }
    Ok(dir)
}

/// Reads up to `length` bytes (0 or more than 1 MiB means 1 MiB) at `offset`.
pub fn read_file(
    layout: &Layout,
    key: &TaskKey,
    path: &str,
    offset: u64,
    length: u64,
) -> Result<pb::ReadFileResponse, AgentError> {
    let comps = split_path(path)?;
    if comps.is_empty() {
        return Err(AgentError::InvalidPath(
            "no file named; give a path such as 'stdout'".into(),
        ));
    }
    let sandbox = open_sandbox(layout, key)?;
    let dir = walk_parents(sandbox, &comps)?;
    let name = cstring(comps[comps.len() - 1])?;
    let shown = comps.join("/");
    // Look before opening for reading: opening a FIFO the task planted would wake a writer
    // it holds blocked (or hang us without O_NONBLOCK), and opening a device node can act on
    // the device. An O_PATH descriptor opens nothing; only a regular file is then reopened
    // for reading, through that descriptor, so a name swapped in between cannot be read.
    let at = openat(dir.as_raw_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW)
        .map_err(|e| open_error(e, dir.as_raw_fd(), &name, &shown))?;
    let st = fstat(at.as_raw_fd()).map_err(|e| AgentError::io(format!("stat of '{shown}'"), e))?;
    if is_kind(&st, libc::S_IFLNK) {
        return Err(symlink_error(&shown));
    }
    if is_kind(&st, libc::S_IFDIR) {
        return Err(AgentError::WrongFileType(format!(
            "'{shown}' is a directory; use ListFiles"
        )));
    }
    if !is_kind(&st, libc::S_IFREG) {
        return Err(AgentError::WrongFileType(format!(
            "'{shown}' is not a regular file"
        )));
    }
    let proc_path = cstring(&format!("/proc/self/fd/{}", at.as_raw_fd()))?;
    let fd = openat(
        libc::AT_FDCWD,
        &proc_path,
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
    )
    .map_err(|e| AgentError::io(format!("opening '{shown}' in the sandbox"), e))?;
    let size = st.st_size as u64;
    let want = if length == 0 {
        MAX_READ_LENGTH
    } else {
        length.min(MAX_READ_LENGTH)
    };
    let want = want.min(size.saturating_sub(offset)) as usize;
    let file = File::from(fd);
    let mut data = vec![0u8; want];
    let mut got = 0;
    while got < want {
        match file.read_at(&mut data[got..], offset + got as u64) {
            Ok(0) => break, // The file shrank since fstat.
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(AgentError::io(format!("reading '{shown}'"), e)),
        }
    }
    data.truncate(got);
    Ok(pb::ReadFileResponse { data, offset, size })
}

/// Lists a directory of the sandbox (`""` for the sandbox itself). Entries are symlinks
/// included, described as themselves (never followed), sorted by path. A path naming a
/// regular file lists that one file.
pub fn list_files(
    layout: &Layout,
    key: &TaskKey,
    path: &str,
) -> Result<pb::ListFilesResponse, AgentError> {
    let comps = split_path(path)?;
    let sandbox = open_sandbox(layout, key)?;
    let prefix = comps.join("/");
    let dir = if comps.is_empty() {
        sandbox
    } else {
        let parent = walk_parents(sandbox, &comps)?;
        let name = cstring(comps[comps.len() - 1])?;
        match openat(parent.as_raw_fd(), &name, DIR_FLAGS) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                let st = lstatat(parent.as_raw_fd(), &name)
                    .map_err(|e| AgentError::io(format!("stat of '{prefix}'"), e))?;
                if is_kind(&st, libc::S_IFLNK) {
                    return Err(symlink_error(&prefix));
                }
                return Ok(pb::ListFilesResponse {
                    entries: vec![entry(prefix, &st)],
                });
            }
            Err(e) => return Err(open_error(e, parent.as_raw_fd(), &name, &prefix)),
        }
    };
    let mut entries = read_dir(dir, &prefix)?;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(pb::ListFilesResponse { entries })
}

fn entry(path: String, st: &libc::stat) -> pb::FileEntry {
    pb::FileEntry {
        path,
        size: st.st_size as u64,
        is_dir: is_kind(st, libc::S_IFDIR),
        mode: st.st_mode,
    }
}

fn read_dir(dir: OwnedFd, prefix: &str) -> Result<Vec<pb::FileEntry>, AgentError> {
    // SAFETY: fdopendir takes ownership of the descriptor; closedir below releases both.
    let raw = dir.into_raw_fd();
    let dirp = unsafe { libc::fdopendir(raw) };
    if dirp.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so the descriptor is still ours to close.
        unsafe { libc::close(raw) };
        return Err(AgentError::io("listing the directory", e));
    }
    struct Dir(*mut libc::DIR);
    impl Drop for Dir {
        fn drop(&mut self) {
            // SAFETY: opened by fdopendir, closed once.
            unsafe { libc::closedir(self.0) };
        }
    }
    let dirp = Dir(dirp);
    // SAFETY: dirp is a valid open directory stream.
    let fd = unsafe { libc::dirfd(dirp.0) };
    let mut out = Vec::new();
    loop {
        // SAFETY: valid stream; the entry is read before the next readdir call.
        let ent = unsafe { libc::readdir(dirp.0) };
        if ent.is_null() {
            break;
        }
        // SAFETY: d_name is NUL-terminated inside the entry.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let shown_name = String::from_utf8_lossy(bytes).into_owned();
        let path = if prefix.is_empty() {
            shown_name
        } else {
            format!("{prefix}/{shown_name}")
        };
        match lstatat(fd, name) {
            Ok(st) => out.push(entry(path, &st)),
            // Deleted between readdir and stat: the task is busy; skip it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(AgentError::io(format!("stat of '{path}'"), e)),
        }
    }
    Ok(out)
}

pub mod follow;
pub mod rotation;

#[cfg(test)]
pub(crate) mod tests;
