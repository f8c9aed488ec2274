//! Docker containers through Drover versus `docker run` directly, in the same run.
//!
//! 1. Drover: one framework (built on the SDK) accepts offers for `--containers` DOCKER
//!    tasks (`sleep 600` in a busybox image) on a running cluster, and the time from its
//!    first ACCEPT to the last RUNNING update is taken (the agent reports RUNNING once the
//!    engine has started the container). The framework is then torn down and the bench
//!    waits until the engine holds none of its containers.
//! 2. Direct: `--containers` `docker run -d` commands at once, with the settings the
//!    agent uses (host network, init, the same cpu quota, cpu shares and memory limit); the
//!    time until every one has returned (the container runs) is taken. Then they are
//!    removed.
//! 3. Latency: `--latency-tasks` DOCKER tasks (`true`) one at a time on an otherwise idle
//!    agent: accept-to-RUNNING p50 and p99.
//!
//! The image is imported on the spot from the host's static busybox unless `--image` names
//! one already in the engine.
//!
//! ```sh
//! drover local --agents 1 --agent-resources 'cpus:16;mem:8192' &
//! cargo run --release -p drover-bench --bin docker-bench -- --containers 100
//! ```

use std::collections::{HashMap, VecDeque};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use drover_containerizer::docker::testing::TestImage;
use drover_sdk::proto::pb::{self, TaskState};
use drover_sdk::proto::states::is_terminal;
use drover_sdk::{
    async_trait, Driver, OfferPacker, Scheduler, SchedulerConfig, TaskBuilder, TaskRequest,
};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Masters, HOST:PORT[,…] (default: DROVER_MASTER, else 127.0.0.1:5050).
    #[arg(long)]
    master: Option<String>,
    /// Containers started side by side, through Drover and then directly.
    #[arg(long, default_value_t = 100)]
    containers: usize,
    /// Tasks run one at a time for the accept-to-RUNNING latency (0 skips it).
    #[arg(long, default_value_t = 50)]
    latency_tasks: usize,
    /// An image already in the engine; default: a busybox image imported for the run.
    #[arg(long)]
    image: Option<String>,
    /// Repeat the Drover and direct runs this many times (alternating).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// CPUs of every container, on both sides. Keep it at 0.1 or more: the CFS quota
    /// applies from the container's first instruction, and under 0.05 cpus the runtime's
    /// own start-up inside the container takes about a second.
    #[arg(long, default_value_t = 0.1)]
    cpus: f64,
    /// Memory of every container in MB, on both sides.
    #[arg(long, default_value_t = 16.0)]
    mem: f64,
}

struct Bench {
    cpus: f64,
    mem: f64,
    image: String,
    cmd: String,
    total: usize,
    /// At most this many tasks launched and not yet ended (latency mode: 1).
    in_flight: Option<usize>,
    pending: VecDeque<usize>,
    accepted_at: HashMap<String, Instant>,
    latencies: Vec<Duration>,
    running: usize,
    ended: usize,
    failed: usize,
    first_accept: Option<Instant>,
    all_running: Option<Instant>,
    framework_id: Option<String>,
}

impl Bench {
    fn new(args: &Args, image: &str, cmd: &str, total: usize, in_flight: Option<usize>) -> Bench {
        Bench {
            cpus: args.cpus,
            mem: args.mem,
            image: image.to_string(),
            cmd: cmd.to_string(),
            total,
            in_flight,
            pending: (0..total).collect(),
            accepted_at: HashMap::new(),
            latencies: Vec::new(),
            running: 0,
            ended: 0,
            failed: 0,
            first_accept: None,
            all_running: None,
            framework_id: None,
        }
    }
}

/// The bench, readable after `drover_sdk::run` has consumed its scheduler.
#[derive(Clone)]
struct Shared(Arc<tokio::sync::Mutex<Bench>>);

impl Shared {
    fn new(bench: Bench) -> Shared {
        Shared(Arc::new(tokio::sync::Mutex::new(bench)))
    }
}

#[async_trait]
impl Scheduler for Shared {
    async fn offers(&mut self, driver: &Driver, offers: Vec<pb::Offer>) {
        self.0.lock().await.offers(driver, offers).await
    }

    async fn update(&mut self, driver: &Driver, status: pb::TaskStatus) {
        self.0.lock().await.update(driver, status).await
    }
}

