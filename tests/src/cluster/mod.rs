//! [`Cluster`]: real `drover-master` and `drover-agent` processes on loopback ports in a
//! temporary folder. Masters (starting, stopping, killing, leader and Raft status) here;
//! agents in [`agents`](self::agents); inspection, logs and cleanup in [`inspect`](self::inspect).

mod agents;
mod inspect;

pub use inspect::{http_get, metric};

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drover_proto::pb;

use crate::hosts::Hosts;
use crate::{bin_dir, free_port, wait_until};

/// Whether process `pid`, a child of this test, has exited: it is gone, or a zombie that
/// nobody has reaped yet (the harness reaps its children only when it kills them).
fn process_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

fn signal(child: &Child, sig: i32) {
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// Timing used by cluster tests: generous, so a loaded 2-core machine does not flake.
#[derive(Debug, Clone)]
pub struct Timing {
    pub agent_ping_secs: f64,
    pub agent_timeout_secs: f64,
    pub allocation_interval_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            agent_ping_secs: 1.0,
            agent_timeout_secs: 30.0,
            allocation_interval_ms: 200,
        }
    }
}

struct Agent {
    child: Option<Child>,
    port: u16,
    http_port: u16,
    work_dir: PathBuf,
    resources: String,
    /// More `drover-agent` flags, given on every start.
    extra_flags: Vec<String>,
}

/// One master process of the cluster.
struct MasterProc {
    /// Raft id (`--id`), 1-based.
    id: u64,
    /// The address it listens on: loopback, or its own address inside a network namespace.
    host: String,
    port: u16,
    http_port: u16,
    child: Option<Child>,
    /// Network namespace it runs in (partition tests).
    netns: Option<String>,
    /// Started with `--join` (added at runtime) rather than seeded by `--peers`.
    joined: bool,
    /// Its data folder's name under the cluster folder.
    data: String,
    /// Its own `drover-master` flags, given on every start after the cluster's
    /// (e.g. an older release's registry version cap on one master).
    flags: Vec<String>,
}

/// A cluster of real processes in a temporary folder: one master (started by
/// [`Cluster::start`]) or several in one Raft group (started by [`Cluster::start_ha`]).
pub struct Cluster {
    pub dir: tempfile::TempDir,
    bins: PathBuf,
    masters: Vec<MasterProc>,
    /// True when the masters run with `--peers` (multi-master mode).
    ha: bool,
    agents: Vec<Agent>,
    pub timing: Timing,
    extra_master_flags: Vec<String>,
    /// Network namespaces of the masters, when they run in their own (dropped after the
    /// processes are killed).
    pub hosts: Option<Hosts>,
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
}

/// A channel to `addr` whose calls cannot hang a test: bounded connect and call times.
pub async fn connect(addr: &str) -> Option<tonic::transport::Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .ok()
}

/// `GetHealth` of the master at `addr`, or `None` if it does not answer.
pub fn health(addr: &str) -> Option<pb::GetHealthResponse> {
    let addr = addr.to_string();
    runtime()?.block_on(async move {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .ok()?;
        let mut c = pb::operator_client::OperatorClient::new(ch);
        Some(
            c.get_health(pb::GetHealthRequest {})
                .await
                .ok()?
                .into_inner(),
        )
    })
}

impl Cluster {
    /// Starts a master (not yet any agent).
    pub fn start(timing: Timing) -> Cluster {
        Self::start_with(timing, Vec::new())
    }

    pub fn start_with(timing: Timing, extra_master_flags: Vec<String>) -> Cluster {
        let mut c = Self::prepare(timing, extra_master_flags);
        c.start_master();
        c
    }

    /// The cluster [`Cluster::start_with`] starts, its master not started yet: a test may
    /// fill its data folder ([`Cluster::master_data_dir`]) or give it its own flags
    /// ([`Cluster::set_master_flags`]) first, then call [`Cluster::start_master`].
    pub fn prepare(timing: Timing, extra_master_flags: Vec<String>) -> Cluster {
        Self::new_cluster(timing, extra_master_flags, 1, false)
    }

