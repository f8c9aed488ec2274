//! `agent-memory-bench`: an agent's resident memory idle and with N running tasks, per
//! containerizer, together with the memory of the helper processes it starts per task
//! (supervisors, and for linux containers the container's init).
//!
//! For each containerizer: one master and one fresh agent (`--containerizers NAME`), the
//! agent's RSS a few seconds after it registered, then a framework starts `--tasks`
//! `sleep infinity` tasks and, once all run and a few usage pings have gone by, the
//! agent's RSS again and the helpers' total PSS (their private memory plus their share
//! of the pages they share, chiefly the agent binary they are started from). The agent is stopped with
//! `--shutdown-tasks-on-exit`, so nothing outlives the run.
//!
//! ```sh
//! cargo build --release --bins
//! target/release/agent-memory-bench --tasks 100 --containerizers process,linux
//! ```

use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use drover_bench::filler::Filler;
use drover_bench::procs::{rss_bytes, wait_for, AgentProc, MasterGroup};
use drover_sdk::proto::pb;
use drover_sdk::SchedulerConfig;

/// Agent memory, idle and with running tasks.
#[derive(Parser, Debug)]
struct Args {
    /// Running tasks in the second measurement.
    #[arg(long, default_value_t = 100)]
    tasks: usize,
    /// Containerizers to measure, one agent each: process, linux (needs root).
    #[arg(long, value_delimiter = ',', default_value = "process,linux")]
    containerizers: Vec<String>,
    /// Seconds to let the agent settle before each reading (pings, usage samples).
    #[arg(long, default_value_t = 5.0)]
    settle_secs: f64,
}

struct Row {
    containerizer: String,
    idle: u64,
    busy: u64,
    helpers: usize,
    helpers_pss: u64,
}

async fn measure(args: &Args, containerizer: &str) -> anyhow::Result<Row> {
    let settle = Duration::from_secs_f64(args.settle_secs);
    let masters = MasterGroup::start(1, &[])?;
    masters.wait_for_leader(Duration::from_secs(60)).await?;
    // Its own cgroup root, so that nothing of a crashed run mixes with a real agent's.
    let cgroups_root = format!("drover-bench-{}", std::process::id());
    let mut agent = AgentProc::start(
        &masters.addr(0),
        &[
            "--containerizers",
            containerizer,
            "--cgroups-root",
            &cgroups_root,
            "--resources",
            "cpus:16;mem:16384;disk:100000",
        ],
    )?;
    agent.wait_registered(Duration::from_secs(60)).await?;
    let pid = agent.pid().expect("running");
    tokio::time::sleep(settle).await;
    let idle = rss_bytes(pid);

    let kind = match containerizer {
        "linux" => pb::container_info::Type::Linux,
        _ => pb::container_info::Type::Process,
    };
    let filler = Filler::new("hold", args.tasks, 0.01, 8.0).container(Some(pb::ContainerInfo {
        r#type: kind as i32,
        ..Default::default()
    }));
    let (running, ended) = filler.counters();
    let config = SchedulerConfig::builder("agent-memory-bench")
        .masters(masters.addrs())
        .build()?;
    let framework = tokio::spawn(drover_sdk::run(config, filler));
    wait_for("every task to run", Duration::from_secs(600), || {
        running.load(Ordering::Relaxed) >= args.tasks || ended.load(Ordering::Relaxed) > 0
    })
    .await?;
    if ended.load(Ordering::Relaxed) > 0 {
        anyhow::bail!(
            "a task ended; see {}",
            agent.dir.path().join("agent.log").display()
        );
    }
    tokio::time::sleep(settle).await;
    let busy = rss_bytes(pid);
    let (helpers, helpers_pss) = agent.helpers_pss();
    framework.abort();
    agent.stop(Duration::from_secs(60));
    Ok(Row {
        containerizer: containerizer.to_string(),
        idle,
        busy,
        helpers,
        helpers_pss,
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "| containerizer | agent RSS idle | with {} tasks | per task | helper processes | their PSS | per task |",
        args.tasks
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for c in &args.containerizers {
        let r = measure(&args, c).await?;
        let per_task = r.busy.saturating_sub(r.idle) as f64 / args.tasks.max(1) as f64;
        let helpers_per_task = r.helpers_pss as f64 / args.tasks.max(1) as f64;
        println!(
            "| {} | {} | {} | {:.1} KiB | {} | {} | {:.1} KiB |",
            r.containerizer,
            mib(r.idle),
            mib(r.busy),
            per_task / 1024.0,
            r.helpers,
            mib(r.helpers_pss),
            helpers_per_task / 1024.0
        );
    }
    Ok(())
}
