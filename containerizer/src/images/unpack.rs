//! Layer unpacking that never leaves the root filesystem being built.
//!
//! Every entry is resolved component by component from a descriptor of the root with
//! `openat(O_NOFOLLOW)`: a component that is a symlink is refused (whoever made it, an
//! earlier layer or an earlier entry of the same layer), and names with `..` or a leading
//! `/` are refused before anything is touched. A canonical-path check would be racy and
//! would follow the very symlinks it is meant to catch; walking descriptors is not.
//!
//! Whiteouts follow the OCI layer spec: `.wh.<name>` removes `<name>` as the lower layers
//! left it, `.wh..wh..opq` hides everything the lower layers put in its directory, and
//! neither touches what the same layer wrote (tracked in `written`). Device nodes are
//! skipped with a log line: containers get their devices from the containerizer, and an
//! image must not be able to plant, say, a raw disk node. Extended attributes are not
//! applied. Ownership is applied only when the agent runs as root.

use std::collections::HashSet;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::manifest::Digest;
use crate::error::ContainerizerError;

/// A reader that hashes what passes through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// Reads what is left (tar padding, the gzip trailer) and returns the digest.
    pub(crate) fn finish(mut self) -> io::Result<Digest> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(Digest::of_hasher(self.hasher))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The uncompressed tar stream of a layer blob (plain tar or gzip; zstd is refused).
pub(crate) fn decompressed<'a>(
    blob: Box<dyn Read + 'a>,
    shown: &str,
) -> Result<Box<dyn Read + 'a>, ContainerizerError> {
    let mut buffered = BufReader::new(blob);
    let head = buffered
        .fill_buf()
        .map_err(|e| ContainerizerError::io(format!("reading layer {shown}"), e))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(buffered)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(ContainerizerError::InvalidImage(format!(
            "layer {shown} is zstd-compressed, which this agent does not unpack; save the \
             image with gzip-compressed or uncompressed layers"
        )))
    } else {
        Ok(Box::new(buffered))
    }
}

/// What [`Unpacker::walk`] does with a missing directory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// Creates it (layers often omit parent directories).
    Create,
    /// Refuses the entry (a hard link's target must exist).
    MustExist,
    /// Reports it missing.
    IfExists,
}

/// What one image's unpacking has cost so far, against its limit.
pub(crate) struct Budget {
    pub used: u64,
    pub limit: u64,
    /// Tar entries of all layers so far: an image of millions of empty files weighs
    /// nothing yet can exhaust the inodes of the work dir's file system.
    pub entries: u64,
}

/// Most tar entries one image may have (a full Debian image has about 10,000 files).
pub(crate) const MAX_ENTRIES: u64 = 1_000_000;

/// Unpacks the layers of one image, in order, into a fresh root directory.
pub(crate) struct Unpacker {
    root: OwnedFd,
    as_root: bool,
    /// Paths (relative to the root) the current layer created or replaced.
    written: HashSet<PathBuf>,
    pub budget: Budget,
    pub skipped_devices: u64,
}

fn hostile(layer: &str, entry: &str, why: &str) -> ContainerizerError {
    ContainerizerError::InvalidImage(format!(
        "layer {layer}: entry '{entry}' {why}; the image is refused"
    ))
}

fn io_err(layer: &str, entry: &str, e: io::Error) -> ContainerizerError {
    ContainerizerError::io(format!("layer {layer}: unpacking '{entry}'"), e)
}

