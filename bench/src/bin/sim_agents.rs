//! `sim-agents`: a simulated agent fleet in one process (see `drover_bench::fleet`).
//!
//! ```sh
//! cargo run --release -p drover-bench --bin sim-agents -- --master 127.0.0.1:5050 --agents 10000
//! ```
//!
//! Prints the fleet's counters every five seconds until Ctrl-C.

use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use drover_bench::fleet::{self, FleetConfig};

/// A fleet of simulated agents speaking the real agent protocol.
#[derive(Parser, Debug)]
struct Args {
    /// Masters, HOST:PORT[,HOST:PORT…].
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:5050")]
    master: Vec<String>,
    /// Number of agents.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// cpus each agent offers.
    #[arg(long, default_value_t = 4.0)]
    cpus: f64,
    /// mem (MB) each agent offers.
    #[arg(long, default_value_t = 8192.0)]
    mem: f64,
    /// Seconds each task "runs" before it finishes.
    #[arg(long, default_value_t = 1.0)]
    task_secs: f64,
    /// Agent streams per HTTP/2 connection (the master accepts up to 1,000).
    #[arg(long, default_value_t = 500)]
    agents_per_connection: usize,
    /// Agents registering per second at start (0: all at once).
    #[arg(long, default_value_t = 2000.0)]
    register_rate: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let stats = fleet::start(FleetConfig {
        masters: a.master,
        agents: a.agents,
        cpus: a.cpus,
        mem_mb: a.mem,
        task_secs: a.task_secs,
        agents_per_connection: a.agents_per_connection,
        register_rate: a.register_rate,
    });
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        println!(
            "registered {} sessions {} reconnects {} running {} started {} finished {}",
            stats.registered.load(Ordering::Relaxed),
            stats.sessions.load(Ordering::Relaxed),
            stats.reconnects.load(Ordering::Relaxed),
            stats.running.load(Ordering::Relaxed),
            stats.tasks_started.load(Ordering::Relaxed),
            stats.tasks_finished.load(Ordering::Relaxed),
        );
    }
}
