//! `memory-bench`: the leading master's resident memory per registered agent and per
//! running task, with three masters and a simulated agent fleet.
//!
//! For each fleet size: the leader's RSS with no agents, after every agent registered
//! (and a few seconds of pings), and after a framework has one long-running task on every
//! agent. Per-agent and per-task figures are the differences divided by the counts.
//!
//! ```sh
//! cargo build --release -p drover-master -p drover-bench
//! target/release/memory-bench --agents 10000,50000
//! ```

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;
use drover_bench::filler::Filler;
use drover_bench::fleet::{self, FleetConfig};
use drover_bench::procs::{rss_bytes, wait_for, MasterGroup};
use drover_sdk::SchedulerConfig;

/// Master memory per agent and per task.
#[derive(Parser, Debug)]
struct Args {
    /// Fleet sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,50000")]
    agents: Vec<usize>,
    /// Running tasks per agent in the second step (0 skips it).
    #[arg(long, default_value_t = 1)]
    tasks_per_agent: usize,
}

struct Row {
    agents: usize,
    tasks: usize,
    base: u64,
    with_agents: u64,
    with_tasks: u64,
}

async fn measure(agents: usize, per_agent: usize) -> anyhow::Result<Row> {
    // Offers live long enough for one framework to answer tens of thousands of them.
    let masters = MasterGroup::start(
        3,
        &["--agent-timeout-secs", "300", "--offer-timeout-secs", "900"],
    )?;
    let leader = masters.wait_for_leader(Duration::from_secs(60)).await?;
    let pid = masters.pid(leader).expect("running");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base = rss_bytes(pid);
    let stats = fleet::start(FleetConfig {
        masters: masters.addrs(),
        agents,
        cpus: 1.0,
        mem_mb: 1024.0,
        task_secs: 1e9,
        agents_per_connection: 500,
        register_rate: 5000.0,
    });
    wait_for("every agent to register", Duration::from_secs(900), || {
        stats.registered.load(Ordering::Relaxed) as usize >= agents
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let with_agents = rss_bytes(pid);
    eprintln!(
        "{agents} agents registered: leader RSS {} MiB",
        with_agents >> 20
    );

    let tasks = agents * per_agent;
    if tasks == 0 {
        return Ok(Row {
            agents,
            tasks,
            base,
            with_agents,
            with_tasks: with_agents,
        });
    }
    let config = SchedulerConfig::builder("memory-bench")
        .masters(masters.addrs())
        .build()?;
    tokio::spawn(drover_sdk::run(
        config,
        Filler::new("mem", tasks, 0.1, 16.0),
    ));
    let started = Instant::now();
    wait_for("every task to run", Duration::from_secs(1800), || {
        stats.running.load(Ordering::Relaxed) as usize >= tasks
    })
    .await?;
    eprintln!(
        "{tasks} tasks running after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let with_tasks = rss_bytes(pid);
    if masters.leader().await != Some(leader) {
        anyhow::bail!("leadership moved during the measurement; run again on a quieter machine");
    }
    Ok(Row {
        agents,
        tasks,
        base,
        with_agents,
        with_tasks,
    })
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "| agents | tasks | leader RSS idle | with agents | with tasks | per agent | per task |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &args.agents {
        // Each row as soon as it is measured: a later, larger size may not finish.
        let r = measure(n, args.tasks_per_agent).await?;
        let per_agent = r.with_agents.saturating_sub(r.base) as f64 / r.agents as f64;
        let per_task = r.with_tasks.saturating_sub(r.with_agents) as f64 / r.tasks.max(1) as f64;
        println!(
            "| {} | {} | {} MiB | {} MiB | {} MiB | {:.1} KiB | {:.1} KiB |",
            r.agents,
            r.tasks,
            r.base >> 20,
            r.with_agents >> 20,
            r.with_tasks >> 20,
            per_agent / 1024.0,
            per_task / 1024.0
        );
    }
    Ok(())
}
