//! Harness for Drover's multi-process integration tests.
//!
//! Module map (all in this file, it is small):
//! - [`Cluster`]: starts real `drover-master` and `drover-agent` processes on loopback ports
//!   in a temporary folder (one master, or several in one Raft group with
//!   [`Cluster::start_ha`]), kills (`SIGKILL`), stops (`SIGSTOP`) and restarts them, and on
//!   drop kills every process it started, including task supervisors that outlive agents.
//! - [`operator`]: a connected operator client for assertions.
//! - [`wait_until`]: a bounded poll loop (bounded in count and time; it never asserts on
//!   durations, only that the outcome arrives before a generous deadline).
//! - [`Framework`]: runs the test framework binary (`drover-testfw`, in this crate) and reads
//!   the JSON report it writes.
//!
//! The binaries are found next to the test executable's `deps/` folder, so
//! `cargo build --workspace --bins` must run before the tests (the README's test command
//! does).

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drover_proto::pb;

/// Folder holding the workspace's binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps folder");
    let dir = if deps.ends_with("deps") {
        deps.parent().expect("profile folder").to_path_buf()
    } else {
        deps.to_path_buf()
    };
    for b in ["drover-master", "drover-agent"] {
        assert!(
            dir.join(b).exists(),
            "{} is missing: run `cargo build --workspace --bins` before the tests",
            dir.join(b).display()
        );
    }
    dir
}

/// A loopback port that is free now, for a daemon to bind a moment later (and again when the
/// test restarts it).
///
/// Not `bind(":0")`: that hands out ports from the kernel's ephemeral range (32768 and up),
/// the range every outgoing connection on this machine draws its local port from, so on a
/// busy machine a connection of another test could take the port before the daemon binds it
/// (or between a kill and a restart). These ports come from 10000..30000 instead, which
/// nothing allocates on its own; each test process starts at its own offset, walks forward
/// and skips ports that something already holds.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 20_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = (std::process::id() % 400) * 50;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (offset + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN);
}

/// Polls `f` every `every` until it returns `Some`, or panics with `what` after `limit`.
pub fn wait_until<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

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
}

