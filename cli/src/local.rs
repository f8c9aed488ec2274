//! `drover local`: a whole cluster on one machine, for trying Drover and testing
//! frameworks. It starts one `drover-master` (or a Raft group of 3 or 5 with `--masters`)
//! and N `drover-agent` processes found next to the
//! `drover` executable, keeps every daemon's data and log in one folder, waits until all
//! agents are active, prints the endpoints, and supervises them until Ctrl-C or SIGTERM.
//!
//! Folder layout (`--data-dir`, default `./.drover/local`):
//!
//! ```text
//! .drover-local       marker and lock: this folder belongs to a local cluster
//! master/             the master's --data-dir (one master)
//! master-1/, …        each master's --data-dir (--masters 3 or 5; the name is its --id)
//! agent-0/, agent-1/  each agent's --work-dir
//! logs/master.log (or logs/master-1.log, …), logs/agent-0.log, …
//! ```
//!
//! Submodules: `plan` decides which programs run with which flags, ports and folders
//! (a pure function of the arguments); `drover_testkit::daemon` spawns, watches and
//! stops the processes (shared with the multi-process tests, which start daemons the
//! same way).

mod plan;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use drover_proto::{pb, Resources};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::masters::Masters;
use drover_testkit::daemon::{self, Daemon};
use plan::{Plan, MAX_AGENTS, MAX_MASTERS};

/// `drover local` flags.
#[derive(Args, Debug)]
pub struct LocalArgs {
    /// Number of agents to start.
    #[arg(long, default_value_t = 2, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=MAX_AGENTS as i64))]
    pub agents: u16,

    /// Number of masters: 1, or 3 (or 5) in one Raft group that survives the loss of a
    /// minority. The first master listens on --master-listen (HTTP 127.0.0.1:5060); master
    /// i+1 on that port + 10 + 10*i, HTTP the port after (5070/5071 and 5080/5081 by
    /// default). Agents and the printed DROVER_MASTER get every master's address. A data
    /// folder keeps the number of masters it was created with (--fresh to change it).
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=MAX_MASTERS as i64))]
    pub masters: u16,

    /// Folder for every daemon's data and logs. Reused across runs unless --fresh.
    #[arg(long, default_value = "./.drover/local", value_name = "DIR")]
    pub data_dir: PathBuf,

    /// Address the (first) master serves gRPC on (schedulers, agents, this CLI).
    #[arg(long, default_value = "127.0.0.1:5050", value_name = "HOST:PORT")]
    pub master_listen: String,

    /// Resources each agent offers instead of what it detects, in the agents'
    /// --resources syntax (e.g. "cpus:2;mem:2048"). Each agent also gets its own block of
    /// 1000 ports (agent i: 31000+1000*i to 31999+1000*i) unless this names `ports`.
    #[arg(long, value_name = "RESOURCES")]
    pub agent_resources: Option<String>,

    /// Wipe the data folder first: start from an empty cluster.
    #[arg(long)]
    pub fresh: bool,
}

/// Name of the marker and lock file in the data folder.
const MARKER: &str = ".drover-local";
/// How long the cluster may take to have every agent active.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two looks at the master's agents while starting.
const READY_POLL: Duration = Duration::from_millis(250);
/// How long each group of daemons (agents, then the master) gets to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Log lines shown when a daemon fails.
const TAIL_LINES: usize = 20;

