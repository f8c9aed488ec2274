//! `drover-testfw`: the framework the cluster tests drive, built on the public SDK only.
//!
//! It runs `--tasks N` tasks of one shell command (or, with `--duration-secs`, keeps
//! launching until the deadline), reruns tasks that end FAILED/LOST/DROPPED/ERROR/GONE up to
//! `--max-attempts`, and writes a JSON report of what it observed (see
//! `drover_tests::Report`): final states, terminal updates per task (duplicates included),
//! acknowledgements, exit codes and resource-seconds. Task ids are `<name>-<index>-<attempt>`.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use drover_sdk::proto::pb::{self, TaskState};
use drover_sdk::proto::states::{is_terminal, name};
use drover_sdk::{
    async_trait, Driver, OfferPacker, Scheduler, SchedulerConfig, TaskBuilder, TaskRequest,
};
use drover_tests::Report;

#[derive(Parser, Debug, Clone)]
struct Args {
    #[arg(long)]
    master: String,
    #[arg(long)]
    name: String,
    #[arg(long, default_value = "*")]
    role: String,
    #[arg(long)]
    report: PathBuf,
    #[arg(long)]
    run_log: PathBuf,
    /// Tasks to run to completion (ignored with --duration-secs).
    #[arg(long, default_value_t = 10)]
    tasks: usize,
    /// Keep launching until this many seconds have passed, then finish what runs.
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Keep launching until this Unix time (seconds), then finish what runs. Lets several
    /// frameworks share one deadline.
    #[arg(long)]
    until_unix_secs: Option<f64>,
    /// Shell command; RUN_LOG and the DROVER_* variables are in its environment.
    #[arg(long, default_value = "echo $JOB_INDEX >> $RUN_LOG")]
    cmd: String,
    #[arg(long, default_value_t = 0.1)]
    cpus: f64,
    #[arg(long, default_value_t = 16.0)]
    mem: f64,
    #[arg(long, default_value_t = 5)]
    max_attempts: usize,
    #[arg(long)]
    partition_aware: bool,
    #[arg(long, default_value_t = 3600.0)]
    failover_timeout_secs: f64,
    /// refuse_seconds for declines and for what launches leave over.
    #[arg(long, default_value_t = 1.0)]
    refuse_secs: f64,
    /// Resubscribe with this framework id and adopt its running tasks instead of launching
    /// new ones; finish when every adopted task has ended.
    #[arg(long)]
    adopt_framework_id: Option<String>,
    /// At most this many tasks in flight.
    #[arg(long)]
    max_in_flight: Option<usize>,
}

struct TestFw {
    args: Args,
    pending: VecDeque<(usize, usize)>,
    attempts: HashMap<usize, usize>,
    done: HashMap<usize, bool>,
    in_flight: HashMap<String, usize>,
    running_since: HashMap<String, f64>,
    report: Report,
    deadline: Option<Instant>,
    next_index: usize,
    failed_for_good: usize,
    /// Launches whose ACCEPT failed: committed or not, only reconciliation can tell.
    uncertain: Vec<String>,
}

impl TestFw {
    fn finished(&self) -> bool {
        if self.args.adopt_framework_id.is_some() {
            return !self.report.launches.is_empty() && self.in_flight.is_empty();
        }
        let launching_over = match self.deadline {
            Some(d) => Instant::now() >= d,
            None => self.done.len() + self.failed_for_good >= self.args.tasks,
        };
        launching_over && self.in_flight.is_empty()
    }

    fn write_report(&self) {
        let text = serde_json::to_string_pretty(&self.report).expect("report");
        let tmp = self.args.report.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write report");
        std::fs::rename(&tmp, &self.args.report).expect("rename report");
    }

    async fn reconcile_uncertain(&mut self, driver: &Driver) {
        if self.uncertain.is_empty() {
            return;
        }
        let tasks = self
            .uncertain
            .iter()
            .map(|id| (id.as_str().into(), None))
            .collect();
        // Answers to an explicit reconciliation are not acknowledged and die with the
        // stream they travel on (a failover right after the call): a task stays uncertain
        // until an update for it arrives, and is asked about again after every
        // resubscription.
        let _ = driver.reconcile(tasks).await;
    }

