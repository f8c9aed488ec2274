//! Daemons as child processes: spawning them with their output appended to a log file,
//! noticing when one exits, stopping them gracefully, and reading the end of a log to
//! explain a failure. `drover local` runs its cluster with [`Daemon`]; the multi-process
//! tests build their blocking `std::process::Command`s with [`log_to`], the same log
//! handling.
//!
//! Nothing may outlive `drover local`. Three layers see to that:
//! - a normal shutdown sends SIGTERM, waits, then SIGKILLs;
//! - `kill_on_drop` SIGKILLs children if `drover local` unwinds through an error or panic;
//! - `PR_SET_PDEATHSIG` makes the kernel send SIGTERM to each child when `drover local`
//!   dies without running any code of its own (`kill -9`, OOM killer).
//!
//! Each child also gets its own process group, so that the terminal's Ctrl-C reaches only
//! `drover local`, which then stops agents before the master instead of every process
//! racing to exit at once.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use futures::future::{join_all, select_all};
use tokio::process::{Child, Command};

/// A daemon that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Its log file could not be opened or written.
    #[error("opening log file {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The program could not be started.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

/// What to start: a program, its arguments and where its output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonSpec {
    /// Short name for people and for the log file: `master`, `agent-0`, …
    pub name: String,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// The log file its stdout and stderr are appended to.
    pub log: PathBuf,
}

/// Closes `command`'s stdin and appends its stdout and stderr to `log` (created if
/// missing), after a line saying that `name` starts now, so that the runs of a daemon
/// restarted into the same log can be told apart. Returns the log's size after that
/// line: where this run's output begins (see [`tail`]).
pub fn log_to(
    command: &mut std::process::Command,
    name: &str,
    log: &Path,
) -> Result<u64, DaemonError> {
    let err = |source| DaemonError::Log {
        path: log.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(err)?;
    let started = drover_proto::unix_seconds();
    writeln!(file, "==> started {name} at unix time {started:.0}").map_err(err)?;
    let log_start = file.metadata().map_err(err)?.len();
    let out = file.try_clone().map_err(err)?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(file));
    Ok(log_start)
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    /// What was started.
    pub spec: DaemonSpec,
    child: Child,
    /// Size of the log before this run wrote to it: logs are appended across runs, and a
    /// failure report must show only this run's lines.
    log_start: u64,
}

impl Daemon {
    /// Starts `spec` with stdin closed and stdout and stderr appended to its log, in its
    /// own process group, set to receive SIGTERM when this process dies.
    pub fn spawn(spec: DaemonSpec) -> Result<Daemon, DaemonError> {
        let mut command = std::process::Command::new(&spec.program);
        command.args(&spec.args);
        let log_start = log_to(&mut command, &spec.name, &spec.log)?;
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut command = Command::from(command);
        command.kill_on_drop(true);
        die_with_parent(&mut command);
        let child = command.spawn().map_err(|source| DaemonError::Spawn {
            program: spec.program.clone(),
            source,
        })?;
        Ok(Daemon {
            spec,
            child,
            log_start,
        })
    }

    /// The child's exit status if it has exited (reaping it), `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines this run wrote to the log, each prefixed with two spaces,
    /// or a note saying why there are none.
    pub fn log_tail(&self, lines: usize) -> String {
        match tail(&self.spec.log, self.log_start, lines) {
            Ok(text) if text.is_empty() => "  (the log is empty)\n".to_string(),
            Ok(text) => text.lines().map(|l| format!("  {l}\n")).collect(),
            Err(e) => format!("  (cannot read {}: {e})\n", self.spec.log.display()),
        }
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(pid) = self.child.id() {
            // The pid cannot have been reused: the child is not reaped until `wait`
            // returns, and `id()` is `None` from then on.
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
        }
    }
}

/// Sets up the child to receive SIGTERM when this process (`drover local`) dies.
#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls, allocating nothing.
    //
    // PDEATHSIG fires when the *thread* that forked the child exits. `drover local` spawns
    // its daemons from the main thread (the future `main` blocks on), which lives as long
    // as the process, so the signal means what it should.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGTERM as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl; then nobody would send
            // the signal, so give up now rather than run orphaned.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Elsewhere there is no parent-death signal; `kill_on_drop` and the orderly shutdown
/// remain.
#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}

/// Waits until one of `daemons` exits and returns its index and exit status. Cancel-safe
/// (tokio's `Child::wait` is), so it can sit in a `select!` beside signals. Never returns
/// for an empty slice.
pub async fn first_exit(daemons: &mut [Daemon]) -> (usize, io::Result<ExitStatus>) {
    if daemons.is_empty() {
        return futures::future::pending().await;
    }
    let waits = daemons.iter_mut().map(|d| Box::pin(d.child.wait()));
    let (status, index, _) = select_all(waits).await;
    (index, status)
}

/// How a group of daemons ended up stopped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Names of the daemons that ignored SIGTERM past the grace period and were killed.
    pub killed: Vec<String>,
    /// Names of the daemons still not reaped after SIGKILL (stuck in the kernel).
    pub stuck: Vec<String>,
}

