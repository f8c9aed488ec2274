//! The namespace holder of a task group: the IPC namespace (and, for a group with an
//! ISOLATED network, the network namespace) its linux containers join.
//!
//! No process holds them: a short-lived thread of the agent unshares fresh namespaces
//! and bind-mounts its `/proc/thread-self/ns/{ipc,net}` onto files in the group's
//! directory (`ns/ipc`, `ns/net`); the mounts keep the namespaces alive after the thread
//! is gone, survive an agent restart, and a container's init joins them with `setns`.
//! Tearing the holder down is unmounting those files: the namespaces end with the last
//! container in them.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The namespace files of a holder in `dir` (the group's `ns/` directory).
pub fn files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ipc"), dir.join("net"))
}

/// True when `file` has a namespace mounted on it (nsfs lives on a device of its own).
pub fn is_mounted(file: &Path) -> bool {
    let (Ok(f), Some(Ok(d))) = (
        std::fs::metadata(file),
        file.parent().map(std::fs::metadata),
    ) else {
        return false;
    };
    f.dev() != d.dev()
}

/// Makes the holder in `dir` (created if missing), or finds the one already there:
/// returns the IPC namespace file and, with `network`, the network namespace file (its
/// loopback interface up). Needs root.
pub fn create(dir: &Path, network: bool) -> Result<(PathBuf, Option<PathBuf>), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let (ipc, net) = files(dir);
    let want_net = network.then_some(net.clone());
    let have_ipc = is_mounted(&ipc);
    let have_net = !network || is_mounted(&net);
    if have_ipc && have_net {
        return Ok((ipc, want_net));
    }
    for f in [&ipc, &net] {
        if !is_mounted(f) {
            std::fs::write(f, b"").map_err(|e| format!("creating {}: {e}", f.display()))?;
        }
    }
    let (ipc2, net2) = (ipc.clone(), net.clone());
    // Namespaces belong to a thread: this one makes them, pins them with the mounts, and
    // ends, so no thread of the agent itself ever changes namespace.
    std::thread::spawn(move || -> Result<(), String> {
        let mut flags = 0;
        if !have_ipc {
            flags |= libc::CLONE_NEWIPC;
        }
        if !have_net {
            flags |= libc::CLONE_NEWNET;
        }
        // SAFETY: unshare with valid flags affects this thread only.
        if unsafe { libc::unshare(flags) } != 0 {
            return Err(format!(
                "making the task group's namespaces: {}",
                io::Error::last_os_error()
            ));
        }
        if !have_net {
            super::init::loopback_up()?;
            bind(Path::new("/proc/thread-self/ns/net"), &net2)?;
        }
        if !have_ipc {
            bind(Path::new("/proc/thread-self/ns/ipc"), &ipc2)?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| "the namespace holder's thread panicked".to_string())??;
    Ok((ipc, want_net))
}

/// Unmounts the holder's namespace files and removes them; idempotent.
pub fn destroy(dir: &Path) -> Result<(), String> {
    let (ipc, net) = files(dir);
    for f in [ipc, net] {
        if is_mounted(&f) {
            let c = std::ffi::CString::new(f.as_os_str().as_bytes())
                .map_err(|_| "path contains NUL".to_string())?;
            // SAFETY: a NUL-terminated path. Detached: a concurrent open must not fail it.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                return Err(format!(
                    "unmounting {}: {}",
                    f.display(),
                    io::Error::last_os_error()
                ));
            }
        }
        match std::fs::remove_file(&f) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(format!("removing {}: {e}", f.display()))
            }
            _ => {}
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(format!("removing {}: {e}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Destroys every holder under an agent's `executors/` folder; for cleaning up after a
/// test (a failing one included) or a killed agent. Best effort.
pub fn destroy_all_below(executors_root: &Path) {
    let Ok(frameworks) = std::fs::read_dir(executors_root) else {
        return;
    };
    for fw in frameworks.flatten() {
        for ex in std::fs::read_dir(fw.path()).into_iter().flatten().flatten() {
            let _ = destroy(&ex.path().join("ns"));
        }
    }
}

fn bind(source: &Path, target: &Path) -> Result<(), String> {
    let src = std::ffi::CString::new(source.as_os_str().as_bytes())
        .map_err(|_| "path contains NUL".to_string())?;
    let tgt = std::ffi::CString::new(target.as_os_str().as_bytes())
        .map_err(|_| "path contains NUL".to_string())?;
    // SAFETY: NUL-terminated paths; no filesystem type or data for a bind mount.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(format!(
            "mounting {} on {}: {}",
            source.display(),
            target.display(),
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        // SAFETY: no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    fn ns_of(file: &Path) -> u64 {
        std::fs::metadata(file).unwrap().ino()
    }

    #[test]
    fn a_holder_keeps_fresh_namespaces_until_it_is_destroyed() {
        if !root() {
            eprintln!("skipping: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ns");
        let (ipc, net) = create(&dir, true).unwrap();
        let net = net.unwrap();
        assert!(is_mounted(&ipc) && is_mounted(&net));
        assert_ne!(ns_of(&ipc), ns_of(Path::new("/proc/self/ns/ipc")));
        assert_ne!(ns_of(&net), ns_of(Path::new("/proc/self/ns/net")));
        // Found again, not made anew.
        let (ipc2, _) = create(&dir, true).unwrap();
        assert_eq!(ns_of(&ipc), ns_of(&ipc2));
        destroy(&dir).unwrap();
        assert!(!dir.exists());
        destroy(&dir).unwrap();
    }

    #[test]
    fn a_host_network_holder_has_no_network_namespace() {
        if !root() {
            eprintln!("skipping: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ns");
        let (ipc, net) = create(&dir, false).unwrap();
        assert!(net.is_none());
        assert!(is_mounted(&ipc));
        assert!(!is_mounted(&files(&dir).1));
        destroy(&dir).unwrap();
        assert!(!dir.exists());
    }
}
