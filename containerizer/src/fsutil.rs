//! Durable file writes shared by the agent and the supervisor (both blocking).
//!
//! Every checkpoint is written as: temporary file, `fsync`, `rename` over the target,
//! `fsync` of the directory. A crash at any point leaves either the old or the new file,
//! never a torn one, and once the call returns the new content survives a power loss.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let dir = path.parent().ok_or_else(|| no_parent(path))?;
    let mut name = OsString::from(".");
    name.push(path.file_name().ok_or_else(|| no_parent(path))?);
    // The pid keeps the agent and a supervisor from ever sharing a temporary file.
    name.push(format!(".{}.tmp", std::process::id()));
    Ok(dir.join(name))
}

fn no_parent(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{} has no parent directory or file name", path.display()),
    )
}

fn write_synced(tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Flushes a directory's entries (new, renamed or removed names) to disk.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path)?;
    if let Err(e) = write_synced(&tmp, bytes) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path)?;
    fsync_dir(path.parent().ok_or_else(|| no_parent(path))?)
}

/// Replaces `path` with `bytes` atomically (a reader sees the old or the new content,
/// also after a crash of this process) but not durably: for records that only matter
/// while the machine stays up, such as what describes running containers (a power loss
/// ends them all). Saves the two syncs of [`write_atomic`].
pub fn replace_unsynced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path)?;
    if let Err(e) = fs::write(&tmp, bytes) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path)
}

/// [`write_atomic`] of a value as pretty JSON (checkpoints are meant to be readable).
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    write_atomic(path, &bytes)
}

/// Creates `path` with `bytes` only if no file of that name exists, atomically: the file
/// appears complete or not at all. `Ok(false)` when it already existed.
///
/// This is how the agent and a supervisor agree, without a lock, on whether a task was
/// started (see `supervisor::records::SupervisorClaim`): `link(2)` fails with `EEXIST`
/// for exactly one of two racing parties.
pub fn create_exclusive(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    let tmp = temp_path(path)?;
    if let Err(e) = write_synced(&tmp, bytes) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            fsync_dir(path.parent().ok_or_else(|| no_parent(path))?)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// [`create_exclusive`] of a value as JSON.
pub fn create_json_exclusive<T: Serialize>(path: &Path, value: &T) -> io::Result<bool> {
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    create_exclusive(path, &bytes)
}

/// Reads a JSON file; `Ok(None)` when it does not exist. A file that exists but does not
/// parse is an error (`InvalidData`), never silently treated as absent.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not valid: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates a directory and its missing parents, fsyncing each parent that gained an
/// entry, so that a checkpoint written inside it cannot vanish with its directory.
pub fn create_dir_all_durable(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        create_dir_all_durable(parent)?;
    }
    match fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => fsync_dir(parent),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_and_exclusive_writes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/value.json");
        create_dir_all_durable(p.parent().unwrap()).unwrap();
        assert_eq!(read_json::<u32>(&p).unwrap(), None);
        write_json_atomic(&p, &7u32).unwrap();
        write_json_atomic(&p, &8u32).unwrap();
        assert_eq!(read_json::<u32>(&p).unwrap(), Some(8));

        let c = dir.path().join("claim.json");
        assert!(create_json_exclusive(&c, &1u32).unwrap());
        assert!(!create_json_exclusive(&c, &2u32).unwrap());
        assert_eq!(read_json::<u32>(&c).unwrap(), Some(1));
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        fs::write(&c, b"{not json").unwrap();
        assert_eq!(
            read_json::<u32>(&c).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
