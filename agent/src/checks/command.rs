//! COMMAND checks of `linux` and `process` tasks: the agent's own binary re-executed as
//! `drover-agent __check_command <request json>`.
//!
//! Entering a container's namespaces takes a fresh, single-threaded process (the agent
//! is multi-threaded, and `setns` into a mount namespace refuses that; a PID namespace
//! only applies to children). The helper
//! 1. joins the container's cgroups (host paths, so before entering its mounts);
//! 2. enters the namespaces of the container's init (`/proc/<pid>/ns/{ipc,uts,net,pid,mnt}`,
//!    opened before any is entered);
//! 3. starts the command as the task's user with the task's environment under the
//!    check's, in the task's working directory, with `PR_SET_PDEATHSIG` so it dies with
//!    the helper (the agent kills the helper at the check's timeout);
//! 4. exits with the command's exit code (`128 + signal` for a signal).
//!
//! A `process` task's check skips steps 1 and 2.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::supervisor::records::UserSpec;

/// The hidden first argument that turns `drover-agent` into a command check's helper.
pub const CHECK_ARG: &str = "__check_command";

/// Exit code of a helper that could not run the command at all (like a shell's 127).
pub const HELPER_FAILED: i32 = 127;

/// What the helper runs, and where.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandRequest {
    /// Enter the namespaces of this (host) pid: the container's init.
    pub enter_pid: Option<i32>,
    /// `cgroup.procs` files of the container's cgroups, joined first.
    pub cgroup_procs: Vec<PathBuf>,
    pub program: String,
    /// The full argv, argv[0] included.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Start from an empty environment (tasks in an image: the host's means nothing).
    pub clear_env: bool,
    /// The working directory, as seen after entering the namespaces.
    pub cwd: PathBuf,
    pub user: Option<UserSpec>,
}

/// If `args` asks for a check helper, runs it and returns its exit code.
pub fn dispatch(args: &[OsString]) -> Option<i32> {
    if args.get(1).is_none_or(|a| a != CHECK_ARG) {
        return None;
    }
    let Some(request) = args.get(2).and_then(|r| r.to_str()) else {
        eprintln!("usage: drover-agent {CHECK_ARG} <request json>");
        return Some(2);
    };
    Some(match serde_json::from_str::<CommandRequest>(request) {
        Ok(r) => match run(&r) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("check command: {e}");
                HELPER_FAILED
            }
        },
        Err(e) => {
            eprintln!("check command: bad request: {e}");
            2
        }
    })
}

fn run(r: &CommandRequest) -> io::Result<i32> {
    // The host's group database, before the container's mounts hide it.
    let user = match &r.user {
        Some(u) => Some((
            u.uid,
            u.gid,
            match &u.groups {
                Some(groups) => groups.clone(),
                None => crate::supervisor::supplementary_groups(&u.name, u.gid)?,
            },
        )),
        None => None,
    };
    if let Some(pid) = r.enter_pid {
        enter(pid, &r.cgroup_procs)?;
    }
    let mut cmd = Command::new(&r.program);
    if r.clear_env {
        cmd.env_clear();
    }
    cmd.arg0(r.argv.first().cloned().unwrap_or_else(|| r.program.clone()))
        .args(r.argv.iter().skip(1))
        .envs(r.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&r.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls (setgroups, setgid, setuid, prctl) on data
    // prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid, groups)) = &user {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            // After the user switch, which clears it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run '{}': {e}", r.program)))?
        .wait()?;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(HELPER_FAILED))
}

/// Joins the cgroups, then the namespaces of `pid`.
fn enter(pid: i32, cgroup_procs: &[PathBuf]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // Opened before entering any: after the mount namespace, /proc is the container's.
    let namespaces = ["ipc", "uts", "net", "pid", "mnt"]
        .iter()
        .map(|ns| {
            let path = format!("/proc/{pid}/ns/{ns}");
            std::fs::File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
        })
        .collect::<io::Result<Vec<_>>>()?;
    for procs in cgroup_procs {
        std::fs::write(procs, b"0")
            .map_err(|e| io::Error::new(e.kind(), format!("joining {}: {e}", procs.display())))?;
    }
    for ns in &namespaces {
        // SAFETY: setns on a namespace descriptor we hold; the helper is single-threaded.
        if unsafe { libc::setns(ns.as_raw_fd(), 0) } != 0 {
            return Err(io::Error::other(format!(
                "entering the container's namespaces: {}",
                io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}