impl Bench {
    async fn offers(&mut self, driver: &Driver, offers: Vec<pb::Offer>) {
        self.framework_id = driver.framework_id().map(|f| f.to_string());
        let request = TaskRequest::new(self.cpus, self.mem);
        let room = self
            .in_flight
            .map_or(usize::MAX, |n| n.saturating_sub(self.accepted_at.len()));
        let (image, cmd) = (self.image.clone(), self.cmd.clone());
        let packing = OfferPacker::new().max_tasks(room).pack(
            offers,
            &mut self.pending,
            |_| request,
            |i, offer, resources| {
                let mut task = TaskBuilder::new(format!("docker-bench-{i}"))
                    .shell(cmd.clone())
                    .offer(offer)
                    .resources(&resources)
                    .build();
                task.container = Some(pb::ContainerInfo {
                    r#type: pb::container_info::Type::Docker as i32,
                    docker: Some(pb::container_info::Docker {
                        image: image.clone(),
                    }),
                    ..Default::default()
                });
                task
            },
        );
        let filters = pb::Filters {
            refuse_seconds: Some(0.0),
        };
        for (offer_id, tasks) in packing.launches {
            let now = Instant::now();
            self.first_accept.get_or_insert(now);
            for t in &tasks {
                let id = t.task_id.clone().unwrap_or_default().to_string();
                self.accepted_at.insert(id, now);
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
        let refuse = if self.in_flight.is_some() { 0.0 } else { 1.0 };
        let _ = driver.decline(packing.unused, Some(refuse)).await;
    }

    async fn update(&mut self, driver: &Driver, status: pb::TaskStatus) {
        let id = status.task_id.clone().unwrap_or_default().to_string();
        let state = status.state();
        if state == TaskState::TaskRunning {
            if let Some(at) = self.accepted_at.get(&id) {
                self.latencies.push(at.elapsed());
                self.running += 1;
            }
            if self.in_flight.is_none() && self.running == self.total {
                self.all_running = Some(Instant::now());
                // Everything runs: the burst is measured; the teardown kills them all.
                let _ = driver.teardown().await;
            }
        }
        if is_terminal(state) && self.accepted_at.remove(&id).is_some() {
            self.ended += 1;
            if state != TaskState::TaskFinished {
                self.failed += 1;
                eprintln!("{id}: {:?} {}", state, status.message);
            }
            if self.in_flight.is_some() && self.ended == self.total {
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

fn config(args: &Args, name: &str) -> anyhow::Result<SchedulerConfig> {
    let mut builder = SchedulerConfig::builder(name);
    if let Some(m) = &args.master {
        builder = builder.masters(drover_sdk::parse_masters(m)?);
    }
    Ok(builder.build()?)
}

fn docker_ids(filter: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", filter])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Through Drover: seconds from the first ACCEPT until every container runs.
async fn through_drover(args: &Args, image: &str) -> anyhow::Result<f64> {
    let shared = Shared::new(Bench::new(args, image, "sleep 600", args.containers, None));
    // Runs until the teardown that follows the last RUNNING.
    if let Err(e) = drover_sdk::run(config(args, "docker-bench")?, shared.clone()).await {
        eprintln!("framework: {e}");
    }
    let bench = shared.0.lock().await;
    let secs = match (bench.first_accept, bench.all_running) {
        (Some(a), Some(z)) => (z - a).as_secs_f64(),
        _ => anyhow::bail!(
            "only {} of {} containers reached RUNNING ({} failed)",
            bench.running,
            args.containers,
            bench.failed
        ),
    };
    // Wait until the teardown's kills have removed every container.
    if let Some(fw) = &bench.framework_id {
        let filter = format!("label=drover.framework-id={fw}");
        for _ in 0..1200 {
            if docker_ids(&filter).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(secs)
}

/// Directly: seconds until `containers` parallel `docker run -d` have all returned.
fn directly(args: &Args, image: &str) -> anyhow::Result<f64> {
    let label = format!("drover-bench-direct={}", std::process::id());
    // The limits the docker containerizer sets for the same resources.
    let mem = format!("{}", (args.mem * 1024.0 * 1024.0).round() as u64);
    let cpus = format!("{}", args.cpus);
    let shares = format!("{}", ((args.cpus * 1024.0).round() as u64).max(2));
    let start = Instant::now();
    let children: Vec<_> = (0..args.containers)
        .map(|_| {
            Command::new("docker")
                .args(["run", "-d", "--network", "host", "--init", "-m", &mem])
                .args([
                    "--memory-swap",
                    &mem,
                    "--cpus",
                    &cpus,
                    "--cpu-shares",
                    &shares,
                ])
                .args(["--label", &label, image])
                .args(["sleep", "600"])
                .stdout(Stdio::null())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut failed = 0;
    for mut c in children {
        if !c.wait()?.success() {
            failed += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let ids = docker_ids(&format!("label={label}"));
    if !ids.is_empty() {
        Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .stdout(Stdio::null())
            .status()?;
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} docker run commands failed", args.containers);
    }
    Ok(secs)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _imported;
    let image = match &args.image {
        Some(i) => i.clone(),
        None => {
            let imported = TestImage::import().map_err(|e| anyhow::anyhow!(e))?;
            let name = imported.name.clone();
            _imported = imported;
            name
        }
    };
    println!(
        "image: {image}; {} containers side by side",
        args.containers
    );
    let mut drover = Vec::new();
    let mut direct = Vec::new();
    for round in 1..=args.rounds {
        let d = through_drover(&args, &image).await?;
        println!("round {round}: through Drover: {d:.2} s from first ACCEPT to all RUNNING");
        let x = directly(&args, &image)?;
        println!(
            "round {round}: docker run -d x{}: {x:.2} s until all returned",
            args.containers
        );
        drover.push(d);
        direct.push(x);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "mean: through Drover {:.2} s, directly {:.2} s, ratio {:.2}",
        mean(&drover),
        mean(&direct),
        mean(&drover) / mean(&direct)
    );

    if args.latency_tasks > 0 {
        let shared = Shared::new(Bench::new(
            &args,
            &image,
            "true",
            args.latency_tasks,
            Some(1),
        ));
        let cfg = config(&args, "docker-bench-latency")?;
        if let Err(e) = drover_sdk::run(cfg, shared.clone()).await {
            eprintln!("framework: {e}");
        }
        let bench = shared.0.lock().await;
        let mut l = bench.latencies.clone();
        l.sort();
        println!(
            "accept-to-RUNNING, one DOCKER task at a time: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples, {} failed)",
            pct(&l, 0.5),
            pct(&l, 0.99),
            pct(&l, 1.0),
            l.len(),
            bench.failed
        );
    }
    Ok(())
}
