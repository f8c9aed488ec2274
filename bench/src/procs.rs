//! Real master processes for benchmarks: `n` masters in one Raft group on loopback, from
//! the `drover-master` binary built next to the benchmark, in a temporary folder.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drover_proto::pb;

/// Folder holding the workspace's binaries (the benchmark's own folder).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().expect("bin folder").to_path_buf()
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

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
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
