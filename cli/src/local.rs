//! `drover local`: a whole cluster on one machine, for trying Drover and testing
//! frameworks. It starts `drover-master` and N `drover-agent` processes found next to the
//! `drover` executable, keeps every daemon's data and log in one folder, waits until all
//! agents are active, prints the endpoints, and supervises them until Ctrl-C or SIGTERM.
//!
//! Folder layout (`--data-dir`, default `./.drover/local`):
//!
//! ```text
//! .drover-local       marker and lock: this folder belongs to a local cluster
//! master/             the master's --data-dir
//! agent-0/, agent-1/  each agent's --work-dir
//! logs/master.log, logs/agent-0.log, …
//! ```
//!
//! The plan (which programs, flags and ports) is a pure function of the arguments so it
//! is tested without starting anything; [`daemon`] runs it.

mod daemon;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use drover_proto::pb::{self, agent_summary::State as AgentState};
use drover_proto::Resources;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::masters::Masters;
use daemon::{Daemon, DaemonSpec};

/// `drover local` flags.
#[derive(Args, Debug)]
pub struct LocalArgs {
    /// Number of agents to start.
    #[arg(long, default_value_t = 2, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=MAX_AGENTS as i64))]
    pub agents: u16,

    /// Number of masters. Only 1 for now: multi-master local clusters arrive with the HA
    /// issue.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub masters: u16,

    /// Folder for every daemon's data and logs. Reused across runs unless --fresh.
    #[arg(long, default_value = "./.drover/local", value_name = "DIR")]
    pub data_dir: PathBuf,

    /// Address the master serves gRPC on (schedulers, agents, this CLI).
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

/// Most agents one machine gets: each takes a block of 1000 ports from 31000 up, and the
/// last block must end below 65536.
const MAX_AGENTS: u16 = 34;
/// The master's HTTP address (web UI, metrics).
const MASTER_HTTP: &str = "127.0.0.1:5060";
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
    if args.masters != 1 {
        bail!(
            "--masters {}: multi-master local clusters arrive with the HA issue; use --masters 1",
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
        args.agents,
        user_resources.as_ref(),
    )?;
    plan.check_addresses_free()?;
    let _lock = prepare_data_dir(&data_dir, args.fresh)?;
    for dir in plan.folders() {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    // Registered before any child exists, so that a Ctrl-C from here on is ours to handle
    // and not the default "die at once", which would leave the daemons to their
    // parent-death signal.
    let mut signals = Signals::new()?;

    eprintln!(
        "Starting a local Drover cluster: 1 master and {} agent{} (data in {})…",
        args.agents,
        if args.agents == 1 { "" } else { "s" },
        data_dir.display()
    );
    // Spawned here, on the task `main` blocks on (the main thread): see daemon.rs for why
    // the thread matters to the parent-death signal.
    let mut daemons: Vec<Daemon> = Vec::new();
    for spec in plan.specs() {
        match Daemon::spawn(spec) {
            Ok(d) => daemons.push(d),
            Err(e) => {
                shutdown(&mut daemons, &mut signals).await;
                return Err(e);
            }
        }
    }

    let masters = Masters::new(vec![plan.master_address.clone()])?.with_election_retries(0);
    let agents = match wait_until_ready(&plan, &masters, &mut daemons, &mut signals).await {
        Startup::Ready(agents) => agents,
        Startup::Interrupted(name) => {
            eprintln!("\nReceived {name}; stopping the cluster…");
            shutdown(&mut daemons, &mut signals).await;
            return Ok(0);
        }
        Startup::Died(index, status) => {
            report_exit(&daemons[index], status);
            shutdown(&mut daemons, &mut signals).await;
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
            shutdown(&mut daemons, &mut signals).await;
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
    shutdown(&mut daemons, &mut signals).await;
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
                        active_agents(&agents),
                        plan.agents.len(),
                        missing.join(", ")
                    );
                    Startup::TimedOut(why, missing)
                }
                Err(e) => Startup::TimedOut(e, vec!["master".to_string()]),
            };
        }
    }
}

