//! End-to-end task throughput: one framework (built on the SDK) pushes `--tasks` tiny tasks
//! (`true`) through a running cluster and reports tasks per second (first ACCEPT to last
//! FINISHED) and the accept-to-RUNNING latency (ACCEPT sent → RUNNING update received) at
//! p50, p99 and max.
//!
//! ```sh
//! drover local --agent-resources 'cpus:8;mem:8192' &   # or any cluster
//! cargo run --release -p drover-bench --bin task-bench -- --tasks 10000
//! ```
//!
//! `--containerizer linux|process` and `--image NAME` choose how the tasks run (an image
//! must be imported into the agents' stores first).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use clap::Parser;
use drover_sdk::proto::pb::{self, TaskState};
use drover_sdk::proto::states::is_terminal;
use drover_sdk::{
    async_trait, Driver, OfferPacker, Scheduler, SchedulerConfig, TaskBuilder, TaskRequest,
};

#[derive(Parser, Debug)]
struct Args {
    /// Masters, HOST:PORT[,…] (default: DROVER_MASTER, else 127.0.0.1:5050).
    #[arg(long)]
    master: Option<String>,
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    #[arg(long, default_value_t = 0.01)]
    cpus: f64,
    /// MB per task. Linux containers take at least 4 MB (their memory limit).
    #[arg(long, default_value_t = 8.0)]
    mem: f64,
    /// At most this many tasks launched and not yet ended (1 measures an idle agent's
    /// latency; the default launches everything that fits).
    #[arg(long)]
    in_flight: Option<usize>,
    /// Shell command of every task.
    #[arg(long, default_value = "true")]
    cmd: String,
    /// The containerizer the tasks ask for: linux, process (default: the agent's).
    #[arg(long, value_parser = ["linux", "process"])]
    containerizer: Option<String>,
    /// Run every task inside this image of the agents' image stores (linux containers;
    /// import it first with `drover images import`). The image needs `/bin/sh` and the
    /// command's programs.
    #[arg(long)]
    image: Option<String>,
}

impl Args {
    /// The tasks' `ContainerInfo`, from `--containerizer` and `--image`.
    fn container(&self) -> Option<pb::ContainerInfo> {
        use pb::container_info::Type;
        if self.containerizer.is_none() && self.image.is_none() {
            return None;
        }
        Some(pb::ContainerInfo {
            r#type: match self.containerizer.as_deref() {
                Some("process") => Type::Process,
                Some(_) => Type::Linux,
                None => Type::Unspecified,
            } as i32,
            image: self.image.clone().map(|name| pb::Image { name }),
            ..Default::default()
        })
    }
}

struct Bench {
    args: Args,
    pending: VecDeque<usize>,
    accepted_at: HashMap<String, Instant>,
    latencies: Vec<Duration>,
    finished: usize,
    failed: usize,
    first_accept: Option<Instant>,
    last_done: Option<Instant>,
}

#[async_trait]
impl Scheduler for Bench {
    async fn offers(&mut self, driver: &Driver, offers: Vec<pb::Offer>) {
        let request = TaskRequest::new(self.args.cpus, self.args.mem);
        let cmd = self.args.cmd.clone();
        let container = self.args.container();
        let room = self
            .args
            .in_flight
            .map_or(usize::MAX, |n| n.saturating_sub(self.accepted_at.len()));
        let packing = OfferPacker::new().max_tasks(room).pack(
            offers,
            &mut self.pending,
            |_| request,
            |i, offer, resources| {
                let mut task = TaskBuilder::new(format!("bench-{i}"))
                    .shell(cmd.clone())
                    .offer(offer)
                    .resources(&resources)
                    .build();
                task.container = container.clone();
                task
            },
        );
        let filters = pb::Filters {
            refuse_seconds: Some(0.0),
        };
        for (offer_id, tasks) in packing.launches {
            let now = Instant::now();
            self.first_accept.get_or_insert(now);
            let ids: Vec<String> = tasks
                .iter()
                .map(|t| t.task_id.clone().unwrap_or_default().to_string())
                .collect();
            for id in &ids {
                self.accepted_at.insert(id.clone(), now);
            }
            let op = pb::Operation {
                r#type: pb::operation::Type::Launch as i32,
                launch: Some(pb::operation::Launch { task_infos: tasks }),
                ..Default::default()
            };
            if let Err(e) = driver.accept(vec![offer_id], vec![op], filters).await {
                eprintln!("accept failed: {e}");
            }
        }
        // With a cap on tasks in flight, offers come back at once so the next task waits
        // only for its predecessor, not for a filter.
        let refuse = if self.args.in_flight.is_some() {
            0.0
        } else {
            1.0
        };
        let _ = driver.decline(packing.unused, Some(refuse)).await;
    }

    async fn update(&mut self, driver: &Driver, status: pb::TaskStatus) {
        let id = status.task_id.clone().unwrap_or_default().to_string();
        let state = status.state();
        if state == TaskState::TaskRunning {
            if let Some(at) = self.accepted_at.get(&id) {
                self.latencies.push(at.elapsed());
            }
        }
        if is_terminal(state) && self.accepted_at.remove(&id).is_some() {
            if state == TaskState::TaskFinished {
                self.finished += 1;
            } else {
                self.failed += 1;
                eprintln!("{id}: {:?} {}", state, status.message);
            }
            if (self.finished + self.failed).is_multiple_of(1000) {
                eprintln!("{} tasks done", self.finished + self.failed);
            }
            if self.finished + self.failed == self.args.tasks {
                self.last_done = Some(Instant::now());
                report(self);
                let _ = driver.teardown().await;
            }
        }
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn report(b: &Bench) {
    let mut l = b.latencies.clone();
    l.sort();
    let secs = match (b.first_accept, b.last_done) {
        (Some(a), Some(z)) => (z - a).as_secs_f64(),
        _ => f64::NAN,
    };
    println!("tasks: {} finished, {} failed", b.finished, b.failed);
    println!("wall time (first accept to last terminal update): {secs:.2} s");
    println!(
        "throughput: {:.0} tasks/s",
        (b.finished + b.failed) as f64 / secs
    );
    println!(
        "accept-to-RUNNING latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
        pct(&l, 0.5),
        pct(&l, 0.99),
        pct(&l, 1.0),
        l.len()
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut builder = SchedulerConfig::builder("task-bench");
    if let Some(m) = &args.master {
        builder = builder.masters(drover_sdk::parse_masters(m)?);
    }
    let config = builder.build()?;
    let bench = Bench {
        pending: (0..args.tasks).collect(),
        args,
        accepted_at: HashMap::new(),
        latencies: Vec::new(),
        finished: 0,
        failed: 0,
        first_accept: None,
        last_done: None,
    };
    drover_sdk::run(config, bench).await?;
    Ok(())
}
