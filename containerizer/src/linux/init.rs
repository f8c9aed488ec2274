//! The container's init: PID 1 of a linux container's PID namespace.
//!
//! The supervisor (see [`crate::supervisor`]) unshares a PID namespace for its children
//! and starts this binary again as `drover-agent __container_init <spec.json> <fd>`, with
//! the container's cgroups already joined. The init then
//! 1. unshares the mount, UTS and IPC namespaces (and the network namespace when asked),
//!    makes every mount private, sets the hostname, and mounts a fresh `/proc` for its
//!    PID namespace; with a root filesystem it also mounts the sandbox at `/mnt/sandbox`,
//!    a minimal `/dev`, and pivots into it; a task of a task group first joins the group's
//!    IPC (and network) namespace and gets the group's volume at `<sandbox>/shared`;
//! 2. starts the task's command in its own process group, as the OOM killer's first
//!    choice (`oom_score_adj` 1000, so the init is never taken), and tells the supervisor
//!    through `<fd>` (`started`, or `failed <why>`: a setup error is a launch failure,
//!    not an exit status);
//! 3. reaps every zombie (orphans in the namespace are re-parented to PID 1), forwards
//!    SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to the task's process group;
//! 4. when the command ends, writes its raw wait status to `<fd>` (`status N`: a task
//!    killed by a signal cannot be told apart from an exit code otherwise) and exits with
//!    the same code the shell would give (`128 + signal` for a signal). Its exit makes the
//!    kernel kill whatever else is left in the namespace.
//!
//! Plain blocking Rust plus libc, like the supervisor; all signals it handles are blocked
//! and taken with `sigtimedwait` (a namespace's init only receives signals it handles or
//! blocks).

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::fsutil::read_json;
use crate::supervisor::records::{
    ContainerLaunch, SupervisorSpec, SANDBOX_IN_ROOTFS, SHARED_VOLUME_IN_SANDBOX,
};
use crate::supervisor::SignalSet;

/// The hidden first argument that turns `drover-agent` into a container init.
pub const INIT_ARG: &str = "__container_init";

/// The task's `oom_score_adj`: the most the OOM killer can prefer a process. Within the
/// container's memory cgroup the choice among the task's own processes stays by size;
/// the init (at the agent's score) is never the victim. On a host out of memory, tasks
/// go before the agent, its supervisors and system daemons.
const TASK_OOM_SCORE_ADJ: &str = "1000";

/// Signals the init forwards to the task.
const FORWARDED: [i32; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Every signal the init takes with `sigtimedwait`.
pub(crate) fn init_signals() -> SignalSet {
    let mut all = FORWARDED.to_vec();
    all.push(libc::SIGCHLD);
    SignalSet::of(&all)
}

/// Runs the init; returns its exit code. `report_fd` is the pipe to the supervisor.
pub fn run(spec_path: &Path, report_fd: i32) -> i32 {
    let signals = init_signals();
    if let Err(e) = signals.block() {
        eprintln!("container init: cannot block signals: {e}");
        return 127;
    }
    // SAFETY: the supervisor passed us this descriptor for our exclusive use.
    let mut report = unsafe { File::from_raw_fd(report_fd) };
    // The task must not inherit the pipe: the supervisor reads it to its end.
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(report_fd, libc::F_SETFD, libc::FD_CLOEXEC) };

    let main = match read_json::<SupervisorSpec>(spec_path)
        .map_err(|e| format!("cannot read {}: {e}", spec_path.display()))
        .and_then(|s| s.ok_or_else(|| format!("{} does not exist", spec_path.display())))
        .and_then(|spec| start(&spec))
    {
        Ok(pid) => pid,
        Err(message) => {
            let _ = writeln!(report, "failed {}", message.replace('\n', " "));
            return 127;
        }
    };
    let _ = writeln!(report, "started {main}");

    loop {
        if let Some(status) = reap(main) {
            let _ = writeln!(report, "status {status}");
            return if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
        }
        if let Some(sig) = signals.wait(Duration::from_secs(1)) {
            if FORWARDED.contains(&sig) {
                // The task's process group first (a shell and its children); the
                // process itself if it left its group.
                // SAFETY: kill with integer arguments.
                if unsafe { libc::kill(-main, sig) } != 0 {
                    unsafe { libc::kill(main, sig) };
                }
            }
        }
    }
}

/// Reaps every exited child: the task's orphans come back to PID 1 and must not stay
/// zombies. Returns the main process's wait status once it has ended.
fn reap(main: i32) -> Option<i32> {
    let mut found = None;
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return found;
        }
        if pid == main {
            found = Some(status);
        }
    }
}

