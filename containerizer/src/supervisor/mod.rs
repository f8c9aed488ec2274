//! The task supervisor: the agent's own binary re-executed as `drover-agent __supervise
//! <spec.json>`, one per task, in its own session.
//!
//! It is deliberately plain blocking Rust plus libc (no tokio): it must be small, start
//! fast and keep working when the agent is gone. It
//! 1. claims the launch (`supervisor.json`, created exclusively: see
//!    [`records::SupervisorClaim`]) and records its own pid and start time;
//! 2. starts the command in its own process group, stdout/stderr appended to files in the
//!    sandbox (files, never pipes, so nothing breaks when the agent dies);
//! 3. waits with SIGTERM and SIGCHLD blocked, using `sigtimedwait` (with a timeout, so a
//!    coalesced or lost SIGCHLD only delays reaping), and is a child subreaper so that
//!    daemonised grandchildren come back to it rather than escape;
//! 4. on SIGTERM (the agent's kill) reads `kill_request.json` for the grace period,
//!    SIGTERMs the task's process group, and SIGKILLs it when the grace runs out;
//! 5. when the main process ends, kills whatever the task left behind, writes
//!    `exit.json` atomically in the meta directory (never in the sandbox, which the task
//!    controls) and exits.
//!
//! For a linux container (`spec.container`), step 2 differs: the supervisor unshares a PID
//! namespace for its children and starts the container's init (this binary again, see
//! [`crate::linux::init`]) inside the container's cgroups; the init sets up
//! the other namespaces and runs the command. Kills go to the init, which forwards them;
//! a SIGKILL of the init takes the whole PID namespace down. At the end the supervisor
//! reads the memory cgroup's OOM counter, tears the cgroups down (every process in them
//! killed) and records a memory limitation with the outcome.

pub mod records;

use std::ffi::{CString, OsString};
use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drover_proto::unix_seconds;

use crate::fsutil::{create_json_exclusive, read_json, write_json_atomic};
use crate::layout::TaskMeta;
use crate::linux::init::{self as container_init, INIT_ARG};
use crate::procfs::{self, ProcessIdentity};
use records::{ExitOutcome, ExitRecord, KillRequest, Limitation, SupervisorClaim, SupervisorSpec};

/// How long a container's init may take to set up namespaces and mounts and start the
/// command before the launch counts as failed.
const INIT_SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The hidden first argument that turns `drover-agent` into a supervisor.
pub const SUPERVISE_ARG: &str = "__supervise";

/// If `args` (a full argv) asks for a supervisor or a container's init, runs it and
/// returns its exit code. `main` calls this before parsing flags, so the hidden modes never
/// show in `--help`.
pub fn dispatch(args: &[OsString]) -> Option<i32> {
    if args.get(1).is_some_and(|a| a == INIT_ARG) {
        let fd = args
            .get(3)
            .and_then(|f| f.to_str())
            .and_then(|f| f.parse().ok());
        let (Some(spec), Some(fd)) = (args.get(2), fd) else {
            eprintln!("usage: drover-agent {INIT_ARG} <spec.json> <fd>");
            return Some(2);
        };
        return Some(container_init::run(Path::new(spec), fd));
    }
    if args.get(1).is_none_or(|a| a != SUPERVISE_ARG) {
        return None;
    }
    let Some(spec) = args.get(2) else {
        eprintln!("usage: drover-agent {SUPERVISE_ARG} <spec.json>");
        return Some(2);
    };
    Some(supervise(Path::new(spec)))
}

/// This process's argv as `/proc/self/cmdline` has it: what an `.init_array` hook, which
/// runs before `main` or the test harness, can read.
pub fn proc_cmdline() -> Option<Vec<OsString>> {
    let raw = std::fs::read("/proc/self/cmdline").ok()?;
    use std::os::unix::ffi::OsStringExt;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect(),
    )
}

/// Reads `/proc/self/cmdline` and dispatches. For test binaries, which cannot have their
/// own `main`: a constructor calls this before the test harness starts.
pub fn dispatch_from_proc_cmdline() -> Option<i32> {
    dispatch(&proc_cmdline()?)
}