    /// Starts `n` masters in one Raft group (`--id 1..=n`, `--peers` naming all of them) and
    /// waits until one of them leads. No agent yet.
    pub fn start_ha(timing: Timing, n: usize) -> Cluster {
        let mut c = Self::prepare_ha(timing, n, Vec::new());
        c.start_masters();
        c
    }

    /// The cluster [`Cluster::start_ha`] starts, with `extra_master_flags` for every
    /// master, none started yet: a test may fill data folders or give a master its own
    /// flags ([`Cluster::set_master_flags`]) first, then call [`Cluster::start_masters`].
    pub fn prepare_ha(timing: Timing, n: usize, extra_master_flags: Vec<String>) -> Cluster {
        Self::new_cluster(timing, extra_master_flags, n, true)
    }

    /// Starts every master that is not running and waits until one of them leads.
    pub fn start_masters(&mut self) {
        for i in 0..self.masters.len() {
            if self.masters[i].child.is_none() {
                self.spawn_master(i);
            }
        }
        self.wait_for_leader();
    }

    /// Gives master `i` its own flags (after the cluster's), from its next start on;
    /// `&[]` takes them away again.
    pub fn set_master_flags(&mut self, i: usize, flags: &[&str]) {
        self.masters[i].flags = flags.iter().map(|f| f.to_string()).collect();
    }

    /// Like [`Cluster::start_ha`], but every master runs in its own network namespace
    /// with its own address (see [`Hosts`]), so that a test can partition them.
    pub fn start_ha_in_netns(timing: Timing, n: usize) -> Cluster {
        let hosts = Hosts::create(n);
        let mut c = Self::new_cluster(timing, Vec::new(), n, true);
        for (i, m) in c.masters.iter_mut().enumerate() {
            m.host = hosts.ips[i].clone();
            m.netns = Some(hosts.names[i].clone());
            // Every namespace has its own ports.
            m.port = 5050;
            m.http_port = 5060;
        }
        c.hosts = Some(hosts);
        for i in 0..n {
            c.spawn_master(i);
        }
        c.wait_for_leader();
        c
    }