    fn refill(&mut self) {
        if let Some(d) = self.deadline {
            // Unlimited demand until the deadline: always have work queued.
            if Instant::now() < d && self.pending.len() < 64 {
                for _ in 0..64 {
                    self.pending.push_back((self.next_index, 0));
                    self.next_index += 1;
                }
            }
            if Instant::now() >= d {
                self.pending.clear();
            }
        }
    }
}

#[async_trait]
impl Scheduler for TestFw {
    async fn subscribed(
        &mut self,
        driver: &Driver,
        framework_id: drover_sdk::proto::FrameworkId,
        resubscribed: bool,
    ) {
        self.report.framework_id = framework_id.to_string();
        if resubscribed {
            self.report.resubscriptions += 1;
        }
        self.write_report();
        self.reconcile_uncertain(driver).await;
        eprintln!(
            "testfw {}: subscribed as {framework_id} (resubscribed: {resubscribed})",
            self.args.name
        );
    }

    async fn offers(&mut self, driver: &Driver, offers: Vec<pb::Offer>) {
        self.refill();
        let room = self
            .args
            .max_in_flight
            .map(|m| m.saturating_sub(self.in_flight.len()))
            .unwrap_or(usize::MAX);
        let request = TaskRequest::new(self.args.cpus, self.args.mem);
        let name = self.args.name.clone();
        let cmd = self.args.cmd.clone();
        let run_log = self.args.run_log.display().to_string();
        let packing = OfferPacker::new().max_tasks(room).pack(
            offers,
            &mut self.pending,
            |_| request,
            |(index, attempt), offer, resources| {
                TaskBuilder::new(format!("{name}-{index}-{attempt}"))
                    .name(format!("{name} #{index}"))
                    .shell(cmd.clone())
                    .env("RUN_LOG", run_log.clone())
                    .env("JOB_INDEX", index.to_string())
                    .offer(offer)
                    .resources(&resources)
                    .build()
            },
        );
        let filters = pb::Filters {
            refuse_seconds: Some(self.args.refuse_secs),
        };
        for (offer_id, tasks) in packing.launches {
            let ids: Vec<(String, usize)> = tasks
                .iter()
                .map(|t| {
                    let id = t.task_id.clone().unwrap_or_default().to_string();
                    let index = id
                        .split('-')
                        .rev()
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    (id, index)
                })
                .collect();
            let op = pb::Operation {
                r#type: pb::operation::Type::Launch as i32,
                launch: Some(pb::operation::Launch {
                    task_infos: tasks.clone(),
                }),
                ..Default::default()
            };
            match driver.accept(vec![offer_id], vec![op], filters).await {
                Ok(()) => {
                    for (id, index) in ids {
                        *self.report.launches.entry(index.to_string()).or_default() += 1;
                        self.in_flight.insert(id, index);
                    }
                }
                Err(e) => {
                    // The launch may or may not have been committed (the master may have
                    // failed over mid-call): never relaunch blindly. Keep the tasks in
                    // flight and reconcile them; an unknown task comes back LOST and is
                    // rerun then.
                    eprintln!("testfw {}: accept failed: {e}; reconciling", self.args.name);
                    for (id, index) in ids {
                        self.in_flight.insert(id.clone(), index);
                        self.uncertain.push(id);
                    }
                    self.reconcile_uncertain(driver).await;
                }
            }
        }
        if !packing.unused.is_empty() {
            let _ = driver
                .decline(packing.unused, Some(self.args.refuse_secs))
                .await;
        }
    }

