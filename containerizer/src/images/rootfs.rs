//! Per-container root filesystems on top of the store's immutable images, and the image's
//! users.
//!
//! ```text
//! <container_dir>/
//!   rootfs/            the container's root: an overlay mount (or a private copy)
//!   overlay/upper/     what the container writes (overlay upper layer)
//!   overlay/work/      overlayfs's own scratch directory
//! ```

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::unpack::{kind, lstatat, openat};
use super::ImageRecord;
use crate::error::{ContainerizerError, IoContext};

/// How a container's root filesystem was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootfsMode {
    /// An overlay mount: the image read-only below, the container's writes above.
    Overlay,
    /// A private copy of the image (overlay could not be mounted; see the log).
    Copy,
}

/// A container's root filesystem, ready for `pivot_root`.
#[derive(Clone, Debug)]
pub struct PreparedRootfs {
    /// `container_dir/rootfs`.
    pub rootfs: PathBuf,
    pub mode: RootfsMode,
    /// The image (digest, names, and the config the container should run with).
    pub image: ImageRecord,
}

impl PreparedRootfs {
    /// Creates the directory `inside` (an absolute path in the container, e.g.
    /// `/mnt/sandbox`) in the root filesystem, component by component and without
    /// following any symlink, and returns its host path, ready to be a mount target. An
    /// image that makes a component a symlink (`/mnt -> /etc`) would otherwise turn a
    /// bind mount of the sandbox into a mount over the host's `/etc`; it is refused.
    pub fn mount_point(&self, inside: &str) -> Result<PathBuf, ContainerizerError> {
        mount_point_beneath(&self.rootfs, inside)
    }
}

/// [`PreparedRootfs::mount_point`] for any root filesystem directory `rootfs` (the
/// container's init calls it for every mount it makes inside one).
pub fn mount_point_beneath(rootfs: &Path, inside: &str) -> Result<PathBuf, ContainerizerError> {
    let rel = inside.trim_start_matches('/');
    let mut parts = Vec::new();
    for c in Path::new(rel).components() {
        match c {
            std::path::Component::Normal(p) => parts.push(p.to_os_string()),
            std::path::Component::CurDir => {}
            _ => {
                return Err(ContainerizerError::InvalidPath(format!(
                    "'{inside}' is not a plain absolute path inside the container"
                )))
            }
        }
    }
    if parts.is_empty() {
        return Err(ContainerizerError::InvalidPath(format!(
            "'{inside}' names the container's root; a mount point must be below it"
        )));
    }
    let c = |s: &[u8]| {
        CString::new(s)
            .map_err(|_| ContainerizerError::InvalidPath(format!("'{inside}' holds a NUL")))
    };
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    let mut fd = openat(libc::AT_FDCWD, &c(rootfs.as_os_str().as_bytes())?, flags, 0)
        .ctx(|| format!("opening {}", rootfs.display()))?;
    let mut so_far = PathBuf::from("/");
    for part in &parts {
        so_far.push(part);
        let name = c(part.as_bytes())?;
        let next = match openat(fd.as_raw_fd(), &name, flags, 0) {
            Ok(next) => next,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // SAFETY: a valid dirfd and a NUL-terminated name.
                if unsafe { libc::mkdirat(fd.as_raw_fd(), name.as_ptr(), 0o755) } != 0 {
                    let e = io::Error::last_os_error();
                    return Err(ContainerizerError::io(
                        format!("creating {} in the container", so_far.display()),
                        e,
                    ));
                }
                openat(fd.as_raw_fd(), &name, flags, 0)
                    .ctx(|| format!("opening {} in the container", so_far.display()))?
            }
            Err(_) => {
                return Err(ContainerizerError::InvalidImage(format!(
                    "{} is a symlink or not a directory in the image; it cannot hold the \
                         mount point {inside}",
                    so_far.display()
                )))
            }
        };
        fd = next;
    }
    Ok(parts.iter().fold(rootfs.to_path_buf(), |p, c| p.join(c)))
}

