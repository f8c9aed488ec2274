//! `drover-batch`: runs a job of N copies of one shell command on a Drover cluster, to
//! completion, rerunning failed tasks up to a limit.
//!
//! ```text
//! drover-batch --master m1:5050,m2:5050 --tasks 100 --cpus 0.5 --mem 256 -- ./work.sh
//! ```
//!
//! Each task sees `DROVER_TASK_INDEX` (0-based) and `DROVER_JOB_NAME`; task ids are
//! `<job>-<index>-<attempt>`. Exit status: 0 when every task finished, 1 when a task ran
//! out of retries (or the framework could not run), 130 when interrupted.
//!
//! Module map:
//! - [`job`]: the pure, unit-tested state machine (pending, in flight, finished, retries,
//!   duplicates, parallelism).
//! - [`framework`]: [`framework::Batch`], which feeds the SDK's events (offers, updates)
//!   to the job and carries out its decisions.
//! - this file: flags, the event loop (`drover_sdk::subscribe`'s events, progress ticks
//!   and Ctrl-C in one `select!`), the summary and the exit status.

mod framework;
mod job;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use drover_sdk::proto::ids::validate_id;
use drover_sdk::{subscribe, Driver, Event, RunOutcome, SchedulerConfig, StreamExt as _};
use drover_sdk::{SdkError, TaskRequest};

use framework::Batch;
use job::{Job, JobSpec};

/// Runs a job of N copies of one shell command on a Drover cluster, to completion.
#[derive(Parser, Debug)]
#[command(name = "drover-batch", version)]
struct Args {
    /// Masters to try, HOST:PORT[,HOST:PORT...]; any of them will do.
    #[arg(long, env = "DROVER_MASTER", default_value = "127.0.0.1:5050")]
    master: String,

    /// Number of tasks in the job.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    tasks: u32,

    /// CPUs per task.
    #[arg(long, default_value_t = 0.1)]
    cpus: f64,

    /// Memory per task, in MB.
    #[arg(long, default_value_t = 32.0)]
    mem: f64,

    /// Disk per task, in MB.
    #[arg(long, default_value_t = 0.0)]
    disk: f64,

    /// Reruns allowed per task after its first attempt fails.
    #[arg(long, default_value_t = 3)]
    max_retries: u32,

    /// Job name: the framework's name and the prefix of task ids.
    #[arg(long, default_value = "batch")]
    name: String,

    /// Role whose resources the job uses.
    #[arg(long, default_value = "*")]
    role: String,

    /// Most tasks in flight at once (default: as many as the offers allow).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    parallelism: Option<u32>,

    /// Seconds the master keeps the job's tasks if this program dies or loses the
    /// masters; long enough to ride out a master failover, short enough not to leave
    /// orphans around for long.
    #[arg(long, default_value_t = 600)]
    failover_timeout_secs: u64,

    /// The command each task runs (under /bin/sh -c; words are joined with spaces).
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drover-batch: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_job(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("drover-batch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_job(args: Args) -> anyhow::Result<u8> {
    validate_id("job", &args.name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    if !(args.cpus > 0.0 && args.cpus.is_finite()) {
        bail!("--cpus must be a positive number");
    }
    if !(args.mem >= 0.0 && args.disk >= 0.0 && args.mem.is_finite() && args.disk.is_finite()) {
        bail!("--mem and --disk must be non-negative numbers");
    }
    if args.failover_timeout_secs == 0 {
        bail!("--failover-timeout-secs must be positive: zero kills the job's tasks on any master failover");
    }
    let failover = Duration::from_secs(args.failover_timeout_secs);
    let config = SchedulerConfig::builder(args.name.clone())
        .masters([args.master.as_str()])
        .role(args.role.clone())
        .failover_timeout(failover)
        // Past the failover timeout the master has removed the framework anyway.
        .reconnect_timeout(Some(failover))
        .build()?;

    let spec = JobSpec {
        name: args.name.clone(),
        tasks: args.tasks as usize,
        max_retries: args.max_retries,
        parallelism: args.parallelism.map(|p| p as usize),
    };
    let request = TaskRequest::new(args.cpus, args.mem).with_disk(args.disk);
    let command = args.command.join(" ");
    println!(
        "[batch] job {}: {} x `{command}` ({request} each, up to {} retries) on {}",
        args.name,
        args.tasks,
        args.max_retries,
        config.masters().join(",")
    );

    let mut batch = Batch::new(Job::new(spec), command, request);
    let (driver, mut events) = subscribe(config);
    // Progress lines at most once a second, when the counts changed.
    let period = Duration::from_secs(1);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut interrupted = false;
    let result: Result<RunOutcome, SdkError> = loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Event::Ended(result)) => break result,
                Some(event) => batch.handle(&driver, event).await,
                // The stream always ends with `Ended`.
                None => break Ok(RunOutcome::Stopped),
            },
            _ = tick.tick() => {
                if let Some(line) = batch.progress_line() {
                    println!("{line}");
                }
            }
            signal = &mut ctrl_c, if !interrupted => {
                if signal.is_ok() {
                    interrupted = true;
                    interrupt(&mut batch, &driver).await;
                }
            }
        }
    };

    if let Some(line) = batch.progress_line() {
        println!("{line}");
    }
    let progress = batch.job.progress();
    if interrupted {
        eprintln!("drover-batch: interrupted; the job's running tasks were killed");
        return Ok(130);
    }
    let outcome = result.context("the job could not run to its end")?;
    if batch.job.succeeded() {
        println!(
            "[batch] job {} succeeded: {} tasks finished, {} failed attempt(s) rerun",
            args.name, progress.total, progress.failed
        );
        if outcome == RunOutcome::Stopped {
            eprintln!("drover-batch: warning: the framework could not be torn down; the master removes it after the failover timeout");
        }
        return Ok(0);
    }
    for (index, task_id, why) in batch.job.exhausted() {
        eprintln!(
            "drover-batch: task {index} failed {} time(s); last attempt {task_id}: {why}",
            args.max_retries + 1
        );
    }
    bail!(
        "job {} failed: {} of {} tasks finished before a task ran out of retries (--max-retries {})",
        args.name,
        progress.finished,
        progress.total,
        args.max_retries
    )
}

/// On Ctrl-C: tear the framework down (which kills the running tasks), which ends the
/// event stream.
async fn interrupt(batch: &mut Batch, driver: &Driver) {
    eprintln!("[batch] interrupted: tearing the job down");
    batch.finishing = true;
    if batch.framework_id.is_none() {
        std::process::exit(130); // never subscribed: nothing to clean up
    }
    if let Err(e) = driver.teardown().await {
        eprintln!("drover-batch: teardown failed ({e}); the master kills the tasks after the failover timeout");
        driver.stop();
    }
}