/// Runs `drover local` to the end; the result is the process exit code.
pub async fn run(args: LocalArgs) -> Result<i32> {
    if args.masters.is_multiple_of(2) {
        eprintln!(
            "warning: --masters {}: an even number of masters tolerates no more failures \
             than one master fewer",
            args.masters
        );
    }
    let user_resources = args
        .agent_resources
        .as_deref()
        .map(|r| Resources::parse(r).map_err(|e| anyhow::anyhow!("--agent-resources: {e}")))
        .transpose()?;
    if user_resources
        .as_ref()
        .is_some_and(|r| !r.get_ranges("ports").is_empty())
    {
        eprintln!(
            "warning: --agent-resources names ports, so every agent offers the same ports \
             and two tasks on different agents may be given the same port"
        );
    }
    // Everything that can be checked is checked before the data folder is touched, so
    // that a mistyped flag never costs a --fresh wipe.
    let bin_dir = binary_dir()?;
    let data_dir = std::path::absolute(&args.data_dir)
        .with_context(|| format!("resolving {}", args.data_dir.display()))?;
    let plan = Plan::new(
        &bin_dir,
        &data_dir,
        &args.master_listen,
        args.masters,
        args.agents,
        user_resources.as_ref(),
    )?;
    plan.check_addresses_free()?;
    let _lock = prepare_data_dir(&data_dir, args.fresh)?;
    plan.check_existing_masters()?;
    for dir in plan.folders() {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    // Registered before any child exists, so that a Ctrl-C from here on is ours to handle
    // and not the default "die at once", which would leave the daemons to their
    // parent-death signal.
    let mut signals = Signals::new()?;

    eprintln!(
        "Starting a local Drover cluster: {} master{} and {} agent{} (data in {})…",
        args.masters,
        if args.masters == 1 { "" } else { "s" },
        args.agents,
        if args.agents == 1 { "" } else { "s" },
        data_dir.display()
    );
    // Spawned here, on the task `main` blocks on (the main thread): see drover_testkit::daemon for why
    // the thread matters to the parent-death signal.
    let mut daemons: Vec<Daemon> = Vec::new();
    for spec in plan.specs() {
        match Daemon::spawn(spec) {
            Ok(d) => daemons.push(d),
            Err(e) => {
                shutdown(&mut daemons, plan.masters.len(), &mut signals).await;
                return Err(e.into());
            }
        }
    }

    let masters = Masters::new(plan.masters.iter().map(|m| m.address.clone()).collect())?
        .with_election_retries(0);
    let agents = match wait_until_ready(&plan, &masters, &mut daemons, &mut signals).await {
        Startup::Ready(agents) => agents,
        Startup::Interrupted(name) => {
            eprintln!("\nReceived {name}; stopping the cluster…");
            shutdown(&mut daemons, plan.masters.len(), &mut signals).await;
            return Ok(0);
        }
        Startup::Died(index, status) => {
            report_exit(&daemons[index], status);
            shutdown(&mut daemons, plan.masters.len(), &mut signals).await;
            return Ok(1);
        }
        Startup::TimedOut(why, culprits) => {
            eprintln!(
                "error: the cluster was not ready within {}s: {why}",
                READY_TIMEOUT.as_secs()
            );
            for name in culprits {
                if let Some(d) = daemons.iter().find(|d| d.spec.name == name) {
                    eprintln!("last lines of {}:", d.spec.log.display());
                    eprint!("{}", d.log_tail(TAIL_LINES));
                }
            }
            shutdown(&mut daemons, plan.masters.len(), &mut signals).await;
            return Ok(1);
        }
    };
    print!("{}", plan.banner(&data_dir, &agents));
    let _ = io::stdout().flush();

    let exited = tokio::select! {
        name = signals.recv() => {
            eprintln!("\nReceived {name}; stopping the cluster…");
            None
        }
        exit = daemon::first_exit(&mut daemons) => Some(exit),
    };
    let code = match exited {
        None => 0,
        Some((index, status)) => {
            report_exit(&daemons[index], status);
            1
        }
    };
    shutdown(&mut daemons, plan.masters.len(), &mut signals).await;
    Ok(code)
}

/// How the wait for a ready cluster ended.
enum Startup {
    /// Every agent active: the master's view of them.
    Ready(Vec<pb::AgentSummary>),
    /// A signal arrived (its name).
    Interrupted(&'static str),
    /// A daemon exited (its index in the daemons).
    Died(usize, io::Result<std::process::ExitStatus>),
    /// Not ready in time: why, and the names of the daemons whose logs tell more.
    TimedOut(String, Vec<String>),
}

/// Polls the master until it reports every planned agent as ACTIVE, watching for signals
/// and for daemons that exit meanwhile.
async fn wait_until_ready(
    plan: &Plan,
    masters: &Masters,
    daemons: &mut [Daemon],
    signals: &mut Signals,
) -> Startup {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let poll = async {
            let answer = masters
                .operator(|mut c| async move { c.get_agents(pb::GetAgentsRequest {}).await })
                .await;
            tokio::time::sleep(READY_POLL).await;
            answer
        };
        let answer = tokio::select! {
            name = signals.recv() => return Startup::Interrupted(name),
            (index, status) = daemon::first_exit(daemons) => return Startup::Died(index, status),
            answer = poll => answer,
        };
        let last_seen = answer.map(|r| r.agents).map_err(|e| format!("{e:#}"));
        if let Ok(agents) = &last_seen {
            if plan.is_ready(agents) {
                return Startup::Ready(agents.clone());
            }
        }
        if Instant::now() >= deadline {
            return match last_seen {
                Ok(agents) => {
                    let mut missing = plan.missing_agents(&agents);
                    if missing.is_empty() {
                        // Active agents at unexpected addresses: every log may help.
                        missing = plan.agents.iter().map(|a| a.name.clone()).collect();
                    }
                    let why = format!(
                        "{} of {} agents active (waiting for {})",
                        plan::active_agents(&agents),
                        plan.agents.len(),
                        missing.join(", ")
                    );
                    Startup::TimedOut(why, missing)
                }
                Err(e) => {
                    Startup::TimedOut(e, plan.masters.iter().map(|m| m.name.clone()).collect())
                }
            };
        }
    }
}

/// Stops agents first, so they can still report their tasks' end to the master and shut
/// those tasks down, then the masters (the first `masters` daemons). A second signal cuts
/// each grace period short.
async fn shutdown(daemons: &mut [Daemon], masters: usize, signals: &mut Signals) {
    let (master, agents) = daemons.split_at_mut(masters.min(daemons.len()));
    for group in [agents, master] {
        if group.is_empty() {
            continue;
        }
        let hurry = async {
            let name = signals.recv().await;
            eprintln!("Received {name} again; killing the remaining daemons now.");
        };
        let stopped = daemon::stop(group, STOP_GRACE, hurry).await;
        for name in &stopped.killed {
            eprintln!("{name} did not stop within its grace period and was killed");
        }
        for name in &stopped.stuck {
            eprintln!("warning: {name} is still running after SIGKILL");
        }
    }
    eprintln!("Local cluster stopped.");
}

/// Tells which daemon died, how, and what its log said last.
fn report_exit(daemon: &Daemon, status: io::Result<std::process::ExitStatus>) {
    let how = match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("unknown status: {e}"),
    };
    eprintln!("error: {} exited unexpectedly ({how})", daemon.spec.name);
    eprintln!("last lines of {}:", daemon.spec.log.display());
    eprint!("{}", daemon.log_tail(TAIL_LINES));
    eprintln!("Stopping the rest of the cluster…");
}

