//! `registry-bench`: replicated registry writes with three masters, side by side with a
//! three-member etcd cluster on the same machine, in the same run.
//!
//! A write is one client request answered after a majority has fsynced it, on both sides:
//! for Drover an `Operator.UpdateWeights` call (one Raft proposal of the registry), for
//! etcd a `KV.Put`. `--clients` concurrent clients send to the leader for `--secs`
//! seconds; throughput and latency percentiles are printed as one Markdown table. Then
//! each side's leader is killed `--kills` times and the time from `kill -9` to the next
//! successful write (through the surviving members) is measured.
//!
//! ```sh
//! apt-get install etcd-server etcd-client     # Debian's etcd 3.4
//! cargo build --release -p drover-master -p drover-bench
//! target/release/registry-bench --clients 500 --secs 10 --kills 10
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use drover_bench::procs::{free_port, MasterGroup};
use drover_bench::stats::pct_ms;
use drover_proto::pb;
use tonic::transport::{Channel, Endpoint};

/// Replicated write throughput, latency and leader failover: Drover beside etcd.
#[derive(Parser, Debug)]
struct Args {
    /// Concurrent clients on each side.
    #[arg(long, default_value_t = 500)]
    clients: usize,
    /// Seconds of measured load on each side (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// HTTP/2 connections the clients share.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Leader kills on each side for the failover figure (0 skips it).
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// The etcd server binary (skipped with a message when missing).
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
}

struct Load {
    ok: u64,
    errors: u64,
    latencies: Vec<Duration>,
    secs: f64,
}

/// Runs `clients` loops of `write` for `secs` (after a warm-up second) and collects.
async fn drive<F, Fut>(clients: usize, secs: u64, write: F) -> Load
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let write = Arc::new(write);
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (write, measuring, stop, errors, lat) = (
            write.clone(),
            measuring.clone(),
            stop.clone(),
            errors.clone(),
            lat.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = write(c, n).await;
                n += 1;
                if measuring.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    if ok {
                        mine.push(t.elapsed());
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat.lock().expect("lock").extend(mine);
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    let latencies = std::mem::take(&mut *lat.lock().expect("lock"));
    Load {
        ok: latencies.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        latencies,
        secs: elapsed,
    }
}

fn channels(addr: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    (0..n.max(1))
        .map(|_| {
            Ok(Endpoint::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(10))
                .connect_lazy())
        })
        .collect()
}

// ------------------------------------------------------------------ Drover

fn weight_request(c: usize, n: u64) -> pb::UpdateWeightsRequest {
    pb::UpdateWeightsRequest {
        weights: vec![pb::WeightInfo {
            role: format!("bench-{}", c % 64),
            weight: 1.0 + (n % 10) as f64,
        }],
    }
}

async fn drover_write(ch: Channel, c: usize, n: u64) -> bool {
    pb::operator_client::OperatorClient::new(ch)
        .update_weights(weight_request(c, n))
        .await
        .is_ok()
}

async fn drover_load(args: &Args) -> anyhow::Result<(Load, Vec<Duration>)> {
    let mut masters = MasterGroup::start(3, &[])?;
    let leader = masters.wait_for_leader(Duration::from_secs(60)).await?;
    let chans = channels(&masters.addr(leader), args.connections)?;
    let load = drive(args.clients, args.secs, move |c, n| {
        drover_write(chans[c % chans.len()].clone(), c, n)
    })
    .await;
    let mut failovers = Vec::new();
    for k in 0..args.kills {
        let leader = masters.wait_for_leader(Duration::from_secs(60)).await?;
        let others: Vec<String> = (0..masters.len())
            .filter(|&i| i != leader)
            .map(|i| masters.addr(i))
            .collect();
        let killed = Instant::now();
        masters.kill(leader);
        let d = first_success(killed, &others, |addr| async move {
            let ch = Endpoint::from_shared(format!("http://{addr}"))
                .ok()?
                .connect_timeout(Duration::from_millis(300))
                .timeout(Duration::from_secs(2))
                .connect()
                .await
                .ok()?;
            drover_write(ch, 0, 0).await.then_some(())
        })
        .await?;
        eprintln!(
            "drover kill {k}: first write after {:.0} ms",
            d.as_secs_f64() * 1e3
        );
        failovers.push(d);
        masters.restart(leader)?;
        masters
            .wait_caught_up(leader, Duration::from_secs(120))
            .await?;
    }
    Ok((load, failovers))
}