/// Stops agents first, so they can still report their tasks' end to the master and shut
/// those tasks down, then the master. A second signal cuts each grace period short.
async fn shutdown(daemons: &mut [Daemon], signals: &mut Signals) {
    let (master, agents) = daemons.split_at_mut(1.min(daemons.len()));
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

/// A daemon binary next to `drover`, or an error saying how to get it.
fn sibling_binary(bin_dir: &Path, name: &str) -> Result<PathBuf> {
    let path = bin_dir.join(name);
    if !path.is_file() {
        bail!(
            "{name} was not found next to drover (in {}); build them with `cargo build --bins`",
            bin_dir.display()
        );
    }
    Ok(path)
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

/// One agent's place on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AgentPlan {
    name: String,
    listen: String,
    http: String,
    work_dir: PathBuf,
    resources: String,
}

/// Everything `drover local` will start, decided before starting anything.
#[derive(Debug)]
struct Plan {
    master_bin: PathBuf,
    agent_bin: PathBuf,
    data_dir: PathBuf,
    master_listen: String,
    /// Where clients dial the master: `master_listen`, with a wildcard host replaced by
    /// loopback.
    master_address: String,
    agents: Vec<AgentPlan>,
}

/// The agent API and HTTP ports of agent `index`. The first five follow the documented
/// scheme (5051+2i and 5061+2i); from the sixth on that scheme would reuse the HTTP ports
/// of the first agents (5051+2*5 = 5061), so later agents move to their own block from
/// 5100.
fn agent_ports(index: u16) -> (u16, u16) {
    if index < 5 {
        (5051 + 2 * index, 5061 + 2 * index)
    } else {
        let k = index - 5;
        (5100 + 2 * k, 5101 + 2 * k)
    }
}

/// The `ports` block of agent `index`: 1000 ports, disjoint between agents, so that two
/// agents on one machine never hand the same port to two tasks.
fn agent_port_block(index: u16) -> (u64, u64) {
    let begin = 31_000 + 1_000 * u64::from(index);
    (begin, begin + 999)
}

/// The `--resources` value of agent `index`: the user's resources plus the agent's port
/// block, unless the user named ports themselves.
fn agent_resources(user: Option<&Resources>, index: u16) -> String {
    let (begin, end) = agent_port_block(index);
    let ports = Resources::ranges("ports", vec![(begin, end)]);
    match user {
        Some(user) if !user.get_ranges("ports").is_empty() => user.to_string(),
        Some(user) => user.plus(&ports).to_string(),
        None => ports.to_string(),
    }
}

/// How many of `seen` are ACTIVE.
fn active_agents(seen: &[pb::AgentSummary]) -> usize {
    seen.iter()
        .filter(|a| a.state == AgentState::Active as i32)
        .count()
}

/// The address to dial for a listen address: a wildcard host means "every interface", of
/// which loopback is the one surely reachable.
fn dial_address(listen: &str) -> String {
    match listen.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(a)) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
        Ok(SocketAddr::V6(a)) if a.ip().is_unspecified() => format!("[::1]:{}", a.port()),
        _ => listen.to_string(),
    }
}