    fn new_cluster(timing: Timing, extra: Vec<String>, n: usize, ha: bool) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("drover-test-")
            .tempdir()
            .expect("tempdir");
        Cluster {
            dir,
            bins: bin_dir(),
            masters: (0..n)
                .map(|i| MasterProc {
                    id: i as u64 + 1,
                    host: "127.0.0.1".to_string(),
                    port: free_port(),
                    http_port: free_port(),
                    child: None,
                    netns: None,
                    joined: false,
                    data: if ha {
                        format!("master-{i}")
                    } else {
                        "master".to_string()
                    },
                    flags: Vec::new(),
                })
                .collect(),
            ha,
            agents: Vec::new(),
            timing,
            extra_master_flags: extra,
            hosts: None,
        }
    }

    /// Number of masters.
    pub fn master_count(&self) -> usize {
        self.masters.len()
    }

    /// The gRPC address of master `i` (0-based; its Raft id is `i + 1`).
    pub fn master_addr_at(&self, i: usize) -> String {
        format!("{}:{}", self.masters[i].host, self.masters[i].port)
    }

    /// Master `i`'s Raft id.
    pub fn master_id(&self, i: usize) -> u64 {
        self.masters[i].id
    }

    /// Whether master `i`'s process is running (as far as this harness knows).
    pub fn master_running(&self, i: usize) -> bool {
        self.masters[i].child.is_some()
    }

    /// Master `i`'s data folder.
    pub fn master_data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.masters[i].data)
    }

    /// Every master's address, comma-separated (what agents and frameworks are given).
    pub fn master_list(&self) -> String {
        (0..self.masters.len())
            .map(|i| self.master_addr_at(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The address operator queries go to: the leader's (the only master's in
    /// single-master mode; in multi-master mode the current leader's, or the first
    /// master's when none leads).
    pub fn master_addr(&self) -> String {
        let i = if self.ha {
            self.leader().unwrap_or(0)
        } else {
            0
        };
        self.master_addr_at(i)
    }

    pub fn master_http(&self) -> String {
        format!("{}:{}", self.masters[0].host, self.masters[0].http_port)
    }

    /// Master `i`'s Prometheus text from its HTTP endpoint (any master, leader or not).
    pub fn master_metrics_at(&self, i: usize) -> String {
        http_get(
            &format!("{}:{}", self.masters[i].host, self.masters[i].http_port),
            "/metrics",
        )
    }

    /// Sends `cmd`'s output to `<name>.log` in the cluster folder (appended across
    /// restarts, each run headed by a line), as `drover local` does.
    fn log_to(&self, cmd: &mut Command, name: &str) {
        let path = self.dir.path().join(format!("{name}.log"));
        drover_testkit::daemon::log_to(cmd, name, &path).expect("log file");
    }

    fn spawn_master(&mut self, i: usize) {
        assert!(
            self.masters[i].child.is_none(),
            "master {i} already running"
        );
        let child = self.master_command(i).spawn().expect("spawn drover-master");
        self.masters[i].child = Some(child);
    }

    fn master_command(&self, i: usize) -> Command {
        let name = if self.ha {
            format!("master-{i}")
        } else {
            "master".to_string()
        };
        let m = &self.masters[i];
        let mut cmd = match &m.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns])
                    .arg(self.bins.join("drover-master"));
                c
            }
            None => Command::new(self.bins.join("drover-master")),
        };
        cmd.arg("--listen")
            .arg(format!("{}:{}", m.host, m.port))
            .arg("--http-listen")
            .arg(format!("{}:{}", m.host, m.http_port))
            .arg("--data-dir")
            .arg(self.dir.path().join(&m.data))
            .arg("--agent-ping-interval-secs")
            .arg(self.timing.agent_ping_secs.to_string())
            .arg("--agent-timeout-secs")
            .arg(self.timing.agent_timeout_secs.to_string())
            .arg("--allocation-interval-ms")
            .arg(self.timing.allocation_interval_ms.to_string())
            .arg("--heartbeat-interval-secs")
            .arg("1")
            .args(&self.extra_master_flags)
            .args(&m.flags)
            .env("DROVER_LOG", "info,drover_master=debug");
        self.log_to(&mut cmd, &name);
        if self.ha && m.joined {
            let others: Vec<String> = (0..self.masters.len())
                .filter(|&j| j != i)
                .map(|j| self.master_addr_at(j))
                .collect();
            cmd.arg("--id")
                .arg(m.id.to_string())
                .arg("--join")
                .arg(others.join(","));
        } else if self.ha {
            // The masters seeded together; later joiners are not part of --peers.
            let peers: Vec<String> = self
                .masters
                .iter()
                .filter(|p| !p.joined)
                .map(|p| format!("{}={}:{}", p.id, p.host, p.port))
                .collect();
            cmd.arg("--id")
                .arg(m.id.to_string())
                .arg("--peers")
                .arg(peers.join(","));
        }
        cmd
    }

    /// Adds a master with a new id that joins the running cluster (`--join`), starts it
    /// and waits until it answers; returns its index.
    pub fn add_joining_master(&mut self) -> usize {
        let i = self.add_master(&[]);
        self.start_master_at(i);
        i
    }

    /// Adds, without starting it, a master with a new id and its own `flags` that will
    /// join the running cluster (`--join`); returns its index. Start it with
    /// [`Cluster::start_master_at`], or [`Cluster::start_master_expecting_refusal`].
    pub fn add_master(&mut self, flags: &[&str]) -> usize {
        let i = self.masters.len();
        let id = self.masters.iter().map(|m| m.id).max().unwrap_or(0) + 1;
        self.masters.push(MasterProc {
            id,
            host: "127.0.0.1".to_string(),
            port: free_port(),
            http_port: free_port(),
            child: None,
            netns: None,
            joined: true,
            data: format!("master-{i}"),
            flags: flags.iter().map(|f| f.to_string()).collect(),
        });
        i
    }

    /// Starts master `i` expecting it to refuse to run: waits (bounded) for it to exit and
    /// returns its exit status and what it logged.
    pub fn start_master_expecting_refusal(
        &mut self,
        i: usize,
    ) -> (std::process::ExitStatus, String) {
        let out = self.dir.path().join(format!("master-{i}-refused.log"));
        let f = std::fs::File::create(&out).expect("log file");
        let mut child = self
            .master_command(i)
            .stdout(Stdio::from(f.try_clone().expect("dup")))
            .stderr(Stdio::from(f))
            .spawn()
            .expect("spawn drover-master");
        let status = wait_until(
            &format!("master {i} to exit"),
            Duration::from_secs(60),
            Duration::from_millis(100),
            || child.try_wait().ok().flatten(),
        );
        (status, std::fs::read_to_string(&out).unwrap_or_default())
    }

    /// Stops master `i` on purpose (SIGTERM, as an operator or systemd would) and waits
    /// for it to exit (SIGKILL after a minute).
    pub fn stop_master_at(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let mut c = self.masters[i].child.take()?;
        signal(&c, libc::SIGTERM);
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if start.elapsed() > Duration::from_secs(60) {
                signal(&c, libc::SIGKILL);
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the `drover` command line against this cluster's masters.
    pub fn drover(&self, args: &[&str]) -> std::process::Output {
        let running: Vec<String> = (0..self.masters.len())
            .filter(|&i| self.masters[i].child.is_some())
            .map(|i| self.master_addr_at(i))
            .collect();
        Command::new(self.bins.join("drover"))
            .arg("--master")
            .arg(running.join(","))
            .args(args)
            .output()
            .expect("run drover")
    }

    /// The masters as the leader lists them (`ListMasters`).
    pub fn list_masters(&self) -> Option<pb::ListMastersResponse> {
        self.operator(async |mut c| {
            Some(
                c.list_masters(pb::ListMastersRequest {})
                    .await
                    .ok()?
                    .into_inner(),
            )
        })
    }

    /// Starts (or restarts) the only master on its port, with its data folder, and waits
    /// until it leads (single-master mode).
    pub fn start_master(&mut self) {
        assert!(!self.ha, "multi-master clusters use start_master_at");
        self.spawn_master(0);
        let addr = self.master_addr_at(0);
        wait_until(
            "the master to lead",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || health(&addr)?.leader.then_some(()),
        );
    }

    /// Starts (or restarts) master `i` with its data folder and waits until it answers
    /// (multi-master mode; it may or may not lead).
    pub fn start_master_at(&mut self, i: usize) {
        self.spawn_master(i);
        let addr = self.master_addr_at(i);
        wait_until(
            &format!("master {i} to answer"),
            Duration::from_secs(60),
            Duration::from_millis(100),
            || health(&addr).map(|_| ()),
        );
    }

    /// `kill -9` of the master (single-master mode: the only one).
    pub fn kill_master(&mut self) {
        self.kill_master_at(0);
    }

    /// `kill -9` of master `i`.
    pub fn kill_master_at(&mut self, i: usize) {
        if let Some(mut c) = self.masters[i].child.take() {
            signal(&c, libc::SIGKILL);
            let _ = c.wait();
        }
    }

    /// The master that serves as leader, if any: asked with `GetHealth` of every running
    /// master. Should two claim it (an old leader that has not noticed yet), the one with
    /// the higher term.
    pub fn leader(&self) -> Option<usize> {
        (0..self.masters.len())
            .filter(|&i| self.masters[i].child.is_some())
            .filter_map(|i| {
                let h = health(&self.master_addr_at(i))?;
                h.leader
                    .then(|| (h.master_info.map(|m| m.term).unwrap_or(0), i))
            })
            .max()
            .map(|(_, i)| i)
    }

    /// Waits (bounded) until some master leads and returns it.
    pub fn wait_for_leader(&self) -> usize {
        wait_until(
            "a master to lead",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || self.leader(),
        )
    }

    /// Master `i`'s Raft term as it reports it (0 if it does not answer).
    pub fn term_at(&self, i: usize) -> u64 {
        health(&self.master_addr_at(i))
            .and_then(|h| h.master_info)
            .map(|m| m.term)
            .unwrap_or(0)
    }

    /// Master `i`'s Raft progress and applied registry (`RaftPeer.Status`).
    pub fn raft_status(&self, i: usize) -> Option<pb::RaftStatusResponse> {
        let addr = self.master_addr_at(i);
        runtime()?.block_on(async move {
            let mut c = pb::raft_peer_client::RaftPeerClient::new(connect(&addr).await?);
            Some(c.status(pb::RaftStatusRequest {}).await.ok()?.into_inner())
        })
    }
}