/// Stops every daemon of `group` still running: SIGTERM, up to `grace` to exit, then
/// SIGKILL. `hurry` ends the grace period early (a second Ctrl-C).
pub async fn stop(
    group: &mut [Daemon],
    grace: Duration,
    hurry: impl std::future::Future<Output = ()>,
) -> Stopped {
    let mut stopped = Stopped::default();
    let running: Vec<usize> = (0..group.len())
        .filter(|&i| group[i].exited().is_none())
        .collect();
    for &i in &running {
        group[i].signal(libc::SIGTERM);
    }
    let all_exited = async {
        join_all(group.iter_mut().map(|d| d.child.wait())).await;
    };
    tokio::select! {
        _ = tokio::time::timeout(grace, all_exited) => {}
        _ = hurry => {}
    }
    for d in group.iter_mut() {
        if d.exited().is_none() {
            stopped.killed.push(d.spec.name.clone());
            // An error here means the child already exited, which is what we want.
            let _ = d.child.start_kill();
        }
    }
    // SIGKILL cannot be ignored; only a process stuck in uninterruptible sleep takes
    // longer than this, and then waiting forever would not help the user either.
    let reap = async {
        join_all(group.iter_mut().map(|d| d.child.wait())).await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), reap).await;
    for d in group.iter_mut() {
        if d.exited().is_none() {
            stopped.stuck.push(d.spec.name.clone());
        }
    }
    stopped
}

/// How much of a log end to read at most: enough for the last lines of any sane log
/// without reading a multi-gigabyte file.
const TAIL_BYTES: u64 = 64 * 1024;

/// The last `lines` lines of `path`, reading only what was written after byte `from`.
pub fn tail(path: &Path, from: u64, lines: usize) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = from.max(len.saturating_sub(TAIL_BYTES)).min(len);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(len - start).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    // When the read started mid-file, its first line is probably cut: drop it unless it
    // is all there is.
    let skip_cut = usize::from(start > from && all.len() > 1);
    let keep = all.len().saturating_sub(lines).max(skip_cut);
    Ok(all[keep..].iter().map(|l| format!("{l}\n")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn tail_reads_the_last_lines_after_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        write(&log, "old run\nline 1\nline 2\nline 3\n");
        let from = "old run\n".len() as u64;
        assert_eq!(tail(&log, from, 2).unwrap(), "line 2\nline 3\n");
        assert_eq!(tail(&log, from, 10).unwrap(), "line 1\nline 2\nline 3\n");
        assert_eq!(tail(&log, 1_000, 10).unwrap(), "");
    }

    #[test]
    fn tail_of_a_huge_log_reads_only_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("big.log");
        let mut text = "x".repeat(3 * TAIL_BYTES as usize);
        text.push_str("\nsecond to last\nlast\n");
        write(&log, &text);
        assert_eq!(tail(&log, 0, 2).unwrap(), "second to last\nlast\n");
        // The cut first line is never shown, however many lines are asked for.
        assert_eq!(tail(&log, 0, 100).unwrap(), "second to last\nlast\n");
    }

    fn spec(dir: &Path, name: &str, script: &str) -> DaemonSpec {
        DaemonSpec {
            name: name.into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            log: dir.join(format!("{name}.log")),
        }
    }

    #[tokio::test]
    async fn output_goes_to_the_log_and_exits_are_noticed() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("quick.log"), "from an earlier run\n");
        let mut daemons = vec![
            Daemon::spawn(spec(dir.path(), "slow", "sleep 30")).unwrap(),
            Daemon::spawn(spec(
                dir.path(),
                "quick",
                "echo hello; echo oops >&2; exit 3",
            ))
            .unwrap(),
        ];
        let (index, status) = first_exit(&mut daemons).await;
        assert_eq!(index, 1);
        assert_eq!(status.unwrap().code(), Some(3));
        assert_eq!(daemons[1].log_tail(10), "  hello\n  oops\n");

        let stopped = stop(
            &mut daemons,
            Duration::from_secs(5),
            futures::future::pending(),
        )
        .await;
        assert_eq!(stopped, Stopped::default());
        assert!(daemons[0].exited().is_some());
    }

    #[tokio::test]
    async fn daemons_ignoring_sigterm_are_killed_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        // The shell itself is the daemon and ignores SIGTERM; it prints "ready" only
        // once the trap is set, so the test signals it only then.
        let script = "trap '' TERM; echo ready; while :; do sleep 1; done";
        let mut daemons = vec![Daemon::spawn(spec(dir.path(), "stubborn", script)).unwrap()];
        wait_ready(&daemons[0]).await;
        let started = Instant::now();
        let stopped = stop(
            &mut daemons,
            Duration::from_millis(300),
            futures::future::pending(),
        )
        .await;
        assert_eq!(stopped.killed, vec!["stubborn".to_string()]);
        assert!(stopped.stuck.is_empty());
        // A lower bound only (the timeout guarantees it however loaded the machine is):
        // the daemon was given its whole grace period before the SIGKILL.
        assert!(started.elapsed() >= Duration::from_millis(300));
        let status = daemons[0].exited().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
    }

    #[tokio::test]
    async fn hurry_ends_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let script = "trap '' TERM; echo ready; while :; do sleep 1; done";
        let mut daemons = vec![Daemon::spawn(spec(dir.path(), "stubborn", script)).unwrap()];
        wait_ready(&daemons[0]).await;
        // A grace period no test run outlives: `stop` returning at all, with the daemon
        // killed, shows that `hurry` ended it (no clock is read).
        let stopped = stop(&mut daemons, Duration::from_secs(24 * 3600), async {}).await;
        assert_eq!(stopped.killed, vec!["stubborn".to_string()]);
        assert!(stopped.stuck.is_empty());
    }

    /// Waits (bounded) until the daemon's script printed "ready", i.e. set its trap.
    async fn wait_ready(daemon: &Daemon) {
        crate::wait::eventually(
            "the daemon's trap to be set",
            Duration::from_secs(60),
            Duration::from_millis(20),
            || async { daemon.log_tail(1).contains("ready").then_some(()) },
        )
        .await;
    }
}