pub(super) fn prepare(
    image: ImageRecord,
    lower: &Path,
    container_dir: &Path,
    try_overlay: bool,
) -> Result<PreparedRootfs, ContainerizerError> {
    let rootfs = container_dir.join("rootfs");
    if rootfs.exists() {
        return Err(ContainerizerError::Launch(format!(
            "{} already exists: clean the container's root filesystem up first",
            rootfs.display()
        )));
    }
    std::fs::create_dir_all(container_dir)
        .ctx(|| format!("creating {}", container_dir.display()))?;
    // Left by a cleanup that died between its steps: a stale upper layer must not leak
    // into a new container.
    let stale = container_dir.join("overlay");
    if stale.exists() {
        std::fs::remove_dir_all(&stale).ctx(|| format!("removing {}", stale.display()))?;
    }
    std::fs::create_dir(&rootfs).ctx(|| format!("creating {}", rootfs.display()))?;
    let mode = if try_overlay {
        match mount_overlay(lower, container_dir, &rootfs) {
            Ok(()) => RootfsMode::Overlay,
            Err(e) => {
                tracing::warn!(
                    rootfs = %rootfs.display(), error = %e,
                    "overlay mount failed; copying the image instead (slower, uses disk)"
                );
                let _ = std::fs::remove_dir_all(container_dir.join("overlay"));
                RootfsMode::Copy
            }
        }
    } else {
        RootfsMode::Copy
    };
    if mode == RootfsMode::Copy {
        if let Err(e) = copy_tree(lower, &rootfs) {
            let _ = std::fs::remove_dir_all(&rootfs);
            return Err(ContainerizerError::io(
                format!("copying image {} to {}", image.digest, rootfs.display()),
                e,
            ));
        }
    }
    Ok(PreparedRootfs {
        rootfs,
        mode,
        image,
    })
}

fn mount_overlay(lower: &Path, container_dir: &Path, rootfs: &Path) -> io::Result<()> {
    let upper = container_dir.join("overlay").join("upper");
    let work = container_dir.join("overlay").join("work");
    std::fs::create_dir_all(&upper)?;
    std::fs::create_dir_all(&work)?;
    std::fs::set_permissions(
        container_dir.join("overlay"),
        std::fs::Permissions::from_mode(0o700),
    )?;
    // The overlay's root takes the upper directory's owner and mode: give it the image's.
    let meta = std::fs::metadata(lower)?;
    std::fs::set_permissions(
        &upper,
        std::fs::Permissions::from_mode(meta.mode() & 0o7777),
    )?;
    std::os::unix::fs::chown(&upper, Some(meta.uid()), Some(meta.gid())).or_else(|e| {
        // Not root: overlay will not mount anyway, and the copy keeps our own ids.
        if e.kind() == io::ErrorKind::PermissionDenied {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    for p in [lower, &upper, &work] {
        let bytes = p.as_os_str().as_bytes();
        if bytes.iter().any(|b| b",:\\".contains(b)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} has a ',', ':' or '\\' that overlay options cannot carry",
                    p.display()
                ),
            ));
        }
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let c = |s: &[u8]| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let source = c(b"overlay")?;
    let target = c(rootfs.as_os_str().as_bytes())?;
    let opts = c(options.as_bytes())?;
    // SAFETY: NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            libc::MS_NODEV,
            opts.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Copies the image's tree, keeping modes, owners (when root), symlinks and times.
fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    copy_metadata(dst, &meta)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let m = std::fs::symlink_metadata(&from)?;
        let ft = m.file_type();
        if ft.is_dir() {
            std::fs::create_dir(&to)?;
            copy_tree(&from, &to)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
            let _ = std::os::unix::fs::lchown(&to, Some(m.uid()), Some(m.gid()));
        } else if ft.is_file() {
            std::fs::copy(&from, &to)?;
            copy_metadata(&to, &m)?;
        } else {
            // FIFOs (the store holds no devices): recreate them.
            let c = CString::new(to.as_os_str().as_bytes())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: a NUL-terminated path.
            if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                return Err(io::Error::last_os_error());
            }
            copy_metadata(&to, &m)?;
        }
    }
    Ok(())
}