/// Splits an entry name into components, refusing absolute names and `..`.
fn components(name: &Path) -> Result<Vec<OsString>, &'static str> {
    let mut out = Vec::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => out.push(p.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err("contains '..', which would leave the root filesystem")
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("is an absolute path, which would leave the root filesystem")
            }
        }
    }
    Ok(out)
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub(crate) fn openat(dir: RawFd, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: a valid dirfd and a NUL-terminated name; the new descriptor is ours.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    check(fd)?;
    // SAFETY: openat returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn lstatat(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: a zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid dirfd, NUL-terminated name, valid out-pointer.
    check(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

pub(crate) fn kind(st: &libc::stat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

const DIR_FLAGS: i32 = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;

/// Removes `name` in `dir` and everything under it, never following a symlink.
pub(crate) fn remove_at(dir: RawFd, name: &CStr) -> io::Result<()> {
    let st = match lstatat(dir, name) {
        Ok(st) => st,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if kind(&st) == libc::S_IFDIR {
        let child = openat(dir.as_raw_fd(), name, DIR_FLAGS, 0)?;
        for n in list(&child)? {
            remove_at(child.as_raw_fd(), &cstr(&n)?)?;
        }
        // SAFETY: valid dirfd and name.
        check(unsafe { libc::unlinkat(dir, name.as_ptr(), libc::AT_REMOVEDIR) })
    } else {
        // SAFETY: valid dirfd and name.
        check(unsafe { libc::unlinkat(dir, name.as_ptr(), 0) })
    }
}

/// The names in an open directory (through its `/proc/self/fd` link, which names the
/// very directory the descriptor holds).
pub(crate) fn list(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect()
}

impl Unpacker {
    /// `root` must be a new, empty directory.
    pub(crate) fn new(root: &Path, limit: u64) -> io::Result<Unpacker> {
        let c = CString::new(root.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let root = openat(libc::AT_FDCWD, &c, DIR_FLAGS, 0)?;
        Ok(Unpacker {
            root,
            // SAFETY: geteuid has no preconditions.
            as_root: unsafe { libc::geteuid() } == 0,
            written: HashSet::new(),
            budget: Budget {
                used: 0,
                limit,
                entries: 0,
            },
            skipped_devices: 0,
        })
    }

    /// Applies one layer (an uncompressed tar stream). `layer` names it in errors.
    pub(crate) fn apply(
        &mut self,
        tar_stream: &mut dyn Read,
        layer: &str,
    ) -> Result<(), ContainerizerError> {
        self.written.clear();
        let mut archive = tar::Archive::new(tar_stream);
        let entries = archive.entries().map_err(|e| {
            ContainerizerError::InvalidImage(format!("layer {layer} is not a tar: {e}"))
        })?;
        for entry in entries {
            let mut entry = entry.map_err(|e| {
                ContainerizerError::InvalidImage(format!("layer {layer}: corrupt tar entry: {e}"))
            })?;
            self.entry(&mut entry, layer)?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        entry: &mut tar::Entry<'_, &mut dyn Read>,
        layer: &str,
    ) -> Result<(), ContainerizerError> {
        self.budget.entries += 1;
        if self.budget.entries > MAX_ENTRIES {
            return Err(ContainerizerError::ImageTooLarge(format!(
                "the image's layers hold more than {MAX_ENTRIES} entries"
            )));
        }
        let path = entry
            .path()
            .map_err(|e| {
                ContainerizerError::InvalidImage(format!("layer {layer}: bad entry name: {e}"))
            })?
            .into_owned();
        let shown = path.display().to_string();
        let comps = components(&path).map_err(|why| hostile(layer, &shown, why))?;
        let Some((name, parents)) = comps.split_last() else {
            // "./" itself: the root keeps the store's own mode and owner.
            return Ok(());
        };
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let mtime = header.mtime().unwrap_or(0);

        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            return Ok(());
        }
        let name_bytes = name.as_bytes();
        let whiteout = name_bytes.starts_with(b".wh.");
        // A whiteout in a directory that does not exist hides nothing: no-op, rather
        // than creating the directory.
        let how = if whiteout {
            Walk::IfExists
        } else {
            Walk::Create
        };
        let Some(parent) = self.walk(parents, layer, &shown, how)? else {
            return Ok(());
        };
        let parent_rel: PathBuf = parents.iter().collect();
        if name_bytes == b".wh..wh..opq" {
            for child in list(&parent).map_err(|e| io_err(layer, &shown, e))? {
                self.prune(&parent, &parent_rel, &child)
                    .map_err(|e| io_err(layer, &shown, e))?;
            }
            return Ok(());
        }
        if let Some(target) = name_bytes.strip_prefix(b".wh.") {
            if target.starts_with(b".wh.") {
                // aufs bookkeeping (.wh..wh.plnk and friends): not part of the image.
                return Ok(());
            }
            let target = OsStr::from_bytes(target);
            if target.is_empty() || target == "." || target == ".." {
                return Err(hostile(layer, &shown, "is a whiteout of nothing"));
            }
            return self
                .prune(&parent, &parent_rel, target)
                .map_err(|e| io_err(layer, &shown, e));
        }

        let rel = parent_rel.join(name);
        let c_name = cstr(name).map_err(|e| io_err(layer, &shown, e))?;
        let pfd = parent.as_raw_fd();
        let existing = lstatat(pfd, &c_name).ok();
        let r: io::Result<()> = match kind {
            tar::EntryType::Directory => (|| {
                if existing.as_ref().map(kind_of) != Some(libc::S_IFDIR) {
                    remove_at(pfd, &c_name)?;
                    // SAFETY: valid dirfd and name.
                    check(unsafe { libc::mkdirat(pfd, c_name.as_ptr(), 0o700) })?;
                }
                let dir = openat(pfd, &c_name, DIR_FLAGS, 0)?;
                self.set_owner_mode(&dir, uid, gid, mode)
            })(),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                self.budget.used = self.budget.used.saturating_add(size);
                if self.budget.used > self.budget.limit {
                    return Err(ContainerizerError::ImageTooLarge(format!(
                        "the image unpacks to more than the {} MiB allowed \
                         (--image-max-unpacked-mb)",
                        self.budget.limit >> 20
                    )));
                }
                (|| {
                    remove_at(pfd, &c_name)?;
                    let fd = openat(
                        pfd,
                        &c_name,
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                        0o600,
                    )?;
                    let mut file = File::from(fd);
                    let copied = io::copy(entry, &mut file)?;
                    if copied != size {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the layer ends inside this file",
                        ));
                    }
                    let fd = OwnedFd::from(file);
                    self.set_owner_mode(&fd, uid, gid, mode)?;
                    let times = [
                        libc::timespec {
                            tv_sec: mtime as libc::time_t,
                            tv_nsec: 0,
                        },
                        libc::timespec {
                            tv_sec: mtime as libc::time_t,
                            tv_nsec: 0,
                        },
                    ];
                    // SAFETY: an open fd and two valid timespecs.
                    check(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })
                })()
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| hostile(layer, &shown, "is a symlink without a target"))?
                    .into_owned();
                // The target is never followed here: it only means something inside the
                // container, whose root is this directory.
                (|| {
                    remove_at(pfd, &c_name)?;
                    let t = CString::new(target)
                        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                    // SAFETY: NUL-terminated target and name, valid dirfd.
                    check(unsafe { libc::symlinkat(t.as_ptr(), pfd, c_name.as_ptr()) })?;
                    if self.as_root {
                        // SAFETY: valid dirfd and name; AT_SYMLINK_NOFOLLOW owns the link.
                        check(unsafe {
                            libc::fchownat(
                                pfd,
                                c_name.as_ptr(),
                                uid,
                                gid,
                                libc::AT_SYMLINK_NOFOLLOW,
                            )
                        })?;
                    }
                    Ok(())
                })()
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| {
                        ContainerizerError::InvalidImage(format!(
                            "layer {layer}: bad link target: {e}"
                        ))
                    })?
                    .ok_or_else(|| hostile(layer, &shown, "is a hard link without a target"))?
                    .into_owned();
                let shown_target = target.display().to_string();
                let tcomps = components(&target).map_err(|why| {
                    hostile(
                        layer,
                        &shown,
                        &format!("is a hard link to '{shown_target}', which {why}"),
                    )
                })?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(hostile(
                        layer,
                        &shown,
                        "is a hard link to the root directory",
                    ));
                };
                let tparent = self
                    .walk(tparents, layer, &shown_target, Walk::MustExist)?
                    .expect("MustExist walks return a directory");
                let c_tname = cstr(tname).map_err(|e| io_err(layer, &shown, e))?;
                match lstatat(tparent.as_raw_fd(), &c_tname) {
                    Ok(st) if kind_of(&st) == libc::S_IFDIR => {
                        return Err(hostile(layer, &shown, "is a hard link to a directory"))
                    }
                    Ok(_) => {}
                    Err(_) => {
                        return Err(hostile(
                            layer,
                            &shown,
                            &format!("is a hard link to '{shown_target}', which does not exist"),
                        ))
                    }
                }
                (|| {
                    if tparents == parents && tname == name {
                        return Ok(());
                    }
                    remove_at(pfd, &c_name)?;
                    // SAFETY: valid dirfds and names; flags 0 links a symlink itself.
                    check(unsafe {
                        libc::linkat(
                            tparent.as_raw_fd(),
                            c_tname.as_ptr(),
                            pfd,
                            c_name.as_ptr(),
                            0,
                        )
                    })
                })()
            }
            tar::EntryType::Fifo => (|| {
                remove_at(pfd, &c_name)?;
                // SAFETY: valid dirfd and name.
                check(unsafe { libc::mknodat(pfd, c_name.as_ptr(), libc::S_IFIFO | 0o600, 0) })?;
                let fd = openat(pfd, &c_name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
                if self.as_root {
                    // SAFETY: valid dirfd and name.
                    check(unsafe {
                        libc::fchownat(pfd, c_name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW)
                    })?;
                }
                drop(fd);
                // SAFETY: valid dirfd and name; the fifo is ours.
                check(unsafe { libc::fchmodat(pfd, c_name.as_ptr(), mode, 0) })
            })(),
            tar::EntryType::Char | tar::EntryType::Block => {
                self.skipped_devices += 1;
                tracing::info!(layer, entry = %shown, "skipping a device node in an image layer");
                return Ok(());
            }
            other => {
                return Err(hostile(
                    layer,
                    &shown,
                    &format!("has tar entry type {other:?}, which image layers do not use"),
                ))
            }
        };
        r.map_err(|e| io_err(layer, &shown, e))?;
        self.written.insert(rel);
        Ok(())
    }

    fn set_owner_mode(&self, fd: &OwnedFd, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
        if self.as_root {
            // SAFETY: an open fd. Before fchmod: chown clears set-id bits.
            check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })?;
        }
        // SAFETY: an open fd.
        check(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) })
    }

    /// Opens the directory `parents` beneath the root (`None`: missing, for
    /// [`Walk::IfExists`]). A symlink on the way is refused.
    fn walk(
        &mut self,
        parents: &[OsString],
        layer: &str,
        shown: &str,
        how: Walk,
    ) -> Result<Option<OwnedFd>, ContainerizerError> {
        let mut fd = self.root.try_clone().map_err(|e| io_err(layer, shown, e))?;
        let mut rel = PathBuf::new();
        for part in parents {
            rel.push(part);
            let c = cstr(part).map_err(|e| io_err(layer, shown, e))?;
            let next = match openat(fd.as_raw_fd(), &c, DIR_FLAGS, 0) {
                Ok(next) => next,
                Err(e) if e.kind() == io::ErrorKind::NotFound && how == Walk::IfExists => {
                    return Ok(None)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && how == Walk::Create => {
                    // SAFETY: valid dirfd and name.
                    check(unsafe { libc::mkdirat(fd.as_raw_fd(), c.as_ptr(), 0o755) })
                        .map_err(|e| io_err(layer, shown, e))?;
                    self.written.insert(rel.clone());
                    openat(fd.as_raw_fd(), &c, DIR_FLAGS, 0).map_err(|e| io_err(layer, shown, e))?
                }
                Err(e) => {
                    let what = match lstatat(fd.as_raw_fd(), &c) {
                        Ok(st) if kind_of(&st) == libc::S_IFLNK => format!(
                            "goes through the symlink '{}', which could lead outside the \
                             root filesystem",
                            rel.display()
                        ),
                        Ok(_) => {
                            format!("goes through '{}', which is not a directory", rel.display())
                        }
                        Err(_) => format!("needs '{}', which does not exist ({e})", rel.display()),
                    };
                    return Err(hostile(layer, shown, &what));
                }
            };
            if how != Walk::MustExist {
                // The directories holding an entry are part of this layer (a tar from
                // `docker save` lists them anyway): an opaque marker higher up keeps them.
                self.written.insert(rel.clone());
            }
            fd = next;
        }
        Ok(Some(fd))
    }

    /// Hides what lower layers left at `dir/name`, keeping what this layer wrote.
    fn prune(&self, dir: &OwnedFd, dir_rel: &Path, name: &OsStr) -> io::Result<()> {
        let rel = dir_rel.join(name);
        let c = cstr(name)?;
        if !self.written.contains(&rel) {
            return remove_at(dir.as_raw_fd(), &c);
        }
        match lstatat(dir.as_raw_fd(), &c) {
            Ok(st) if kind_of(&st) == libc::S_IFDIR => {
                let child = openat(dir.as_raw_fd(), &c, DIR_FLAGS, 0)?;
                for n in list(&child)? {
                    self.prune(&child, &rel, &n)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Flushes the whole file system holding the root, so an image that the index names
    /// survives a power loss intact.
    pub(crate) fn sync(&self) -> io::Result<()> {
        // SAFETY: an open fd.
        check(unsafe { libc::syncfs(self.root.as_raw_fd()) })
    }
}

fn kind_of(st: &libc::stat) -> libc::mode_t {
    kind(st)
}