/// Sets up the namespaces and mounts, then starts the command. Returns its pid.
fn start(spec: &SupervisorSpec) -> Result<i32, String> {
    let container = spec
        .container
        .as_ref()
        .ok_or("the spec describes no container")?;
    let cwd = isolate(spec, container)?;

    // An image's user comes with its groups from the image's /etc/group: after the
    // pivot the host's group database is out of reach (and must not be consulted).
    let user = match &spec.user {
        Some(u) => Some((
            u.uid,
            u.gid,
            match &u.groups {
                Some(groups) => groups.clone(),
                None => crate::supervisor::supplementary_groups(&u.name, u.gid)
                    .map_err(|e| format!("groups of user '{}': {e}", u.name))?,
            },
        )),
        None => None,
    };
    let argv0 = spec
        .argv
        .first()
        .cloned()
        .unwrap_or_else(|| spec.program.clone());
    let mut cmd = Command::new(&spec.program);
    if container.rootfs.is_some() {
        // Inside an image the host's environment means nothing: the task gets exactly
        // the environment the agent computed (the image's, the task's, Drover's).
        cmd.env_clear();
    }
    cmd.arg0(argv0)
        .args(spec.argv.iter().skip(1))
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&cwd)
        .stdin(Stdio::null());
    let empty = SignalSet::of(&[]);
    let oom_score_adj = c"/proc/self/oom_score_adj";
    // SAFETY: only async-signal-safe calls (setpgid, open, write, close, sigprocmask,
    // setgroups, setgid, setuid) on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The OOM killer must take the task's processes, never the init: the init's
            // score counts its binary's pages, so a task that hits its limit while its own
            // memory is still small could lose the init, and with it every process of the
            // container and the exit status (seen: a 32 MiB container whose `head | tail`
            // killed the init). Lowering the init's score needs CAP_SYS_RESOURCE, which
            // not every root has; raising one's own never does. It must happen as root:
            // after setuid the file is no longer ours to write.
            let fd = libc::open(oom_score_adj.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(
                    fd,
                    TASK_OOM_SCORE_ADJ.as_ptr().cast(),
                    TASK_OOM_SCORE_ADJ.len(),
                );
                libc::close(fd);
            }
            if libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some((uid, gid, groups)) = &user {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run '{}': {e}", spec.program))?;
    let pid = child.id() as i32;
    // SAFETY: setpgid with integer arguments; EACCES after the child's exec is harmless.
    unsafe { libc::setpgid(pid, pid) };
    // Reaped by waitpid(-1) in the main loop.
    drop(child);
    Ok(pid)
}

/// New namespaces, private mounts, hostname, `/proc` (and the root filesystem). Returns
/// the task's working directory as seen from inside.
fn isolate(spec: &SupervisorSpec, c: &ContainerLaunch) -> Result<PathBuf, String> {
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWUTS;
    // A task of a group joins the group's IPC namespace (and network namespace, when the
    // group has one; otherwise it keeps the host's network) instead of making its own.
    let own_network = c.task_group.is_none() && c.isolate_network;
    match &c.task_group {
        Some(group) => {
            let ipc = group
                .ipc_namespace
                .as_ref()
                .ok_or("the task group has no IPC namespace to join")?;
            join_namespace(ipc, libc::CLONE_NEWIPC)?;
            if let Some(net) = &group.net_namespace {
                join_namespace(net, libc::CLONE_NEWNET)?;
            }
        }
        None => flags |= libc::CLONE_NEWIPC,
    }
    if own_network {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: unshare with valid flags; the init is single-threaded.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(format!(
            "cannot create the container's namespaces: {}",
            io::Error::last_os_error()
        ));
    }
    // Nothing mounted from here on may propagate back to the host.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    // This mount namespace began as a copy of the host's, namespace holders of task groups
    // included: dropping the copies lets a group's namespaces go when its holder is torn
    // down, rather than when the last container started meanwhile ends.
    detach_namespace_mounts();
    let name = c.hostname.as_bytes();
    // SAFETY: valid pointer and length.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        return Err(format!(
            "cannot set the hostname '{}': {}",
            c.hostname,
            io::Error::last_os_error()
        ));
    }
    if own_network {
        loopback_up()?;
    }
    if let Some(group) = &c.task_group {
        // Mounted in the container's own mount namespace, before the sandbox is bound
        // into an image's root filesystem (recursively), so it shows there too and
        // leaves nothing behind on the host.
        let at = spec.sandbox.join(SHARED_VOLUME_IN_SANDBOX);
        mount(
            Some(path_str(&group.shared)?),
            &at,
            None,
            libc::MS_BIND,
            None,
        )?;
    }
    let proc_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let Some(rootfs) = &c.rootfs else {
        // A /proc of this PID namespace: the task sees its own processes only.
        mount(
            Some("proc"),
            Path::new("/proc"),
            Some("proc"),
            proc_flags,
            None,
        )?;
        return Ok(spec.sandbox.clone());
    };

    // The root filesystem must be a mount point for pivot_root.
    mount(
        Some(
            rootfs
                .as_os_str()
                .to_str()
                .ok_or("rootfs path is not UTF-8")?,
        ),
        rootfs,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    // Every mount target is made beneath the root filesystem without following any of
    // the image's symlinks (a `/mnt -> /etc` link must not turn into a mount over the
    // host's /etc), right before it is mounted on.
    let beneath = |inside: &str| {
        crate::images::mount_point_beneath(rootfs, inside).map_err(|e| e.to_string())
    };
    let sandbox_in = beneath(SANDBOX_IN_ROOTFS)?;
    mount(
        Some(path_str(&spec.sandbox)?),
        &sandbox_in,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    mount(
        Some("proc"),
        &beneath("/proc")?,
        Some("proc"),
        proc_flags,
        None,
    )?;
    let dev = beneath("/dev")?;
    populate_dev(&dev)?;

    let root_c = cstring(rootfs.as_os_str().as_bytes())?;
    let dot = cstring(b".")?;
    // SAFETY: valid NUL-terminated paths. pivot_root(".", ".") stacks the old root on
    // top of the new one; detaching it leaves only the container's filesystem.
    unsafe {
        if libc::chdir(root_c.as_ptr()) != 0
            || libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) != 0
            || libc::umount2(dot.as_ptr(), libc::MNT_DETACH) != 0
            || libc::chdir(c"/".as_ptr()) != 0
        {
            return Err(format!(
                "cannot switch to the root filesystem {}: {}",
                rootfs.display(),
                io::Error::last_os_error()
            ));
        }
    }
    let cwd = c
        .working_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(SANDBOX_IN_ROOTFS));
    // Made inside the container, after the pivot: the image's symlinks resolve within
    // it. Docker creates a missing WORKDIR the same way.
    fs::create_dir_all(&cwd)
        .map_err(|e| format!("creating the working directory {}: {e}", cwd.display()))?;
    Ok(cwd)
}