/// Runs a supervisor for the spec at `spec_path`; returns the supervisor's exit code
/// (0 whenever an outcome was recorded).
pub fn supervise(spec_path: &Path) -> i32 {
    // Block before anything else: a SIGTERM that arrives during setup must stay pending
    // for the wait loop, not kill us before an exit record exists. (The agent already
    // starts us with these blocked; this covers anyone else running us.)
    let signals = SignalSet::of(&[libc::SIGTERM, libc::SIGCHLD]);
    if let Err(e) = signals.block() {
        eprintln!("supervisor: cannot block signals: {e}");
        return 1;
    }
    let spec: SupervisorSpec = match read_json(spec_path) {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!("supervisor: {} does not exist", spec_path.display());
            return 1;
        }
        Err(e) => {
            eprintln!("supervisor: cannot read {}: {e}", spec_path.display());
            return 1;
        }
    };
    let mut sup = Supervisor::new(spec, spec_path.to_path_buf(), signals);
    match sup.run() {
        Ok(()) => 0,
        Err(e) => {
            sup.log(&format!("failed: {e}"));
            1
        }
    }
}

struct KillState {
    deadline: Instant,
    /// A kill request file existed: the agent asked for this kill.
    requested: bool,
    reason: Option<i32>,
    sigkilled: bool,
}

struct Supervisor {
    spec: SupervisorSpec,
    spec_path: std::path::PathBuf,
    meta: TaskMeta,
    /// Linux containers: the read end of the init's report pipe.
    report: Option<std::io::BufReader<std::fs::File>>,
    signals: SignalSet,
    me: Option<ProcessIdentity>,
    task_pid: Option<i32>,
    kill: Option<KillState>,
}

impl Supervisor {
    fn new(spec: SupervisorSpec, spec_path: std::path::PathBuf, signals: SignalSet) -> Self {
        let meta = TaskMeta::new(spec.meta_dir.clone());
        Supervisor {
            spec,
            spec_path,
            meta,
            report: None,
            signals,
            me: None,
            task_pid: None,
            kill: None,
        }
    }

    fn log(&self, msg: &str) {
        eprintln!(
            "{:.3} supervisor[{}] {}/{}: {msg}",
            unix_seconds(),
            std::process::id(),
            self.spec.framework_id,
            self.spec.task_id
        );
    }

    fn run(&mut self) -> io::Result<()> {
        // Orphaned descendants (double-forked daemons) are reparented to us rather than to
        // init, so we can reap them and kill them when the task ends.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let me = procfs::own_identity()?;
        self.me = Some(me);

        let claim = SupervisorClaim::Started {
            supervisor: me,
            task_pid: None,
        };
        if !create_json_exclusive(&self.meta.supervisor_file(), &claim)? {
            let existing: Option<SupervisorClaim> = read_json(&self.meta.supervisor_file())?;
            self.log(&format!(
                "not starting the task: the launch is already claimed ({existing:?})"
            ));
            return Ok(());
        }

        if let Some(req) = read_json::<KillRequest>(&self.meta.kill_request_file())? {
            self.log("killed before the command started");
            return self.finish(ExitOutcome::NotStarted, true, Some(req.reason));
        }

        let task_pid = match self.spawn_task() {
            Ok(pid) => pid,
            Err(e) => {
                // The container's init words its own errors (setup or exec).
                let message = if self.spec.container.is_some() {
                    e.to_string()
                } else {
                    format!("cannot run '{}': {e}", self.spec.program)
                };
                self.log(&message);
                return self.finish(ExitOutcome::LaunchFailed { message }, false, None);
            }
        };
        self.task_pid = Some(task_pid);
        self.log(&format!("started the task as pid {task_pid}"));
        write_json_atomic(
            &self.meta.supervisor_file(),
            &SupervisorClaim::Started {
                supervisor: me,
                task_pid: Some(task_pid),
            },
        )?;

        let mut status = self.wait_for_task(task_pid);
        self.kill_leftovers();
        if let Some(inner) = self.container_task_status() {
            // The init's own status is derived from the task's; the task's is exact.
            status = inner;
        }
        let outcome = if libc::WIFEXITED(status) {
            ExitOutcome::Exited {
                code: libc::WEXITSTATUS(status),
            }
        } else {
            ExitOutcome::Signaled {
                signal: libc::WTERMSIG(status),
            }
        };
        let (killed, reason) = match &self.kill {
            Some(k) => (k.requested, k.reason),
            None => (false, None),
        };
        self.log(&format!(
            "task ended: {outcome:?}, killed on request: {killed}"
        ));
        self.finish(outcome, killed, reason)
    }