/// Network namespaces, one per master, joined by a bridge in the root namespace, so that
/// a test can cut one master off from the others with blackhole routes while the test
/// itself (and agents and frameworks, in the root namespace) still reach every master.
/// Removed (with everything in them) on drop.
pub struct Hosts {
    bridge: String,
    names: Vec<String>,
    ips: Vec<String>,
}

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn sh_checked(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Hosts {
    /// Creates `n` namespaces on a private /24 named after this process, so parallel test
    /// processes never collide.
    pub fn create(n: usize) -> Hosts {
        let tag = std::process::id() % 100_000;
        // 10.<200-249>.<0-255>.0/24, picked from the pid.
        let net = format!("10.{}.{}", 200 + (tag / 256) % 50, tag % 256);
        let bridge = format!("dbr{tag}");
        let hosts = Hosts {
            bridge: bridge.clone(),
            names: (0..n).map(|i| format!("drv{tag}-{i}")).collect(),
            ips: (0..n).map(|i| format!("{net}.{}", i + 2)).collect(),
        };
        sh_checked(&["ip", "link", "add", &bridge, "type", "bridge"]);
        sh_checked(&["ip", "addr", "add", &format!("{net}.1/24"), "dev", &bridge]);
        sh_checked(&["ip", "link", "set", &bridge, "up"]);
        // Docker sets the FORWARD policy to DROP, and bridged traffic passes through it:
        // let our bridge forward between its own ports.
        sh_checked(&[
            "iptables", "-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
        ]);
        for i in 0..n {
            let ns = &hosts.names[i];
            let outside = format!("dv{tag}o{i}");
            let inside = format!("dv{tag}i{i}");
            sh_checked(&["ip", "netns", "add", ns]);
            sh_checked(&[
                "ip", "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ]);
            sh_checked(&["ip", "link", "set", &inside, "netns", ns]);
            sh_checked(&["ip", "link", "set", &outside, "master", &bridge]);
            sh_checked(&["ip", "link", "set", &outside, "up"]);
            let ip = format!("{}/24", hosts.ips[i]);
            sh_checked(&["ip", "-n", ns, "addr", "add", &ip, "dev", &inside]);
            sh_checked(&["ip", "-n", ns, "link", "set", &inside, "up"]);
            sh_checked(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            sh_checked(&[
                "ip",
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &format!("{net}.1"),
            ]);
        }
        hosts
    }

    /// Cuts host `i` off from every other host (not from the root namespace).
    pub fn isolate(&self, i: usize) {
        for j in 0..self.names.len() {
            if j != i {
                sh_checked(&[
                    "ip",
                    "-n",
                    &self.names[i],
                    "route",
                    "add",
                    "blackhole",
                    &format!("{}/32", self.ips[j]),
                ]);
                sh_checked(&[
                    "ip",
                    "-n",
                    &self.names[j],
                    "route",
                    "add",
                    "blackhole",
                    &format!("{}/32", self.ips[i]),
                ]);
            }
        }
    }

    /// Undoes every [`Hosts::isolate`].
    pub fn heal(&self) {
        for i in 0..self.names.len() {
            for j in 0..self.names.len() {
                if i != j {
                    sh(&[
                        "ip",
                        "-n",
                        &self.names[i],
                        "route",
                        "del",
                        "blackhole",
                        &format!("{}/32", self.ips[j]),
                    ]);
                }
            }
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in &self.names {
            sh(&["ip", "netns", "del", ns]);
        }
        sh(&["ip", "link", "del", &self.bridge]);
        let b = self.bridge.as_str();
        sh(&[
            "iptables", "-D", "FORWARD", "-i", b, "-o", b, "-j", "ACCEPT",
        ]);
    }
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
async fn connect(addr: &str) -> Option<tonic::transport::Channel> {
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
        let mut c = Self::new_cluster(timing, extra_master_flags, 1, false);
        c.start_master();
        c
    }

    /// Starts `n` masters in one Raft group (`--id 1..=n`, `--peers` naming all of them) and
    /// waits until one of them leads. No agent yet.
    pub fn start_ha(timing: Timing, n: usize) -> Cluster {
        let mut c = Self::new_cluster(timing, Vec::new(), n, true);
        for i in 0..n {
            c.spawn_master(i);
        }
        c.wait_for_leader();
        c
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

    fn log(&self, name: &str) -> Stdio {
        let path = self.dir.path().join(format!("{name}.log"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("log file");
        Stdio::from(f)
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
            .env("DROVER_LOG", "info,drover_master=debug")
            .stdout(self.log(&name))
            .stderr(self.log(&name));
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
        });
        self.start_master_at(i);
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

    /// Adds an agent with the given `--resources` and starts it.
    pub fn add_agent(&mut self, resources: &str) -> usize {
        self.add_agent_with(resources, &[])
    }

    /// [`Self::add_agent`] with more `drover-agent` flags (kept across restarts).
    pub fn add_agent_with(&mut self, resources: &str, extra_flags: &[&str]) -> usize {
        let i = self.agents.len();
        let work_dir = self.dir.path().join(format!("agent-{i}"));
        self.agents.push(Agent {
            child: None,
            port: free_port(),
            http_port: free_port(),
            work_dir,
            resources: resources.to_string(),
            extra_flags: extra_flags.iter().map(|f| f.to_string()).collect(),
        });
        self.start_agent(i);
        i
    }

    /// Starts (or restarts) agent `i` with its work folder.
    pub fn start_agent(&mut self, i: usize) {
        let log = self.log(&format!("agent-{i}"));
        let log2 = self.log(&format!("agent-{i}"));
        let masters = self.master_list();
        let a = &mut self.agents[i];
        assert!(a.child.is_none(), "agent {i} already running");
        let ports = format!("ports:[{}-{}]", 31000 + 1000 * i, 31999 + 1000 * i);
        let resources = if a.resources.is_empty() {
            ports
        } else {
            format!("{};{ports}", a.resources)
        };
        let mut cmd = Command::new(self.bins.join("drover-agent"));
        cmd.arg("--master")
            .arg(masters)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", a.port))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{}", a.http_port))
            .arg("--work-dir")
            .arg(&a.work_dir)
            .arg("--resources")
            .arg(resources)
            .arg("--status-update-retry-secs")
            .arg("1")
            .args(&a.extra_flags)
            .env("DROVER_LOG", "info")
            .stdout(log)
            .stderr(log2);
        a.child = Some(cmd.spawn().expect("spawn drover-agent"));
    }

    /// Agent `i`'s `--work-dir` (sandboxes under `sandboxes/<framework>/<task>`).
    pub fn agent_work_dir(&self, i: usize) -> PathBuf {
        self.agents[i].work_dir.clone()
    }

    /// A binary of the workspace (e.g. `drover-example-executor`).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bins.join(name)
    }

    /// `kill -9` of agent `i` (its tasks keep running under their supervisors).
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut c) = self.agents[i].child.take() {
            signal(&c, libc::SIGKILL);
            let _ = c.wait();
        }
    }

    /// Freezes agent `i` (`SIGSTOP`): it stays connected but falls silent.
    pub fn pause_agent(&mut self, i: usize) {
        if let Some(c) = &self.agents[i].child {
            signal(c, libc::SIGSTOP);
        }
    }

    pub fn resume_agent(&mut self, i: usize) {
        if let Some(c) = &self.agents[i].child {
            signal(c, libc::SIGCONT);
        }
    }

    pub fn agent_address(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.agents[i].port)
    }

    /// Runs an async operator query against the master.
    pub fn operator<T>(
        &self,
        f: impl AsyncFnOnce(pb::operator_client::OperatorClient<tonic::transport::Channel>) -> Option<T>,
    ) -> Option<T> {
        let addr = self.master_addr();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async move {
            let c = pb::operator_client::OperatorClient::new(connect(&addr).await?);
            f(c).await
        })
    }

    /// Agents as the master reports them.
    pub fn agents(&self) -> Vec<pb::AgentSummary> {
        self.operator(async |mut c| {
            Some(
                c.get_agents(pb::GetAgentsRequest {})
                    .await
                    .ok()?
                    .into_inner()
                    .agents,
            )
        })
        .unwrap_or_default()
    }

    /// Waits until `n` agents are ACTIVE (connected to the leader). Fails at once, naming the
    /// agent, if one of the harness's agent processes has exited; on timeout the message
    /// lists what the master last reported for each agent.
    pub fn wait_for_active_agents(&self, n: usize) {
        let limit = Duration::from_secs(90);
        let start = Instant::now();
        let mut last = String::from("no answer from the master");
        loop {
            for (i, a) in self.agents.iter().enumerate() {
                if a.child.as_ref().is_some_and(|c| process_exited(c.id())) {
                    panic!("agent {i} exited before {n} agents were active (see its log)");
                }
            }
            let agents = self.agents();
            let active = agents
                .iter()
                .filter(|a| a.state == pb::agent_summary::State::Active as i32)
                .count();
            if active >= n {
                return;
            }
            if !agents.is_empty() {
                last = agents
                    .iter()
                    .map(|a| {
                        let state = pb::agent_summary::State::try_from(a.state)
                            .map(|s| s.as_str_name())
                            .unwrap_or("?");
                        format!("{} {state}", a.address)
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
            }
            if start.elapsed() > limit {
                panic!("timed out waiting for {n} active agents; the master last reported: {last}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Tasks in TASK_RUNNING as the master reports them.
    pub fn running_tasks(&self) -> usize {
        let running = pb::TaskState::TaskRunning as i32;
        self.tasks().0.iter().filter(|t| t.state == running).count()
    }

    /// Waits until exactly `n` tasks are RUNNING.
    pub fn wait_for_running_tasks(&self, n: usize) {
        wait_until(
            &format!("{n} running tasks"),
            Duration::from_secs(120),
            Duration::from_millis(100),
            || (self.running_tasks() == n).then_some(()),
        );
    }

    /// The master's Raft term as it reports it.
    pub fn term(&self) -> u64 {
        self.operator(async |mut c| {
            Some(
                c.get_health(pb::GetHealthRequest {})
                    .await
                    .ok()?
                    .into_inner()
                    .master_info?
                    .term,
            )
        })
        .unwrap_or(0)
    }

    /// Active and completed tasks as the master reports them.
    pub fn tasks(&self) -> (Vec<pb::TaskSummary>, Vec<pb::TaskSummary>) {
        self.operator(async |mut c| {
            let r = c
                .get_tasks(pb::GetTasksRequest {
                    framework_id: None,
                    include_completed: true,
                })
                .await
                .ok()?
                .into_inner();
            Some((r.tasks, r.completed_tasks))
        })
        .unwrap_or_default()
    }

    /// The agent's own view of its tasks (`AgentApi.GetState`), or `None` if it does not
    /// answer.
    pub fn agent_state(&self, i: usize) -> Option<pb::GetAgentStateResponse> {
        let addr = self.agent_address(i);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async move {
            let mut c = pb::agent_api_client::AgentApiClient::new(connect(&addr).await?);
            Some(
                c.get_state(pb::GetAgentStateRequest {})
                    .await
                    .ok()?
                    .into_inner(),
            )
        })
    }

    /// Status updates agent `i` still holds unacknowledged.
    pub fn agent_pending_updates(&self, i: usize) -> Option<u32> {
        Some(
            self.agent_state(i)?
                .tasks
                .iter()
                .map(|t| t.pending_updates)
                .sum(),
        )
    }

    /// The master's Prometheus text.
    pub fn metrics(&self) -> String {
        self.operator(async |mut c| {
            Some(
                c.get_metrics(pb::GetMetricsRequest {})
                    .await
                    .ok()?
                    .into_inner()
                    .prometheus_text,
            )
        })
        .unwrap_or_default()
    }

    /// Agent `i`'s Prometheus text from its HTTP endpoint.
    pub fn agent_metrics(&self, i: usize) -> String {
        http_get(
            &format!("127.0.0.1:{}", self.agents[i].http_port),
            "/metrics",
        )
    }

    /// A file every task can append to (the tests count launches with it).
    pub fn run_log(&self) -> PathBuf {
        self.dir.path().join("runs.log")
    }

    /// How often each task id appears in the run log.
    pub fn run_counts(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(self.run_log()) {
            for line in text.lines().filter(|l| !l.is_empty()) {
                *m.entry(line.trim().to_string()).or_default() += 1;
            }
        }
        m
    }

    /// Prints every log (called when a test fails, to explain it).
    pub fn dump_logs(&self) {
        if let Ok(rd) = std::fs::read_dir(self.dir.path()) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(60).collect();
                    eprintln!("===== {} (last 60 lines)", p.display());
                    for l in tail.into_iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
    }

    /// Kills every process whose command line mentions this cluster's folder: task
    /// supervisors and tasks outlive their agent by design, so killing agents is not enough.
    /// The linux containers of killed supervisors are not torn down by anyone: their
    /// cgroups (and anything still in them) go here, so a failed test leaks nothing.
    fn remove_agent_cgroups(&self) {
        use drover_agent::containerizer::linux::cgroups::{work_dir_tag, Hierarchies};
        let Ok(h) = Hierarchies::detect() else {
            return;
        };
        for a in &self.agents {
            let dir = std::fs::canonicalize(&a.work_dir).unwrap_or_else(|_| a.work_dir.clone());
            h.destroy_all_below(&Path::new("drover").join(work_dir_tag(&dir)));
        }
    }

    /// Unmounts the namespace holders of task groups an agent left behind (a killed
    /// agent tears nothing down), so the cluster's folder can be removed.
    fn remove_group_holders(&self) {
        use drover_agent::containerizer::linux::holder;
        for a in &self.agents {
            holder::destroy_all_below(&a.work_dir.join("executors"));
        }
    }

    fn kill_strays(&self) {
        let needle = self.dir.path().to_string_lossy().to_string();
        let me = std::process::id();
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if pid as u32 == me {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let hit = |b: &[u8]| String::from_utf8_lossy(b).contains(&needle);
            if hit(&cmdline) || hit(&environ) {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for i in 0..self.agents.len() {
            self.resume_agent(i);
            self.kill_agent(i);
        }
        for i in 0..self.masters.len() {
            self.kill_master_at(i);
        }
        self.kill_strays();
        self.remove_agent_cgroups();
        self.remove_group_holders();
    }
}

/// Job indexes whose task FINISHED, from a test framework's report (task ids end in
/// `-<index>-<attempt>`).
pub fn finished_jobs(report: &Report) -> std::collections::HashSet<String> {
    report
        .final_states
        .iter()
        .filter(|(_, s)| s.as_str() == "FINISHED")
        .filter_map(|(id, _)| id.rsplit('-').nth(1).map(str::to_string))
        .collect()
}

impl Cluster {
    /// Asserts that `n` job indexes finished, and that each ran exactly once (from the
    /// shared run log).
    pub fn assert_every_job_once(&self, report: &Report, n: usize) {
        assert_eq!(finished_jobs(report).len(), n, "every job index finished");
        let runs = self.run_counts();
        assert_eq!(runs.len(), n, "every job index ran");
        let twice: Vec<_> = runs.iter().filter(|(_, c)| **c != 1).collect();
        assert!(twice.is_empty(), "jobs ran more than once: {twice:?}");
    }

    /// Waits (bounded) until the given masters have applied the same registry as the
    /// leader: same term and leader, applied index at least the leader's commit index, the
    /// same completed and active tasks, agents and frameworks.
    pub fn wait_for_replicas_to_agree(&self, masters: &[usize]) {
        wait_until(
            "the masters to apply the same registry",
            Duration::from_secs(120),
            Duration::from_millis(200),
            || {
                let leader = self.leader()?;
                let lead = self.raft_status(leader)?;
                for &i in masters {
                    let s = self.raft_status(i)?;
                    let same = s.term == lead.term
                        && s.leader_id == lead.id
                        && s.applied_index >= lead.commit_index
                        && s.completed_task_keys == lead.completed_task_keys
                        && s.active_tasks == lead.active_tasks
                        && s.agents == lead.agents
                        && s.frameworks == lead.frameworks;
                    if !same {
                        return None;
                    }
                }
                Some(())
            },
        );
    }
}

/// A plain HTTP GET (the daemons' metrics endpoints); empty when nothing answers.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: drover\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The value of a counter or gauge in Prometheus text (0 when absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Where a test framework's report goes and how to start it.
pub struct Framework {
    pub child: Child,
    pub report: PathBuf,
}

impl Framework {
    /// Starts `drover-testfw` with `args` against the cluster; it writes a JSON report.
    pub fn start(cluster: &Cluster, name: &str, args: &[&str]) -> Framework {
        let report = cluster.dir.path().join(format!("{name}.report.json"));
        let log = cluster.dir.path().join(format!("fw-{name}.log"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        let child = Command::new(bin_dir().join("drover-testfw"))
            .arg("--master")
            .arg(cluster.master_list())
            .arg("--name")
            .arg(name)
            .arg("--report")
            .arg(&report)
            .arg("--run-log")
            .arg(cluster.run_log())
            .args(args)
            .stdout(Stdio::from(f.try_clone().expect("dup")))
            .stderr(Stdio::from(f))
            .spawn()
            .expect("spawn drover-testfw");
        Framework { child, report }
    }

    /// Waits for the framework to exit (bounded) and returns its report.
    pub fn finish(mut self, limit: Duration) -> Report {
        let status = wait_until(
            "the test framework to finish",
            limit,
            Duration::from_millis(200),
            || self.child.try_wait().ok().flatten(),
        );
        assert!(status.success(), "test framework failed: {status}");
        Report::read(&self.report)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Framework {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the test framework observed, as written to its report.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, Default)]
pub struct Report {
    pub framework_id: String,
    /// Final state of every task it launched, by task id.
    pub final_states: HashMap<String, String>,
    /// How many terminal updates it counted per task id (duplicates included).
    pub terminal_updates: HashMap<String, usize>,
    /// Updates that carried a uuid and were acknowledged.
    pub acknowledged: usize,
    /// Updates received in all.
    pub updates: usize,
    /// Exit codes reported per task id.
    pub exit_codes: HashMap<String, i32>,
    /// Tasks launched (accepted) per job index.
    pub launches: HashMap<String, usize>,
    /// Resource-seconds (cpus x seconds RUNNING) the framework's tasks used.
    pub cpu_seconds: f64,
    /// Times the driver resubscribed after losing the master.
    pub resubscriptions: usize,
}

impl Report {
    pub fn read(path: &Path) -> Report {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("report {}: {e}", path.display()));
        serde_json::from_str(&text).expect("report JSON")
    }
}

/// A framework spoken to over raw gRPC (no SDK), for tests of the protocol itself: hostile
/// calls, offers, declines and filters.
pub mod raw {
    use std::time::Duration;

    use drover_proto::pb::{self, scheduler_client::SchedulerClient};
    use drover_proto::{OfferId, TaskId};
    use tonic::transport::Channel;

    pub struct Fw {
        pub client: SchedulerClient<Channel>,
        pub events: tonic::Streaming<pb::Event>,
        pub header: pb::CallHeader,
        pub offers: std::collections::VecDeque<pb::Offer>,
        pub updates: std::collections::VecDeque<pb::TaskStatus>,
        pub rescinded: Vec<OfferId>,
    }

    pub async fn subscribe(addr: &str, name: &str) -> Fw {
        subscribe_with(addr, name, Vec::new()).await
    }

    /// [`subscribe`] declaring these `FrameworkInfo.Capability`s.
    pub async fn subscribe_with(addr: &str, name: &str, capabilities: Vec<i32>) -> Fw {
        let mut client = SchedulerClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let mut events = client
            .subscribe(pb::SubscribeRequest {
                framework_info: Some(pb::FrameworkInfo {
                    name: name.into(),
                    user: "root".into(),
                    failover_timeout: 60.0,
                    capabilities,
                    ..Default::default()
                }),
                suppressed_roles: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        let first = events.message().await.unwrap().unwrap();
        let Some(pb::event::Event::Subscribed(s)) = first.event else {
            panic!("expected SUBSCRIBED")
        };
        Fw {
            client,
            events,
            header: pb::CallHeader {
                framework_id: s.framework_id,
                stream_id: s.stream_id,
            },
            offers: Default::default(),
            updates: Default::default(),
            rescinded: Vec::new(),
        }
    }

    impl Fw {
        /// Reads one event into the queues (bounded wait).
        pub async fn pump(&mut self) {
            let e = tokio::time::timeout(Duration::from_secs(90), self.events.message())
                .await
                .expect("no event arrived")
                .unwrap()
                .unwrap();
            match e.event {
                Some(pb::event::Event::Offers(o)) => self.offers.extend(o.offers),
                Some(pb::event::Event::Update(u)) => self.updates.extend(u.status),
                Some(pb::event::Event::Rescind(r)) => {
                    self.offers.retain(|o| o.id != r.offer_id);
                    self.rescinded.extend(r.offer_id);
                }
                _ => {}
            }
        }

        /// An offer if one arrives within `within`, else `None`.
        pub async fn offer_within(&mut self, within: Duration) -> Option<pb::Offer> {
            let deadline = tokio::time::Instant::now() + within;
            loop {
                if let Some(o) = self.offers.pop_front() {
                    return Some(o);
                }
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() || tokio::time::timeout(left, self.pump()).await.is_err() {
                    return None;
                }
            }
        }

        /// Waits (bounded) until the master rescinds `id`.
        pub async fn rescind_of(&mut self, id: &OfferId) {
            while !self.rescinded.contains(id) {
                self.pump().await;
            }
        }

        pub async fn decline(
            &mut self,
            ids: Vec<OfferId>,
            refuse_seconds: f64,
        ) -> Result<(), tonic::Status> {
            self.client
                .decline(pb::DeclineCall {
                    header: Some(self.header.clone()),
                    offer_ids: ids,
                    filters: Some(pb::Filters {
                        refuse_seconds: Some(refuse_seconds),
                    }),
                })
                .await
                .map(|_| ())
        }

        pub async fn revive(&mut self) -> Result<(), tonic::Status> {
            self.client
                .revive(pb::ReviveCall {
                    header: Some(self.header.clone()),
                    roles: vec![],
                })
                .await
                .map(|_| ())
        }

        pub async fn suppress(&mut self) -> Result<(), tonic::Status> {
            self.client
                .suppress(pb::SuppressCall {
                    header: Some(self.header.clone()),
                    roles: vec![],
                })
                .await
                .map(|_| ())
        }

        pub async fn kill(&mut self, task: &str, grace_secs: f64) -> Result<(), tonic::Status> {
            self.client
                .kill(pb::KillCall {
                    header: Some(self.header.clone()),
                    task_id: Some(TaskId::new(task)),
                    agent_id: None,
                    kill_policy: Some(pb::KillPolicy {
                        grace_period_seconds: grace_secs,
                    }),
                })
                .await
                .map(|_| ())
        }

        pub async fn offer(&mut self) -> pb::Offer {
            loop {
                if let Some(o) = self.offers.pop_front() {
                    return o;
                }
                self.pump().await;
            }
        }

        pub async fn update(&mut self) -> pb::TaskStatus {
            loop {
                if let Some(u) = self.updates.pop_front() {
                    return u;
                }
                self.pump().await;
            }
        }

        pub async fn launch(
            &mut self,
            offers: Vec<OfferId>,
            tasks: Vec<pb::TaskInfo>,
        ) -> Result<(), tonic::Status> {
            self.accept_one(
                offers,
                pb::Operation {
                    r#type: pb::operation::Type::Launch as i32,
                    launch: Some(pb::operation::Launch { task_infos: tasks }),
                    ..Default::default()
                },
            )
            .await
        }

        /// One LAUNCH_GROUP of `tasks` under `executor` (the agent's default executor).
        pub async fn launch_group(
            &mut self,
            offers: Vec<OfferId>,
            executor: pb::ExecutorInfo,
            tasks: Vec<pb::TaskInfo>,
        ) -> Result<(), tonic::Status> {
            self.accept_one(
                offers,
                pb::Operation {
                    r#type: pb::operation::Type::LaunchGroup as i32,
                    launch_group: Some(pb::operation::LaunchGroup {
                        executor: Some(executor),
                        task_group: Some(pb::TaskGroupInfo { tasks }),
                    }),
                    ..Default::default()
                },
            )
            .await
        }

        /// ACCEPT with one operation; what it leaves is declined without a filter.
        async fn accept_one(
            &mut self,
            offers: Vec<OfferId>,
            operation: pb::Operation,
        ) -> Result<(), tonic::Status> {
            self.client
                .accept(pb::AcceptCall {
                    header: Some(self.header.clone()),
                    offer_ids: offers,
                    operations: vec![operation],
                    filters: Some(pb::Filters {
                        refuse_seconds: Some(0.0),
                    }),
                })
                .await
                .map(|_| ())
        }

        pub async fn ack(&mut self, st: &pb::TaskStatus) {
            if st.uuid.is_empty() {
                return;
            }
            self.client
                .acknowledge(pb::AcknowledgeCall {
                    header: Some(self.header.clone()),
                    agent_id: st.agent_id.clone(),
                    task_id: st.task_id.clone(),
                    uuid: st.uuid.clone(),
                })
                .await
                .unwrap();
        }
    }

    /// A shell task with the given resources.
    pub fn task(id: &str, res: Vec<pb::Resource>, cmd: &str) -> pb::TaskInfo {
        pb::TaskInfo {
            name: id.into(),
            task_id: Some(TaskId::new(id)),
            resources: res,
            command: Some(pb::CommandInfo {
                value: cmd.into(),
                shell: true,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}
