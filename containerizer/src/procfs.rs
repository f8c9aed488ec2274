//! Process identity from `/proc`, and signals that cannot hit a recycled pid.
//!
//! A pid alone does not name a process for long: after the process dies the kernel hands
//! the number to someone else. The agent therefore names a supervisor by pid *and* start
//! time (field 22 of `/proc/PID/stat`, clock ticks since boot), which no later process with
//! the same pid can share.

use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use serde::{Deserialize, Serialize};

/// A process named so that pid reuse cannot fool us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat`.
    pub start_time: u64,
}

/// What `/proc/PID/stat` says about a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    /// Session id (field 6): a supervisor is a session leader, so its task's processes
    /// carry the supervisor's pid here unless they started sessions of their own.
    pub session: i32,
    pub start_time: u64,
}

/// Parses a `/proc/PID/stat` line. The command name (field 2) is in parentheses and may
/// itself contain spaces and parentheses, so fields are counted from the *last* `)`.
pub fn parse_stat(line: &str) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The stat of `pid`, `Ok(None)` when no such process exists.
pub fn stat(pid: i32) -> io::Result<Option<Stat>> {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => parse_stat(&s).map(Some).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("bad /proc/{pid}/stat"))
        }),
        // ESRCH shows up when the process dies between open and read.
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The identity of a live process (zombies included: they still hold their pid).
pub fn identity(pid: i32) -> io::Result<Option<ProcessIdentity>> {
    Ok(stat(pid)?.map(|s| ProcessIdentity {
        pid,
        start_time: s.start_time,
    }))
}

/// This process's identity.
pub fn own_identity() -> io::Result<ProcessIdentity> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    identity(pid)?.ok_or_else(|| io::Error::other("/proc/self/stat is missing"))
}

/// True while the process named by `id` exists and has not exited. A zombie counts as
/// exited: it only waits to be reaped.
pub fn is_alive(id: ProcessIdentity) -> bool {
    match stat(id.pid) {
        Ok(Some(s)) => s.start_time == id.start_time && s.state != 'Z' && s.state != 'X',
        Ok(None) => false,
        // Unreadable /proc entry: assume alive rather than declare a running task dead.
        Err(_) => true,
    }
}

/// Sends `signal` to the process named by `id`. `Ok(false)` when that process is gone.
///
/// With a pidfd the check and the signal are race-free: the pidfd pins the process we
/// verified, so a pid recycled in between cannot receive the signal. Kernels without
/// `pidfd_open` (before 5.3) fall back to check-then-`kill`.
pub fn signal(id: ProcessIdentity, signal: i32) -> io::Result<bool> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, id.pid, 0) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ESRCH) => Ok(false),
            Some(libc::ENOSYS) => {
                if !is_alive(id) {
                    return Ok(false);
                }
                // SAFETY: kill has no memory preconditions.
                if unsafe { libc::kill(id.pid, signal) } == 0 {
                    Ok(true)
                } else {
                    esrch_is_false(io::Error::last_os_error())
                }
            }
            _ => Err(err),
        };
    }
    // SAFETY: pidfd_open returned a fresh descriptor that we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if !is_alive(id) {
        return Ok(false);
    }
    use std::os::fd::AsRawFd;
    // SAFETY: valid pidfd, null siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r == 0 {
        Ok(true)
    } else {
        esrch_is_false(io::Error::last_os_error())
    }
}

fn esrch_is_false(err: io::Error) -> io::Result<bool> {
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Pids of the processes for which `pred` holds, found by scanning `/proc`.
fn processes_where(pred: impl Fn(&Stat) -> bool) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| matches!(stat(pid), Ok(Some(s)) if pred(&s)))
        .collect()
}

/// Pids whose parent is `ppid`.
pub fn children_of(ppid: i32) -> Vec<i32> {
    processes_where(|s| s.ppid == ppid)
}

/// Pids of the live members of session `sid`. The kernel does not hand out a pid that
/// is still in use as a session id, so these really belong to that session.
pub fn session_members(sid: i32) -> Vec<i32> {
    processes_where(|s| s.session == sid && s.state != 'Z')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line =
            "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.session, 1234);
        assert_eq!(s.start_time, 987654);
    }

    #[test]
    fn own_identity_is_alive_and_a_wrong_start_time_is_not() {
        let me = own_identity().unwrap();
        assert!(is_alive(me));
        let other = ProcessIdentity {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert!(!is_alive(other));
        // Signal 0 checks existence without disturbing anyone.
        assert!(signal(me, 0).unwrap());
        assert!(!signal(other, 0).unwrap());
    }
}