    fn finish(&self, outcome: ExitOutcome, killed: bool, reason: Option<i32>) -> io::Result<()> {
        let mut limitation = None;
        if let Some(c) = &self.spec.container {
            // Counters first: they go with the cgroup.
            let sigkilled = matches!(
                outcome,
                ExitOutcome::Signaled {
                    signal: libc::SIGKILL
                } | ExitOutcome::Exited { code: 137 }
            );
            let ran = matches!(
                outcome,
                ExitOutcome::Exited { .. } | ExitOutcome::Signaled { .. }
            );
            let failed = !matches!(outcome, ExitOutcome::Exited { code: 0 });
            if let Some(ev) = c.cgroups.memory_events() {
                // With the kernel's own `oom_kill` counter, any OOM kill in the container
                // fails the task, even when its main process ignored a child's death and
                // exited 0 (as Mesos, which destroys a container on its first OOM): the
                // task ran short of memory and its result is not to be trusted. Without
                // the counter, only a failed task is judged by the weaker heuristics.
                let counted = ev.oom_kills.is_some_and(|n| n > 0);
                if ran && (failed || counted) && ev.oom_killed(sigkilled) {
                    self.log(&format!("the task hit its memory limit: {ev:?}"));
                    limitation = Some(Limitation::Memory {
                        limit_bytes: ev.limit_bytes,
                        max_usage_bytes: ev.max_usage_bytes,
                    });
                }
            }
            if let Err(e) = c.cgroups.destroy() {
                // The agent tries again when it sees the exit record.
                self.log(&format!("cannot remove the container's cgroups: {e}"));
            }
        }
        let record = ExitRecord {
            outcome,
            killed,
            kill_reason: if killed { reason } else { None },
            task_pid: self.task_pid,
            finished_at: unix_seconds(),
            limitation,
        };
        write_json_atomic(&self.meta.exit_file(), &record)
    }