fn copy_metadata(path: &Path, m: &std::fs::Metadata) -> io::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::lchown(path, Some(m.uid()), Some(m.gid()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(m.mode() & 0o7777))
}

/// Mount points at or below `dir` (from `/proc/self/mountinfo`), deepest first.
fn mounts_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.dedup();
    Ok(found)
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether an overlay mounted on this host has `lower` as a lower layer.
pub(super) fn overlay_uses(lower: &Path) -> io::Result<bool> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let needle = lower.display().to_string();
    Ok(text.lines().filter(|l| l.contains(" - overlay ")).any(|l| {
        let super_options = l.rsplit(' ').next().unwrap_or("");
        super_options
            .split(',')
            .filter_map(|o| o.strip_prefix("lowerdir="))
            .any(|v| v.split(':').any(|d| unescape_mountinfo(d) == needle))
    }))
}

/// Undoes [`super::ImageStore::prepare_rootfs`]: unmounts everything at or below
/// `container_dir/rootfs` (the overlay, and whatever the containerizer mounted inside,
/// deepest first), then removes `rootfs/` and `overlay/`. Nothing is removed while a mount
/// remains, so a bind-mounted sandbox is never deleted through the root filesystem.
/// Idempotent: a container dir already cleaned up is fine.
pub fn cleanup_rootfs(container_dir: &Path) -> Result<(), ContainerizerError> {
    let rootfs = container_dir.join("rootfs");
    if !rootfs.exists() && !container_dir.join("overlay").exists() {
        return Ok(());
    }
    let real = std::fs::canonicalize(&rootfs).unwrap_or_else(|_| rootfs.clone());
    for mount in mounts_under(&real).ctx(|| "reading /proc/self/mountinfo".into())? {
        let c = CString::new(mount.as_os_str().as_bytes()).map_err(|_| {
            ContainerizerError::Launch(format!("odd mount point {}", mount.display()))
        })?;
        // SAFETY: a NUL-terminated path. MNT_DETACH: a process still inside (a task's
        // leftover) must not keep the cleanup from finishing.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            let e = io::Error::last_os_error();
            return Err(ContainerizerError::io(
                format!("unmounting {}", mount.display()),
                e,
            ));
        }
    }
    let left = mounts_under(&real).ctx(|| "reading /proc/self/mountinfo".into())?;
    if !left.is_empty() {
        return Err(ContainerizerError::Launch(format!(
            "{} still has mounts after unmounting: {left:?}",
            rootfs.display()
        )));
    }
    for dir in [rootfs, container_dir.join("overlay")] {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ContainerizerError::io(
                    format!("removing {}", dir.display()),
                    e,
                ))
            }
        }
    }
    Ok(())
}

/// The user a container runs as, from the image's own `/etc/passwd` and `/etc/group`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// The home directory inside the image (`/` when the image does not say).
    pub home: PathBuf,
    /// Supplementary groups (the groups of `/etc/group` that list the user).
    pub groups: Vec<u32>,
}