impl Plan {
    fn new(
        bin_dir: &Path,
        data_dir: &Path,
        master_listen: &str,
        agents: u16,
        user_resources: Option<&Resources>,
    ) -> Result<Plan> {
        let master_listen = master_listen.trim().to_string();
        if master_listen
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            bail!("--master-listen {master_listen:?} is not HOST:PORT");
        }
        let plan = Plan {
            master_bin: sibling_binary(bin_dir, "drover-master")?,
            agent_bin: sibling_binary(bin_dir, "drover-agent")?,
            data_dir: data_dir.to_path_buf(),
            master_address: dial_address(&master_listen),
            master_listen,
            agents: (0..agents)
                .map(|i| {
                    let (listen, http) = agent_ports(i);
                    AgentPlan {
                        name: format!("agent-{i}"),
                        listen: format!("127.0.0.1:{listen}"),
                        http: format!("127.0.0.1:{http}"),
                        work_dir: data_dir.join(format!("agent-{i}")),
                        resources: agent_resources(user_resources, i),
                    }
                })
                .collect(),
        };
        let addresses = plan.listen_addresses();
        for (i, (who, address)) in addresses.iter().enumerate() {
            if let Some((other, _)) = addresses[..i].iter().find(|(_, a)| a == address) {
                bail!("{who} and {other} would both listen on {address}; choose another --master-listen");
            }
        }
        Ok(plan)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.data_dir.join("logs").join(format!("{name}.log"))
    }

    /// Folders to create before starting.
    fn folders(&self) -> Vec<PathBuf> {
        let mut v = vec![self.data_dir.join("logs"), self.data_dir.join("master")];
        v.extend(self.agents.iter().map(|a| a.work_dir.clone()));
        v
    }

    /// Every address a daemon will listen on, with who listens there.
    fn listen_addresses(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("the master".to_string(), self.master_listen.clone()),
            (
                "the master's HTTP server".to_string(),
                MASTER_HTTP.to_string(),
            ),
        ];
        for a in &self.agents {
            v.push((a.name.clone(), a.listen.clone()));
            v.push((format!("{}'s HTTP server", a.name), a.http.clone()));
        }
        v
    }

    /// Fails early, with a hint, when a port is taken (most often by a `drover local`
    /// already running), instead of letting a daemon die with "address in use" in its log.
    /// There is a short window between this check and the daemons binding; a port taken
    /// in it still shows as a daemon exiting, with its log.
    fn check_addresses_free(&self) -> Result<()> {
        for (who, address) in self.listen_addresses() {
            match TcpListener::bind(address.as_str()) {
                Ok(listener) => drop(listener),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => bail!(
                    "{address} (for {who}) is already in use; is another `drover local` \
                     running? Stop it, or stop whatever holds that port"
                ),
                Err(e) => bail!("{who} cannot listen on {address}: {e}"),
            }
        }
        Ok(())
    }

    /// What to start, master first: agents dial it as soon as they run.
    fn specs(&self) -> Vec<DaemonSpec> {
        let os = |s: &str| OsString::from(s);
        let mut specs = vec![DaemonSpec {
            name: "master".to_string(),
            program: self.master_bin.clone(),
            args: vec![
                os("--listen"),
                os(&self.master_listen),
                os("--http-listen"),
                os(MASTER_HTTP),
                os("--data-dir"),
                self.data_dir.join("master").into_os_string(),
            ],
            log: self.log("master"),
        }];
        for a in &self.agents {
            specs.push(DaemonSpec {
                name: a.name.clone(),
                program: self.agent_bin.clone(),
                args: vec![
                    os("--master"),
                    os(&self.master_address),
                    os("--listen"),
                    os(&a.listen),
                    os("--http-listen"),
                    os(&a.http),
                    os("--work-dir"),
                    a.work_dir.clone().into_os_string(),
                    os("--shutdown-tasks-on-exit"),
                    os("--resources"),
                    os(&a.resources),
                ],
                log: self.log(&a.name),
            });
        }
        specs
    }

    /// True once the master reports as many ACTIVE agents as were started. Agents left
    /// in the registry by an earlier run cannot be ACTIVE: no process serves them.
    fn is_ready(&self, seen: &[pb::AgentSummary]) -> bool {
        active_agents(seen) >= self.agents.len()
    }

    /// Names of the planned agents the master does not report as ACTIVE at their
    /// address, to point at the right logs. Agents are matched by address because their
    /// ids are the master's to choose.
    fn missing_agents(&self, seen: &[pb::AgentSummary]) -> Vec<String> {
        self.agents
            .iter()
            .filter(|a| {
                !seen
                    .iter()
                    .any(|s| s.address == a.listen && s.state == AgentState::Active as i32)
            })
            .map(|a| a.name.clone())
            .collect()
    }

    /// What a user needs once the cluster is up.
    fn banner(&self, data_dir: &Path, seen: &[pb::AgentSummary]) -> String {
        let mut rows: Vec<(String, String)> = vec![
            ("master gRPC".into(), self.master_address.clone()),
            ("master HTTP".into(), format!("http://{MASTER_HTTP}")),
        ];
        for a in &self.agents {
            let id = seen
                .iter()
                .find(|s| s.address == a.listen)
                .and_then(|s| s.id.as_ref())
                .map(|id| format!(", id {id}"))
                .unwrap_or_default();
            rows.push((
                a.name.clone(),
                format!("{} (HTTP {}{id})", a.listen, a.http),
            ));
        }
        rows.push(("data".into(), data_dir.display().to_string()));
        rows.push(("logs".into(), self.log("master").display().to_string()));
        for a in &self.agents {
            rows.push((String::new(), self.log(&a.name).display().to_string()));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);

        let mut out = String::new();
        let n = self.agents.len();
        let _ = writeln!(
            out,
            "\nDrover is running locally: 1 master, {n} agent{}.\n",
            if n == 1 { "" } else { "s" }
        );
        for (key, value) in rows {
            let _ = writeln!(out, "  {key:<width$}  {value}");
        }
        let _ = writeln!(
            out,
            "\nTry it from another terminal:\n  export DROVER_MASTER={}; drover run -- echo hello\n\
             \nPress Ctrl-C to stop the cluster.",
            self.master_address
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder holding empty stand-ins for the daemon binaries.
    fn bin_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in ["drover-master", "drover-agent"] {
            fs::write(dir.path().join(name), "").unwrap();
        }
        dir
    }

    fn plan(agents: u16, user: Option<&str>) -> Plan {
        let bins = bin_dir();
        let user = user.map(|u| Resources::parse(u).unwrap());
        Plan::new(
            bins.path(),
            Path::new("/data"),
            "127.0.0.1:5050",
            agents,
            user.as_ref(),
        )
        .unwrap()
    }

    fn args(spec: &DaemonSpec) -> Vec<String> {
        spec.args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn master_and_agent_flags() {
        let plan = plan(2, None);
        let specs = plan.specs();
        assert_eq!(specs.len(), 3);
        assert_eq!(specs[0].name, "master");
        assert_eq!(
            args(&specs[0]),
            [
                "--listen",
                "127.0.0.1:5050",
                "--http-listen",
                "127.0.0.1:5060",
                "--data-dir",
                "/data/master"
            ]
        );
        assert_eq!(specs[0].log, Path::new("/data/logs/master.log"));
        assert_eq!(
            args(&specs[2]),
            [
                "--master",
                "127.0.0.1:5050",
                "--listen",
                "127.0.0.1:5053",
                "--http-listen",
                "127.0.0.1:5063",
                "--work-dir",
                "/data/agent-1",
                "--shutdown-tasks-on-exit",
                "--resources",
                "ports:[32000-32999]"
            ]
        );
        assert_eq!(specs[2].log, Path::new("/data/logs/agent-1.log"));
    }

    #[test]
    fn agent_resources_merge_with_the_port_block() {
        let user = Resources::parse("cpus:2;mem:2048").unwrap();
        assert_eq!(
            agent_resources(Some(&user), 0),
            "cpus:2; mem:2048; ports:[31000-31999]"
        );
        let with_ports = Resources::parse("cpus:1;ports:[8000-8010]").unwrap();
        assert_eq!(
            agent_resources(Some(&with_ports), 3),
            "cpus:1; ports:[8000-8010]"
        );
        // The agents read the same syntax back.
        let back = Resources::parse(&agent_resources(Some(&user), 1)).unwrap();
        assert_eq!(back.get_ranges("ports").count(), 1000);
        assert_eq!(back.mem(), 2048.0);
    }

    #[test]
    fn no_two_daemons_share_a_port_even_with_many_agents() {
        let plan = plan(MAX_AGENTS, None);
        let addresses = plan.listen_addresses();
        let mut seen = std::collections::HashSet::new();
        for (who, a) in &addresses {
            assert!(seen.insert(a.clone()), "{who} reuses {a}");
        }
        // The documented scheme holds for the first five agents.
        assert_eq!(agent_ports(4), (5059, 5069));
        // Port blocks are disjoint, stay below 65536 and clear of the daemons' ports.
        let last = agent_port_block(MAX_AGENTS - 1);
        assert!(last.1 <= 65_535);
        for i in 0..MAX_AGENTS {
            let (listen, http) = agent_ports(i);
            assert!(u64::from(listen.max(http)) < agent_port_block(0).0);
        }
    }

    #[test]
    fn clashing_master_address_is_refused() {
        let bins = bin_dir();
        let error = Plan::new(bins.path(), Path::new("/d"), "127.0.0.1:5051", 1, None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("agent-0 and the master would both listen on 127.0.0.1:5051"));
        assert!(Plan::new(bins.path(), Path::new("/d"), "5050", 1, None).is_err());
        assert!(Plan::new(bins.path(), Path::new("/d"), "host:port", 1, None).is_err());
    }

    #[test]
    fn missing_binaries_say_how_to_build_them() {
        let empty = tempfile::tempdir().unwrap();
        let error = Plan::new(empty.path(), Path::new("/d"), "127.0.0.1:5050", 1, None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("drover-master was not found next to drover"));
        assert!(error.ends_with("build them with `cargo build --bins`"));
    }

    #[test]
    fn wildcard_listen_is_dialled_on_loopback() {
        assert_eq!(dial_address("0.0.0.0:5050"), "127.0.0.1:5050");
        assert_eq!(dial_address("[::]:5050"), "[::1]:5050");
        assert_eq!(dial_address("10.0.0.1:5050"), "10.0.0.1:5050");
        assert_eq!(dial_address("localhost:5050"), "localhost:5050");
    }

    fn summary(address: &str, state: AgentState) -> pb::AgentSummary {
        pb::AgentSummary {
            id: Some(drover_proto::AgentId::new(format!("id-{address}"))),
            address: address.into(),
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn ready_means_every_agent_active_at_its_address() {
        let plan = plan(2, None);
        assert_eq!(plan.missing_agents(&[]), ["agent-0", "agent-1"]);
        let seen = [
            summary("127.0.0.1:5051", AgentState::Active),
            summary("127.0.0.1:5053", AgentState::Disconnected),
        ];
        assert_eq!(plan.missing_agents(&seen), ["agent-1"]);
        assert!(!plan.is_ready(&seen));
        let seen = [
            summary("127.0.0.1:5051", AgentState::Active),
            summary("127.0.0.1:5053", AgentState::Active),
        ];
        assert!(plan.missing_agents(&seen).is_empty());
        assert!(plan.is_ready(&seen));
        let banner = plan.banner(Path::new("/data"), &seen);
        assert!(banner
            .contains("agent-1      127.0.0.1:5053 (HTTP 127.0.0.1:5063, id id-127.0.0.1:5053)"));
        assert!(banner.contains("export DROVER_MASTER=127.0.0.1:5050; drover run -- echo hello"));
        assert!(banner.contains("/data/logs/agent-1.log"));
    }

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
        assert_eq!(left, [OsString::from(MARKER)]);
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