    /// Linux containers: the task's wait status as the init reported it, if it did.
    fn container_task_status(&mut self) -> Option<i32> {
        use std::io::BufRead;
        let report = self.report.as_mut()?;
        let mut status = None;
        let mut line = String::new();
        while report.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(s) = line.trim().strip_prefix("status ") {
                status = s.parse().ok();
            }
            line.clear();
        }
        status
    }

    /// Starts the container's init in a new PID namespace, inside the container's
    /// cgroups, and waits for its report that the command started.
    fn spawn_container(&mut self, c: &records::ContainerLaunch) -> io::Result<i32> {
        use std::io::BufRead;
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // Our next child is PID 1 of a new namespace; we stay outside it.
        // SAFETY: unshare with a valid flag; the supervisor is single-threaded.
        if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
            return Err(io::Error::other(format!(
                "cannot create a PID namespace: {}",
                io::Error::last_os_error()
            )));
        }
        let mut fds = [0; 2];
        // SAFETY: valid array of two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 just returned these descriptors to us.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let write_fd = fds[1];
        let procs: Vec<CString> = c
            .cgroups
            .procs_files()
            .iter()
            .map(|p| {
                use std::os::unix::ffi::OsStrExt;
                CString::new(p.as_os_str().as_bytes())
                    .map_err(|_| io::Error::other("cgroup path contains NUL"))
            })
            .collect::<io::Result<_>>()?;
        let out = |name: &str| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.spec.sandbox.join(name))
        };
        let (stdout, stderr) = (out("stdout")?, out("stderr")?);
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg(INIT_ARG)
            .arg(&self.spec_path)
            .arg(write_fd.to_string())
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let init_signals = container_init::init_signals();
        // SAFETY: only async-signal-safe calls (open, write, close, fcntl, sigprocmask)
        // on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                // Join the cgroups before anything of the task exists: "0" is the
                // writer itself, whatever its pid in which namespace.
                for path in &procs {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let err = io::Error::last_os_error();
                    libc::close(fd);
                    if n != 1 {
                        return Err(err);
                    }
                }
                // The init blocks its signals at once, but a SIGTERM before that would be
                // lost (an init ignores signals it neither handles nor blocks).
                if libc::sigprocmask(libc::SIG_BLOCK, init_signals.as_ptr(), std::ptr::null_mut())
                    != 0
                {
                    return Err(io::Error::last_os_error());
                }
                if libc::fcntl(write_fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(e.kind(), format!("cannot start the container's init: {e}"))
        })?;
        let pid = child.id() as i32;
        drop(child);
        // Only the init holds the write end now: EOF means it is gone.
        drop(write_end);
        // Setup is mounts and namespaces: quick, unless something (a hung network
        // filesystem under the root filesystem) blocks. Bounded, so a kill request (which
        // waits, blocked, meanwhile) is never stuck behind it for good.
        let mut pfd = libc::pollfd {
            fd: read_end.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout_ms = INIT_SETUP_TIMEOUT.as_millis() as libc::c_int;
        // SAFETY: one valid pollfd.
        let ready = loop {
            let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
            if r >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break r;
            }
        };
        let mut line = String::new();
        let mut report = std::io::BufReader::new(std::fs::File::from(read_end));
        if ready > 0 {
            report.read_line(&mut line)?;
        }
        self.report = Some(report);
        let line = line.trim();
        if line.starts_with("started") {
            return Ok(pid);
        }
        if ready == 0 {
            // SAFETY: kill of our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // The init failed and exits; reap it so it does not look like the task.
        let mut status = 0;
        // SAFETY: waitpid with a valid out-pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        Err(io::Error::other(match line.strip_prefix("failed ") {
            Some(why) => why.to_string(),
            None if ready == 0 => format!(
                "the container's setup did not finish within {} s",
                INIT_SETUP_TIMEOUT.as_secs()
            ),
            None => "the container's init exited before starting the command".to_string(),
        }))
    }

    fn spawn_task(&mut self) -> io::Result<i32> {
        if let Some(c) = self.spec.container.clone() {
            return self.spawn_container(&c);
        }
        let out = |name: &str| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.spec.sandbox.join(name))
        };
        let (stdout, stderr) = (out("stdout")?, out("stderr")?);
        let argv0 = self
            .spec
            .argv
            .first()
            .cloned()
            .unwrap_or_else(|| self.spec.program.clone());
        let mut cmd = Command::new(&self.spec.program);
        cmd.arg0(argv0)
            .args(self.spec.argv.iter().skip(1))
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.spec.sandbox)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);

        // Everything the child needs is prepared here: between fork and exec only
        // async-signal-safe calls are allowed.
        let user = match &self.spec.user {
            Some(u) => Some((
                u.uid,
                u.gid,
                match &u.groups {
                    Some(groups) => groups.clone(),
                    None => supplementary_groups(&u.name, u.gid)?,
                },
            )),
            None => None,
        };
        let empty = SignalSet::of(&[]);
        // SAFETY: the closure only calls async-signal-safe functions (setpgid,
        // sigprocmask, setgroups, setgid, setuid) on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The mask survives exec: the task must get SIGTERM/SIGCHLD normally.
                if libc::sigprocmask(libc::SIG_SETMASK, &empty.0, std::ptr::null_mut()) != 0 {
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
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        // Also from the parent, so the group exists before we might signal it (the
        // classic setpgid race); EACCES after the child's exec is harmless.
        // SAFETY: setpgid with integer arguments.
        unsafe { libc::setpgid(pid, pid) };
        // The child is reaped by waitpid(-1) in the wait loop, not through `Child`.
        drop(child);
        Ok(pid)
    }

    /// Waits until the main process ends, acting on kill requests. Returns its wait status.
    fn wait_for_task(&mut self, task_pid: i32) -> i32 {
        loop {
            if let Some(status) = self.reap(task_pid) {
                return status;
            }
            let now = Instant::now();
            let mut timeout = Duration::from_secs(1);
            let mut sigkill_now = false;
            if let Some(k) = &mut self.kill {
                if !k.sigkilled {
                    if now >= k.deadline {
                        k.sigkilled = true;
                        sigkill_now = true;
                    } else {
                        timeout = timeout.min(k.deadline - now);
                    }
                }
            }
            if sigkill_now {
                self.log("grace period over: sending SIGKILL");
                self.signal_task_tree(libc::SIGKILL);
                continue;
            }
            if self.signals.wait(timeout) == Some(libc::SIGTERM) {
                self.on_kill_signal();
            }
        }
    }

    /// Reaps every exited child; the main process's status when it is among them.
    fn reap(&self, task_pid: i32) -> Option<i32> {
        let mut main = None;
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return main;
            }
            if pid == task_pid {
                main = Some(status);
            }
        }
    }

    fn on_kill_signal(&mut self) {
        let request =
            read_json::<KillRequest>(&self.meta.kill_request_file()).unwrap_or_else(|e| {
                self.log(&format!("unreadable kill request, using defaults: {e}"));
                None
            });
        let sane = |g: f64| if g.is_finite() && g >= 0.0 { g } else { 0.0 };
        let (grace, remaining) = match &request {
            Some(r) => {
                let grace = sane(r.grace_secs);
                // The grace runs from the request, so a slow signal does not extend it.
                (
                    grace,
                    (r.requested_at + grace - unix_seconds()).clamp(0.0, grace),
                )
            }
            None => {
                let g = sane(self.spec.default_grace_secs);
                (g, g)
            }
        };
        let deadline = Instant::now() + Duration::from_secs_f64(remaining);
        let reason = request.as_ref().map(|r| r.reason);
        match &mut self.kill {
            Some(k) => {
                k.deadline = k.deadline.min(deadline);
                k.requested |= request.is_some();
                k.reason = reason.or(k.reason);
            }
            None => {
                self.log(&format!(
                    "kill {}: SIGTERM now, SIGKILL in {remaining:.1}s (grace {grace}s)",
                    if request.is_some() {
                        "requested by the agent"
                    } else {
                        "signal without a kill request"
                    }
                ));
                self.signal_task_tree(libc::SIGTERM);
                self.kill = Some(KillState {
                    deadline,
                    requested: request.is_some(),
                    reason,
                    sigkilled: false,
                });
            }
        }
    }

    /// Signals the task's process group and every process reparented to us; in a linux
    /// container, its init (which forwards to the task; a SIGKILL ends the namespace).
    fn signal_task_tree(&self, sig: i32) {
        if self.spec.container.is_some() {
            if let Some(init) = self.task_pid {
                // SAFETY: kill with integer arguments; our own unreaped child.
                unsafe { libc::kill(init, sig) };
            }
            return;
        }
        if let Some(pgid) = self.task_pid {
            // SAFETY: killpg with integer arguments; ESRCH (group gone) is fine.
            unsafe { libc::killpg(pgid, sig) };
        }
        if let Some(me) = self.me {
            for pid in procfs::children_of(me.pid) {
                // SAFETY: kill with integer arguments; these are our own children.
                unsafe { libc::kill(pid, sig) };
            }
        }
    }

    /// When the main process is gone the task is over: whatever it left running (in its
    /// group or reparented to us) would hold the task's ports and files, so it goes too.
    /// As a subreaper we inherit every orphaned descendant, so "no children left" means
    /// nothing of the task is left. Bounded, so a process stuck in the kernel cannot keep
    /// the exit record unwritten.
    fn kill_leftovers(&self) {
        for _ in 0..200 {
            loop {
                let mut status = 0;
                // SAFETY: waitpid with a valid out-pointer.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if pid > 0 {
                    continue;
                }
                if pid < 0 {
                    return; // ECHILD: nothing left.
                }
                break;
            }
            self.signal_task_tree(libc::SIGKILL);
            std::thread::sleep(Duration::from_millis(10));
        }
        self.log("some of the task's processes survived SIGKILL; giving up on them");
    }
}