/// Reads `rel` beneath `root` without following any symlink (an image's `/etc/passwd`
/// must not be a way to read the host's). `None` when it does not exist.
fn read_beneath(root: &Path, rel: &[&str]) -> Result<Option<String>, ContainerizerError> {
    let c = |s: &[u8]| {
        CString::new(s)
            .map_err(|_| ContainerizerError::InvalidImage("a path holds a NUL byte".into()))
    };
    let shown = format!("/{}", rel.join("/"));
    let dir_flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    let mut fd = openat(
        libc::AT_FDCWD,
        &c(root.as_os_str().as_bytes())?,
        dir_flags,
        0,
    )
    .ctx(|| format!("opening {}", root.display()))?;
    let (last, dirs) = rel.split_last().expect("a path");
    for d in dirs {
        let name = c(d.as_bytes())?;
        fd = match openat(fd.as_raw_fd(), &name, dir_flags, 0) {
            Ok(next) => next,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(_) => {
                return Err(ContainerizerError::InvalidImage(format!(
                    "the image's {shown} is reached through a symlink or a non-directory; it \
                     is not read"
                )))
            }
        };
    }
    let name = c(last.as_bytes())?;
    match lstatat(fd.as_raw_fd(), &name) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ContainerizerError::io(
                format!("reading the image's {shown}"),
                e,
            ))
        }
        Ok(st) if kind(&st) != libc::S_IFREG => {
            return Err(ContainerizerError::InvalidImage(format!(
                "the image's {shown} is not a regular file (a symlink?); it is not read"
            )))
        }
        Ok(_) => {}
    }
    let file = openat(fd.as_raw_fd(), &name, libc::O_RDONLY | libc::O_NOFOLLOW, 0)
        .ctx(|| format!("opening the image's {shown}"))?;
    let mut text = String::new();
    std::fs::File::from(file)
        .take(super::source::MAX_JSON_BYTES)
        .read_to_string(&mut text)
        .ctx(|| format!("reading the image's {shown}"))?;
    Ok(Some(text))
}

/// Resolves the image config's `User` (`name`, `uid`, `name:group`, `uid:gid`; empty
/// means root) against the image's `/etc/passwd` and `/etc/group` under `rootfs`. A
/// numeric uid the image does not list runs with gid 0 and home `/`, as Docker does; an
/// unknown name is an error.
pub fn lookup_user(rootfs: &Path, user: &str) -> Result<ResolvedUser, ContainerizerError> {
    let user = user.trim();
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read_beneath(rootfs, &["etc", "passwd"])?.unwrap_or_default();
    let group_file = read_beneath(rootfs, &["etc", "group"])?.unwrap_or_default();
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect();
    let numeric = user_part.parse::<u32>().ok();
    let found = entries.iter().find(|f| match numeric {
        Some(uid) => f[2].parse::<u32>().ok() == Some(uid),
        None => f[0] == user_part,
    });
    let (name, uid, mut gid, home) = match (found, numeric) {
        (Some(f), _) => {
            let uid = f[2].parse().map_err(|_| bad_line("passwd", f))?;
            let gid = f[3].parse().map_err(|_| bad_line("passwd", f))?;
            let home = if f[5].is_empty() { "/" } else { f[5] };
            (f[0].to_string(), uid, gid, PathBuf::from(home))
        }
        (None, Some(uid)) => (String::new(), uid, 0, PathBuf::from("/")),
        (None, None) if user_part.is_empty() || (user_part == "root" && passwd.is_empty()) => {
            ("root".to_string(), 0, 0, PathBuf::from("/"))
        }
        (None, None) => {
            return Err(ContainerizerError::UnknownUser(format!(
                "user '{user_part}' is not in the image's /etc/passwd"
            )))
        }
    };
    let groups_parsed: Vec<Vec<&str>> = group_file
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
        .collect();
    if let Some(g) = group_part {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups_parsed
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    ContainerizerError::UnknownUser(format!(
                        "group '{g}' is not in the image's /etc/group"
                    ))
                })?,
        };
    }
    let mut groups = Vec::new();
    if !name.is_empty() && group_part.is_none() {
        for f in &groups_parsed {
            let members = f.get(3).copied().unwrap_or("");
            if members.split(',').any(|m| m.trim() == name) {
                if let Ok(g) = f[2].parse::<u32>() {
                    if g != gid && !groups.contains(&g) {
                        groups.push(g);
                    }
                }
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        home,
        groups,
    })
}

fn bad_line(file: &str, fields: &[&str]) -> ContainerizerError {
    ContainerizerError::InvalidImage(format!(
        "the image's /etc/{file} has a malformed line for '{}'",
        fields[0]
    ))
}