    async fn update(&mut self, driver: &Driver, status: pb::TaskStatus) {
        self.report.updates += 1;
        if let Some(task_id) = &status.task_id {
            let id = task_id.to_string();
            self.uncertain.retain(|u| *u != id);
        }
        if !status.uuid.is_empty() {
            self.report.acknowledged += 1;
        }
        let id = status.task_id.clone().unwrap_or_default().to_string();
        let state = drover_sdk::proto::states::from_i32(status.state);
        if state == TaskState::TaskRunning {
            self.running_since
                .entry(id.clone())
                .or_insert(status.timestamp);
        }
        if self.args.adopt_framework_id.is_some()
            && !is_terminal(state)
            && !self.in_flight.contains_key(&id)
        {
            // Reconciliation tells a resubscribed framework which tasks it still has.
            if let Some(index) = id.rsplit('-').nth(1).and_then(|s| s.parse().ok()) {
                eprintln!("testfw {}: adopted {id} ({})", self.args.name, name(state));
                self.in_flight.insert(id.clone(), index);
                self.report.launches.entry(index.to_string()).or_default();
            }
        }
        if !is_terminal(state) {
            return;
        }
        *self.report.terminal_updates.entry(id.clone()).or_default() += 1;
        self.report
            .final_states
            .insert(id.clone(), name(state).to_string());
        if let Some(code) = status.exit_code {
            self.report.exit_codes.insert(id.clone(), code);
        }
        let Some(index) = self.in_flight.remove(&id) else {
            // A duplicate or a reconciliation answer for a task already settled.
            return;
        };
        if let Some(start) = self.running_since.remove(&id) {
            // With a shared deadline, count only time before it: frameworks whose last
            // tasks happen to straddle the deadline would otherwise look unequal.
            let end = match self.args.until_unix_secs {
                Some(until) => status.timestamp.min(until),
                None => status.timestamp,
            };
            self.report.cpu_seconds += self.args.cpus * (end - start).max(0.0);
        }
        eprintln!(
            "testfw {}: {id} {} {}",
            self.args.name,
            name(state),
            status.message
        );
        match state {
            TaskState::TaskFinished => {
                self.done.insert(index, true);
            }
            TaskState::TaskKilled if self.deadline.is_some() => {}
            _ => {
                let attempt = self.attempts.entry(index).or_insert(0);
                *attempt += 1;
                if *attempt < self.args.max_attempts {
                    let a = *attempt;
                    self.pending.push_back((index, a));
                    let _ = driver.revive().await;
                } else {
                    self.failed_for_good += 1;
                }
            }
        }
        self.write_report();
        if self.finished() {
            eprintln!("testfw {}: all done", self.args.name);
            let _ = driver.teardown().await;
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut builder = SchedulerConfig::builder(args.name.clone());
    if let Some(id) = &args.adopt_framework_id {
        builder = builder.framework_id(id.as_str().into());
    }
    let config = builder
        .masters(drover_sdk::parse_masters(&args.master)?)
        .role(args.role.clone())
        .partition_aware(args.partition_aware)
        .failover_timeout(Duration::from_secs_f64(args.failover_timeout_secs))
        .build()?;
    let deadline = match (args.duration_secs, args.until_unix_secs) {
        (_, Some(until)) => {
            let left = until - drover_sdk::proto::unix_seconds();
            Some(Instant::now() + Duration::from_secs_f64(left.max(0.0)))
        }
        (Some(s), None) => Some(Instant::now() + Duration::from_secs_f64(s)),
        (None, None) => None,
    };
    let fw = TestFw {
        pending: if deadline.is_some() || args.adopt_framework_id.is_some() {
            VecDeque::new()
        } else {
            (0..args.tasks).map(|i| (i, 0)).collect()
        },
        args: args.clone(),
        attempts: HashMap::new(),
        done: HashMap::new(),
        in_flight: HashMap::new(),
        running_since: HashMap::new(),
        report: Report::default(),
        deadline,
        next_index: 0,
        failed_for_good: 0,
        uncertain: Vec::new(),
    };
    fw.write_report();
    let outcome = drover_sdk::run(config, fw).await?;
    eprintln!("testfw {}: {outcome:?}", args.name);
    Ok(())
}