/// The user's supplementary groups, resolved before the fork (getgrouplist allocates).
pub fn supplementary_groups(user: &str, gid: u32) -> io::Result<Vec<libc::gid_t>> {
    let name = CString::new(user).map_err(|_| io::Error::other("user name contains NUL"))?;
    let mut n: libc::c_int = 32;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let asked = n;
        // SAFETY: `groups` has room for `n` entries; getgrouplist updates `n`.
        let r = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if r >= 0 {
            groups.truncate(n as usize);
            return Ok(groups);
        }
        if n <= asked {
            n = asked * 2;
        }
        if n > 65_536 {
            return Err(io::Error::other("user has too many groups"));
        }
    }
}

/// A set of signals, for blocking and `sigtimedwait`.
#[derive(Clone, Copy)]
pub(crate) struct SignalSet(libc::sigset_t);

impl SignalSet {
    pub(crate) fn as_ptr(&self) -> *const libc::sigset_t {
        &self.0
    }

    pub(crate) fn of(signals: &[i32]) -> Self {
        // SAFETY: sigemptyset initialises the zeroed set; sigaddset with valid signals.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &s in signals {
                libc::sigaddset(&mut set, s);
            }
            SignalSet(set)
        }
    }

    pub(crate) fn block(&self) -> io::Result<()> {
        // SAFETY: valid set pointer; the supervisor is single-threaded.
        if unsafe { libc::sigprocmask(libc::SIG_BLOCK, &self.0, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` for one of the (blocked) signals.
    pub(crate) fn wait(&self, timeout: Duration) -> Option<i32> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: valid set and timespec pointers; no siginfo wanted.
        let r = unsafe { libc::sigtimedwait(&self.0, std::ptr::null_mut(), &ts) };
        (r > 0).then_some(r)
    }
}

#[cfg(test)]
mod tests;