/// A small `/dev` on a tmpfs: the usual character devices bound from the host, the
/// `/proc/self/fd` links, and a `/dev/shm`.
fn populate_dev(dev: &Path) -> Result<(), String> {
    mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=755,size=65536k"),
    )?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let target = dev.join(name);
        File::create(&target).map_err(|e| format!("creating {}: {e}", target.display()))?;
        mount(Some(path_str(&host)?), &target, None, libc::MS_BIND, None)?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, dev.join(link))
            .map_err(|e| format!("creating /dev/{link}: {e}"))?;
    }
    let shm = dev.join("shm");
    fs::create_dir(&shm).map_err(|e| format!("creating /dev/shm: {e}"))?;
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=1777,size=65536k"),
    )
}

/// Lazily unmounts every `nsfs` mount (a namespace pinned to a file) in this mount
/// namespace. Best effort: a mount that will not go only keeps a namespace alive longer.
fn detach_namespace_mounts() {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for line in info.lines() {
        let Some((fields, rest)) = line.split_once(" - ") else {
            continue;
        };
        if rest.split(' ').next() != Some("nsfs") {
            continue;
        }
        let Some(point) = fields.split(' ').nth(4) else {
            continue;
        };
        let Ok(path) = cstring(&unescape_mount_path(point)) else {
            continue;
        };
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape_mount_path(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = (b[i] == b'\\' && i + 3 < b.len())
            .then(|| &b[i + 1..i + 4])
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u16, |n, c| n * 8 + u16::from(c - b'0')))
            .and_then(|n| u8::try_from(n).ok());
        match code {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// Enters the namespace a task group's namespace file holds.
fn join_namespace(file: &Path, kind: libc::c_int) -> Result<(), String> {
    let f = File::open(file).map_err(|e| format!("opening {}: {e}", file.display()))?;
    // SAFETY: setns on a file descriptor we own; the init is single-threaded.
    if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), kind) } != 0 {
        return Err(format!(
            "joining the task group's namespace {}: {}",
            file.display(),
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Brings up `lo` in a fresh network namespace (it starts down).
pub(crate) fn loopback_up() -> Result<(), String> {
    // SAFETY: socket/ioctl with a zeroed, NUL-terminated ifreq.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(format!("socket: {}", io::Error::last_os_error()));
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut result = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req);
        if result == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            result = libc::ioctl(sock, libc::SIOCSIFFLAGS, &req);
        }
        let err = io::Error::last_os_error();
        libc::close(sock);
        if result != 0 {
            return Err(format!("bringing up the loopback interface: {err}"));
        }
    }
    Ok(())
}

fn cstring(b: &[u8]) -> Result<CString, String> {
    CString::new(b).map_err(|_| "path contains NUL".to_string())
}

fn path_str(p: &Path) -> Result<&str, String> {
    p.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", p.display()))
}

fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let src = source.map(|s| cstring(s.as_bytes())).transpose()?;
    let tgt = cstring(target.as_os_str().as_bytes())?;
    let fs = fstype.map(|s| cstring(s.as_bytes())).transpose()?;
    let dat = data.map(|s| cstring(s.as_bytes())).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    let r = unsafe { libc::mount(ptr(&src), tgt.as_ptr(), ptr(&fs), flags, ptr(&dat).cast()) };
    if r != 0 {
        return Err(format!(
            "mounting {} on {}: {}",
            source.unwrap_or("(none)"),
            target.display(),
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::unescape_mount_path;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mount_path("/a\\040b/c\\134d"), b"/a b/c\\d");
        assert_eq!(unescape_mount_path("/plain"), b"/plain");
        // Not an escape: left as it is.
        assert_eq!(unescape_mount_path("/x\\9y\\04"), b"/x\\9y\\04");
    }
}
