//! Real master processes for benchmarks: `n` masters in one Raft group on loopback, from
//! the `drover-master` binary built next to the benchmark, in a temporary folder.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drover_proto::pb;

/// Folder holding the workspace's binaries (the benchmark's own folder).
pub fn bin_dir() -> PathBuf {
    drover_testkit::bin_dir(&["drover-master", "drover-agent"])
}

/// A free loopback port, outside the kernel's ephemeral range (see
/// [`drover_testkit::free_port`]: a port from `bind(":0")` can be taken by an outgoing
/// connection before the daemon binds it).
pub use drover_testkit::free_port;

struct Proc {
    port: u16,
    http_port: u16,
    child: Option<Child>,
}

/// A group of master processes; all are killed on drop.
pub struct MasterGroup {
    pub dir: tempfile::TempDir,
    procs: Vec<Proc>,
    extra: Vec<String>,
}

impl MasterGroup {
    /// Starts `n` masters (`--id 1..=n`, `--peers` naming all) with `extra` flags.
    pub fn start(n: usize, extra: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("drover-bench-").tempdir()?;
        let procs = (0..n)
            .map(|_| Proc {
                port: free_port(),
                http_port: free_port(),
                child: None,
            })
            .collect();
        let mut g = Self {
            dir,
            procs,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for i in 0..n {
            g.spawn(i)?;
        }
        Ok(g)
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.procs[i].port)
    }

    pub fn addrs(&self) -> Vec<String> {
        (0..self.procs.len()).map(|i| self.addr(i)).collect()
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.procs[i].child.as_ref().map(|c| c.id())
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let peers: Vec<String> = self
            .procs
            .iter()
            .enumerate()
            .map(|(j, p)| format!("{}=127.0.0.1:{}", j + 1, p.port))
            .collect();
        let p = &self.procs[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("master-{i}.log")))?;
        let mut cmd = Command::new(bin_dir().join("drover-master"));
        cmd.arg("--id")
            .arg((i + 1).to_string())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", p.port))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{}", p.http_port))
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("master-{i}")))
            .arg("--log-level")
            .arg("warn");
        if self.procs.len() > 1 {
            cmd.arg("--peers").arg(peers.join(","));
        }
        cmd.args(&self.extra)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        self.procs[i].child = Some(cmd.spawn()?);
        Ok(())
    }

    /// `kill -9` of master `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn(i)
    }

    /// The serving leader, by `GetHealth` of every running master (highest term wins).
    pub async fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for i in 0..self.procs.len() {
            if self.procs[i].child.is_none() {
                continue;
            }
            if let Some(h) = health(&self.addr(i)).await {
                if h.leader {
                    let term = h.master_info.map(|m| m.term).unwrap_or(0);
                    if best.is_none_or(|(t, _)| term > t) {
                        best = Some((term, i));
                    }
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// Waits (up to `limit`) for a leader.
    pub async fn wait_for_leader(&self, limit: Duration) -> anyhow::Result<usize> {
        let start = Instant::now();
        loop {
            if let Some(l) = self.leader().await {
                return Ok(l);
            }
            if start.elapsed() > limit {
                anyhow::bail!("no master leads after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn status(&self, i: usize) -> Option<pb::RaftStatusResponse> {
        let ch = endpoint(&self.addr(i)).connect().await.ok()?;
        pb::raft_peer_client::RaftPeerClient::new(ch)
            .status(pb::RaftStatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// Waits until master `i` has applied at least the leader's commit index.
    pub async fn wait_caught_up(&self, i: usize, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(l) = self.leader().await {
                if let (Some(lead), Some(me)) = (self.status(l).await, self.status(i).await) {
                    if me.applied_index >= lead.commit_index && me.leader_id == lead.id {
                        return Ok(());
                    }
                }
            }
            if start.elapsed() > limit {
                anyhow::bail!("master {i} did not catch up within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("master-{i}.log"))
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for MasterGroup {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
    }
}

fn endpoint(addr: &str) -> tonic::transport::Endpoint {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid address")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
}

/// `GetHealth` of one master.
pub async fn health(addr: &str) -> Option<pb::GetHealthResponse> {
    let ch = endpoint(addr).connect().await.ok()?;
    pb::operator_client::OperatorClient::new(ch)
        .get_health(pb::GetHealthRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Resident memory of a process in bytes (`VmRSS`), or 0.
pub fn rss_bytes(pid: u32) -> u64 {
    proc_kb(pid, "status", "VmRSS:") * 1024
}

/// Proportional set size of a process in bytes (`Pss` of `smaps_rollup`), or 0.
pub fn pss_bytes(pid: u32) -> u64 {
    proc_kb(pid, "smaps_rollup", "Pss:") * 1024
}

/// A "`key` N kB" line of `/proc/<pid>/<file>`, or 0 (the process is gone).
fn proc_kb(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// Polls `f` every half second until it holds; an error naming `what` after `limit`.
pub async fn wait_for(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            anyhow::bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// One real `drover-agent` process with its own work dir, registered with `master`.
/// Started with `--shutdown-tasks-on-exit`, so stopping it ([`AgentProc::stop`], or drop)
/// takes its tasks down with it.
pub struct AgentProc {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl AgentProc {
    /// Starts an agent with `extra` flags added to the ones that place it in its folder.
    pub fn start(master: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("drover-bench-agent-")
            .tempdir()?;
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("agent.log"))?;
        let child = Command::new(bin_dir().join("drover-agent"))
            .arg("--master")
            .arg(master)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--work-dir")
            .arg(dir.path().join("work"))
            .arg("--shutdown-tasks-on-exit")
            .arg("--log-level")
            .arg("warn")
            .args(extra)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        Ok(AgentProc {
            dir,
            port,
            child: Some(child),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `GetState` of the agent's own API.
    pub async fn state(&self) -> Option<pb::GetAgentStateResponse> {
        let ch = endpoint(&format!("127.0.0.1:{}", self.port))
            .connect()
            .await
            .ok()?;
        pb::agent_api_client::AgentApiClient::new(ch)
            .get_state(pb::GetAgentStateRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// Waits until the agent has registered with its master (it knows its agent id).
    pub async fn wait_registered(&self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.state().await {
                if s.agent_id.is_some_and(|id| !id.as_str().is_empty()) {
                    return Ok(());
                }
            }
            if start.elapsed() > limit {
                anyhow::bail!("the agent did not register within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Total proportional memory (PSS: shared pages divided among the processes sharing
    /// them, so N copies of one binary count once) of the processes the agent started
    /// that are still running (task supervisors, container inits; not the tasks' own
    /// commands, which are the tasks' business): (count, bytes). Found by the agent's
    /// work dir in their command line.
    pub fn helpers_pss(&self) -> (usize, u64) {
        let work = self.dir.path().join("work");
        let work = work.to_string_lossy();
        let mut count = 0;
        let mut total = 0;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if Some(pid) == self.pid() {
                continue;
            }
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline);
            let helper =
                cmdline.contains("\0__supervise\0") || cmdline.contains("\0__container_init\0");
            if helper && cmdline.contains(&*work) {
                count += 1;
                total += pss_bytes(pid);
            }
        }
        (count, total)
    }

    /// SIGTERM, so the agent kills its tasks (`--shutdown-tasks-on-exit`), then waits for
    /// it; SIGKILL after `limit`.
    pub fn stop(&mut self, limit: Duration) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(30));
    }
}
