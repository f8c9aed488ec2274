//! `failover-bench`: time from `kill -9` of the leading master to the first offer a
//! subscribed framework receives from the new leader.
//!
//! For each fleet size it starts three real masters (the `drover-master` built next to this
//! binary), a simulated agent fleet and an SDK framework in this process, then kills the
//! leader `--kills` times. After each kill the killed master is restarted and the benchmark
//! waits until it has caught up and every agent is active again before the next kill.
//!
//! ```sh
//! cargo build --release -p drover-master -p drover-bench
//! target/release/failover-bench --agents 1,1000,10000 --kills 20
//! ```

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;
use drover_bench::fleet::{self, FleetConfig};
use drover_bench::procs::MasterGroup;
use drover_bench::stats::pct_ms;
use drover_sdk::proto::pb;
use drover_sdk::{async_trait, Driver, Scheduler, SchedulerConfig};
use tokio::sync::mpsc;

/// Leader-kill-to-first-offer latency of three masters with simulated agents.
#[derive(Parser, Debug)]
struct Args {
    /// Fleet sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    agents: Vec<usize>,
    /// Leader kills per fleet size.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Raft election timeout in ticks of 50 ms (the master's default is 10).
    #[arg(long, default_value_t = 10)]
    election_ticks: usize,
}

/// What the framework saw, and when.
enum Seen {
    Subscribed(Instant),
    Offers(Instant),
}

/// Declines everything (for an hour) and reports subscriptions and offers.
struct Watcher {
    offers: mpsc::UnboundedSender<Seen>,
}

#[async_trait]
impl Scheduler for Watcher {
    async fn subscribed(&mut self, _: &Driver, _: drover_sdk::proto::FrameworkId, _: bool) {
        let _ = self.offers.send(Seen::Subscribed(Instant::now()));
    }

    async fn offers(&mut self, driver: &Driver, offers: Vec<pb::Offer>) {
        let _ = self.offers.send(Seen::Offers(Instant::now()));
        let ids = offers.into_iter().filter_map(|o| o.id).collect();
        let _ = driver.decline(ids, Some(3600.0)).await;
    }

    async fn update(&mut self, _: &Driver, _: pb::TaskStatus) {}
}

async fn active_agents(masters: &MasterGroup) -> usize {
    let Some(l) = masters.leader().await else {
        return 0;
    };
    let Ok(ch) = tonic::transport::Endpoint::from_shared(format!("http://{}", masters.addr(l)))
        .expect("address")
        .connect()
        .await
    else {
        return 0;
    };
    let mut c = pb::operator_client::OperatorClient::new(ch).max_decoding_message_size(1 << 30);
    c.get_agents(pb::GetAgentsRequest {})
        .await
        .map(|r| {
            r.into_inner()
                .agents
                .iter()
                .filter(|a| a.state == pb::agent_summary::State::Active as i32)
                .count()
        })
        .unwrap_or(0)
}

async fn wait_active(masters: &MasterGroup, n: usize, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while active_agents(masters).await < n {
        if start.elapsed() > limit {
            anyhow::bail!("fewer than {n} agents active after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

async fn measure(agents: usize, args: &Args) -> anyhow::Result<Vec<Duration>> {
    let ticks = args.election_ticks.to_string();
    let mut masters = MasterGroup::start(
        3,
        &[
            "--raft-election-ticks",
            &ticks,
            "--agent-timeout-secs",
            "120",
            "--allocation-interval-ms",
            "1000",
        ],
    )?;
    masters.wait_for_leader(Duration::from_secs(60)).await?;
    let stats = fleet::start(FleetConfig {
        masters: masters.addrs(),
        agents,
        cpus: 4.0,
        mem_mb: 8192.0,
        task_secs: 1.0,
        agents_per_connection: 500,
        register_rate: 5000.0,
    });
    wait_active(&masters, agents, Duration::from_secs(300)).await?;
    let (tx, mut offers) = mpsc::unbounded_channel();
    let config = SchedulerConfig::builder("failover-bench")
        .masters(masters.addrs())
        .build()?;
    tokio::spawn(drover_sdk::run(config, Watcher { offers: tx }));
    // The first offer proves the framework is subscribed.
    tokio::time::timeout(Duration::from_secs(60), offers.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("framework stopped"))?;

    let mut samples = Vec::new();
    for k in 0..args.kills {
        let leader = masters.wait_for_leader(Duration::from_secs(60)).await?;
        while offers.try_recv().is_ok() {}
        let killed_at = Instant::now();
        masters.kill(leader);
        // Offers already on their way from the old leader do not count: only those after
        // the framework has resubscribed (to the new leader).
        let mut resubscribed = false;
        let first = loop {
            let seen = tokio::time::timeout(Duration::from_secs(120), offers.recv())
                .await
                .map_err(|_| anyhow::anyhow!("no offer within 120 s of kill {k}"))?
                .ok_or_else(|| anyhow::anyhow!("framework stopped"))?;
            match seen {
                Seen::Subscribed(t) if t > killed_at => resubscribed = true,
                Seen::Offers(t) if resubscribed => break t,
                _ => {}
            }
        };
        let d = first - killed_at;
        eprintln!(
            "agents {agents}: kill {k}: first offer from the new leader after {:.0} ms (reconnects so far {})",
            d.as_secs_f64() * 1e3,
            stats.reconnects.load(Ordering::Relaxed)
        );
        samples.push(d);
        masters.restart(leader)?;
        masters
            .wait_caught_up(leader, Duration::from_secs(300))
            .await?;
        wait_active(&masters, agents, Duration::from_secs(300)).await?;
    }
    Ok(samples)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows = Vec::new();
    for &n in &args.agents {
        let s = measure(n, &args).await?;
        rows.push((n, s));
    }
    println!("| simulated agents | kills | median | p99 | min | max |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for (n, s) in &rows {
        let min = s.iter().min().copied().unwrap_or_default();
        let max = s.iter().max().copied().unwrap_or_default();
        println!(
            "| {n} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
            s.len(),
            pct_ms(s, 0.5),
            pct_ms(s, 0.99),
            min.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