/// The signals that end `drover local`: Ctrl-C, SIGTERM (service managers, `kill`) and
/// SIGHUP (the terminal closed).
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("handling SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("handling SIGTERM")?,
            hangup: signal(SignalKind::hangup()).context("handling SIGHUP")?,
        })
    }

    /// Waits for the next signal and names it.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "Ctrl-C",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}

/// The folder holding the `drover` executable, where `cargo build --bins` and release
/// archives also put `drover-master` and `drover-agent`.
fn binary_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the drover executable")?;
    // Resolve symlinks (e.g. ~/bin/drover -> target/release/drover) so the siblings are
    // looked for where the real binary lives.
    let exe = exe.canonicalize().unwrap_or(exe);
    exe.parent()
        .map(Path::to_path_buf)
        .context("the drover executable has no parent folder")
}

/// Creates (or checks) the data folder, takes its lock, and wipes it when `fresh`.
/// Returns the open lock file, which must stay open for as long as the cluster runs.
fn prepare_data_dir(dir: &Path, fresh: bool) -> Result<File> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let marker = dir.join(MARKER);
    if !marker.exists() {
        // Never write into (or, with --fresh, wipe) a folder someone else uses: a typo
        // such as `--data-dir ~ --fresh` must not delete a home directory.
        let occupied = fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some();
        if occupied {
            bail!(
                "{} is not empty and is not a drover local data folder (it has no {MARKER} \
                 file); choose another --data-dir",
                dir.display()
            );
        }
    }
    let mut lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&marker)
        .with_context(|| format!("opening {}", marker.display()))?;
    lock_exclusive(&lock).with_context(|| {
        format!(
            "another `drover local` is already using {}; stop it or choose another --data-dir",
            dir.display()
        )
    })?;
    lock.set_len(0)?;
    lock.write_all(
        b"This folder holds the data of a `drover local` cluster.\n\
          `drover local --fresh` wipes everything in it.\n",
    )?;

    if fresh {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name() == MARKER {
                continue;
            }
            let path = entry.path();
            // file_type() does not follow symlinks: a symlink is removed, never what it
            // points to.
            let removed = if entry.file_type()?.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.with_context(|| format!("wiping {}", path.display()))?;
        }
    }
    Ok(lock)
}

/// An advisory lock held until the file is closed (at exit, however it happens).
fn lock_exclusive(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_folder_is_locked_marked_and_wiped_only_when_fresh() {
        let root = tempfile::tempdir().unwrap();
        let abs = root.path().join("local");
        let dir = abs.clone();
        let lock = prepare_data_dir(&dir, false).unwrap();
        assert!(abs.join(MARKER).is_file());
        fs::create_dir_all(abs.join("master/db")).unwrap();

        // A second cluster on the same folder is refused while the first holds the lock.
        let error = prepare_data_dir(&dir, false).unwrap_err().to_string();
        assert!(
            error.contains("another `drover local` is already using"),
            "{error}"
        );
        drop(lock);

        let lock = prepare_data_dir(&dir, false).unwrap();
        assert!(abs.join("master/db").is_dir());
        drop(lock);

        // --fresh removes everything but the marker, and never follows a symlink.
        let outside = root.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, abs.join("link")).unwrap();
        let _lock = prepare_data_dir(&dir, true).unwrap();
        let left: Vec<_> = fs::read_dir(&abs)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from(MARKER)]);
        assert!(outside.join("keep").is_file());
    }

    #[test]
    fn foreign_folders_are_never_used_or_wiped() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("precious"), "x").unwrap();
        let error = prepare_data_dir(root.path(), true).unwrap_err().to_string();
        assert!(
            error.contains("is not a drover local data folder"),
            "{error}"
        );
        assert!(root.path().join("precious").is_file());
    }
}