/// Tries `write` against `addrs` in turn until one succeeds; the time since `since`.
async fn first_success<F, Fut>(
    since: Instant,
    addrs: &[String],
    write: F,
) -> anyhow::Result<Duration>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    loop {
        for a in addrs {
            if write(a.clone()).await.is_some() {
                return Ok(since.elapsed());
            }
        }
        if since.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("no write succeeded within 60 s of the kill");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ------------------------------------------------------------------ etcd

/// etcd's `KV.Put`, declared by hand: only the fields this benchmark sends.
#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {}

async fn etcd_put(ch: Channel, c: usize, n: u64) -> bool {
    let mut grpc = tonic::client::Grpc::new(ch);
    if grpc.ready().await.is_err() {
        return false;
    }
    let req = PutRequest {
        key: format!("bench-{}", c % 64).into_bytes(),
        value: format!("{}", 1 + n % 10).into_bytes(),
    };
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
    let codec: tonic::codec::ProstCodec<PutRequest, PutResponse> = Default::default();
    grpc.unary(tonic::Request::new(req), path, codec)
        .await
        .is_ok()
}

struct EtcdMember {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

struct Etcd {
    bin: PathBuf,
    dir: tempfile::TempDir,
    members: Vec<EtcdMember>,
}

impl Etcd {
    fn start(bin: &Path) -> anyhow::Result<Etcd> {
        let dir = tempfile::Builder::new().prefix("etcd-bench-").tempdir()?;
        let members = (0..3)
            .map(|i| EtcdMember {
                name: format!("e{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let mut e = Etcd {
            bin: bin.to_path_buf(),
            dir,
            members,
        };
        for i in 0..3 {
            e.spawn(i, true)?;
        }
        Ok(e)
    }

    fn spawn(&mut self, i: usize, new: bool) -> anyhow::Result<()> {
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let m = &self.members[i];
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name)))?;
        let child = Command::new(&self.bin)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.dir.path().join(&m.name))
            .arg("--listen-client-urls")
            .arg(format!("http://127.0.0.1:{}", m.client))
            .arg("--advertise-client-urls")
            .arg(format!("http://127.0.0.1:{}", m.client))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer))
            .arg("--initial-cluster")
            .arg(cluster.join(","))
            .arg("--initial-cluster-state")
            .arg(if new { "new" } else { "existing" })
            .arg("--initial-cluster-token")
            .arg("drover-bench")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        self.members[i].child = Some(child);
        Ok(())
    }

    fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client)
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }

    /// The leader's index, asked with `etcdctl endpoint status`.
    async fn leader(&self) -> Option<usize> {
        let endpoints: Vec<String> = (0..3)
            .filter(|&i| self.members[i].child.is_some())
            .map(|i| format!("http://{}", self.addr(i)))
            .collect();
        let out = tokio::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(endpoints.join(","))
            .args(["endpoint", "status", "-w", "json", "--command-timeout=2s"])
            .output()
            .await
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        for e in v.as_array()? {
            let st = &e["Status"];
            let me = st["header"]["member_id"].as_u64()?;
            if st["leader"].as_u64()? == me {
                let ep = e["Endpoint"].as_str()?;
                return (0..3).find(|&i| ep.ends_with(&format!(":{}", self.members[i].client)));
            }
        }
        None
    }

    async fn wait_for_leader(&self) -> anyhow::Result<usize> {
        let start = Instant::now();
        loop {
            if let Some(l) = self.leader().await {
                return Ok(l);
            }
            if start.elapsed() > Duration::from_secs(60) {
                anyhow::bail!("etcd elected no leader within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

async fn etcd_load(args: &Args) -> anyhow::Result<(Load, Vec<Duration>)> {
    let mut etcd = Etcd::start(&args.etcd)?;
    let leader = etcd.wait_for_leader().await?;
    let chans = channels(&etcd.addr(leader), args.connections)?;
    let load = drive(args.clients, args.secs, move |c, n| {
        etcd_put(chans[c % chans.len()].clone(), c, n)
    })
    .await;
    let mut failovers = Vec::new();
    for k in 0..args.kills {
        let leader = etcd.wait_for_leader().await?;
        let others: Vec<String> = (0..3)
            .filter(|&i| i != leader)
            .map(|i| etcd.addr(i))
            .collect();
        let killed = Instant::now();
        etcd.kill(leader);
        let d = first_success(killed, &others, |addr| async move {
            let ch = Endpoint::from_shared(format!("http://{addr}"))
                .ok()?
                .connect_timeout(Duration::from_millis(300))
                .timeout(Duration::from_secs(2))
                .connect()
                .await
                .ok()?;
            etcd_put(ch, 0, 0).await.then_some(())
        })
        .await?;
        eprintln!(
            "etcd kill {k}: first put after {:.0} ms",
            d.as_secs_f64() * 1e3
        );
        failovers.push(d);
        etcd.spawn(leader, false)?;
        // Let the restarted member rejoin before the next kill.
        tokio::time::sleep(Duration::from_secs(3)).await;
        etcd.wait_for_leader().await?;
    }
    Ok((load, failovers))
}

fn row(name: &str, load: &Load, failovers: &[Duration]) {
    let fo = if failovers.is_empty() {
        "-".to_string()
    } else {
        format!(
            "{:.0} / {:.0} ms",
            pct_ms(failovers, 0.5),
            pct_ms(failovers, 0.99)
        )
    };
    println!(
        "| {name} | {:.0} | {:.1} ms | {:.1} ms | {} | {fo} |",
        load.ok as f64 / load.secs,
        pct_ms(&load.latencies, 0.5),
        pct_ms(&load.latencies, 0.99),
        load.errors,
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    drover_bench::fleet::raise_nofile_limit();
    let (dl, df) = drover_load(&args).await?;
    let etcd = if args.etcd.exists() {
        Some(etcd_load(&args).await?)
    } else {
        eprintln!(
            "{} is missing: install Debian's etcd-server and etcd-client to compare",
            args.etcd.display()
        );
        None
    };
    println!(
        "| 3 members, {} clients | writes/s | p50 | p99 | errors | leader kill to next write (median / p99, {} kills) |",
        args.clients, args.kills
    );
    println!("|---|---:|---:|---:|---:|---:|");
    row("Drover (UpdateWeights)", &dl, &df);
    if let Some((el, ef)) = &etcd {
        row("etcd (Put)", el, ef);
    }
    Ok(())
}
