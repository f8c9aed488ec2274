//! `drover run -- CMD`: runs one command on the cluster, like `mesos-execute`, as a small
//! framework of its own on the SDK.
//!
//! It subscribes, waits for an offer that fits (saying every 10 s what it waits for and
//! what the cluster offers), launches one task, follows the task's `stdout` and `stderr`
//! from the agent's files API onto its own, prints the final state to stderr
//! (`drover: task … FINISHED (exit 0)`), tears the framework down and exits with the
//! task's exit code.
//!
//! Exit codes besides the task's own: 124 when `--timeout-secs` passed, 125 when the task
//! could not run (TASK_ERROR, LOST, DROPPED, GONE, UNKNOWN), 130 when interrupted.
//!
//! One loop does it all: [`run`] selects over the SDK's events (handed to
//! [`RunScheduler::handle`]), a 250 ms watchdog tick (notices, `--timeout-secs`) and
//! Ctrl-C, so the state needs no lock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use drover_sdk::offers::closest_offer;
use drover_sdk::proto::pb::{self, TaskState};
use drover_sdk::proto::{states, AgentId, FrameworkId, Resources, TaskId};
use drover_sdk::{AgentFiles, Driver, Event, OfferPacker, RunOutcome, StreamExt as _};
use drover_sdk::{CheckBuilder, SchedulerConfig, TaskBuilder, TaskRequest};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::watch;

/// Exit code when `--timeout-secs` passed (as `timeout(1)` does).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit code when the task could not run at all (as `docker run` does).
pub const EXIT_NOT_RUN: i32 = 125;
/// Exit code after Ctrl-C.
pub const EXIT_INTERRUPTED: i32 = 130;

/// How often to say what `drover run` is waiting for.
const WAITING_NOTICE: Duration = Duration::from_secs(10);
/// How often to poll the agent for new output while the task runs.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);
/// After a timeout, how long the task may take to die before the framework is torn down.
const KILL_GRACE: Duration = Duration::from_secs(30);
/// How long the master keeps the task if this command dies: long enough for a master
/// failover, short enough that an abandoned `drover run` does not leave work behind.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(300);
/// How long to look for a leading master before giving up.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags of `drover run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// CPUs for the task.
    #[arg(long, default_value_t = 0.1)]
    pub cpus: f64,

    /// Memory for the task, in MB.
    #[arg(long, default_value_t = 32.0)]
    pub mem: f64,

    /// Disk for the task, in MB.
    #[arg(long, default_value_t = 0.0)]
    pub disk: f64,

    /// Name of the task and of its framework [default: drover-run].
    #[arg(long)]
    pub name: Option<String>,

    /// Role whose resources the task uses.
    #[arg(long, default_value = "*")]
    pub role: String,

    /// An environment variable for the task, NAME=VALUE (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// Give up after this many seconds: kill the task and exit with 124.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_secs: Option<u64>,

    /// Which containerizer runs the task on its agent: 'docker' (a Docker container from
    /// --image, which must already be in the agent's Docker engine: nothing is pulled),
    /// 'linux' (namespaces and cgroups; --image, if given, names an image in the agent's
    /// local image store) or 'process' (a plain process, no isolation). Default: the
    /// agent's choice.
    #[arg(long, value_enum, value_name = "NAME")]
    pub containerizer: Option<ContainerizerChoice>,

    /// The image the task runs in (with --containerizer docker or linux). With docker
    /// the command may be left out to run the image's own.
    #[arg(long, value_name = "NAME")]
    pub image: Option<String>,

    /// A health check: this shell command runs inside the task's container (15 s after
    /// it started, then every 10 s); after 3 failures in a row (past a 10 s grace period)
    /// the task is killed as unhealthy.
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,

    /// The command. A single argument runs under /bin/sh -c ('echo $HOME | wc -c');
    /// several run directly as an argument vector, without a shell. Optional with
    /// --containerizer docker, which then runs the image's own command.
    #[arg(
        required_unless_present = "image",
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

/// `--containerizer`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerizerChoice {
    Docker,
    Linux,
    Process,
}

impl RunArgs {
    /// The task's `ContainerInfo`, or why the flags do not fit together.
    pub fn container_info(&self) -> Result<Option<pb::ContainerInfo>, String> {
        use pb::container_info::Type;
        let image = self
            .image
            .as_deref()
            .map(str::trim)
            .filter(|i| !i.is_empty());
        if self.image.is_some() && image.is_none() {
            return Err("--image is empty".into());
        }
        let info = match (self.containerizer, image) {
            (None, None) => return Ok(None),
            (None, Some(_)) => {
                return Err(
                    "--image needs --containerizer docker (a Docker image) or linux (an image \
                     of the agent's image store)"
                        .into(),
                )
            }
            (Some(ContainerizerChoice::Docker), None) => {
                return Err("--containerizer docker needs --image NAME".into())
            }
            (Some(ContainerizerChoice::Process), Some(_)) => {
                return Err("--containerizer process runs no image; leave --image out".into())
            }
            (Some(ContainerizerChoice::Docker), Some(image)) => pb::ContainerInfo {
                r#type: Type::Docker as i32,
                docker: Some(pb::container_info::Docker {
                    image: image.to_string(),
                }),
                ..Default::default()
            },
            (Some(ContainerizerChoice::Linux), image) => pb::ContainerInfo {
                r#type: Type::Linux as i32,
                image: image.map(|name| pb::Image {
                    name: name.to_string(),
                }),
                ..Default::default()
            },
            (Some(ContainerizerChoice::Process), None) => pb::ContainerInfo {
                r#type: Type::Process as i32,
                ..Default::default()
            },
        };
        // An image (Docker's, or one of the agent's store for linux) brings its own
        // command; anything else needs one.
        let runs_image = info.r#type == Type::Docker as i32 || info.image.is_some();
        if self.command.is_empty() && !runs_image {
            return Err("a command is required unless --image runs the image's own".into());
        }
        Ok(Some(info))
    }
}

/// Parses `NAME=VALUE`.
fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() && !name.contains(char::is_whitespace) => {
            Ok((name.to_string(), value.to_string()))
        }
        _ => Err(format!("'{text}' is not NAME=VALUE")),
    }
}

/// A task id from a name: keeps the characters ids allow, adds a random suffix.
fn task_id_for(name: &str) -> TaskId {
    let base: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    let base = base.trim_matches('.');
    let suffix = &TaskId::random().to_string()[..8];
    TaskId::new(format!(
        "{}-{suffix}",
        if base.is_empty() { "run" } else { base }
    ))
}

/// Exit code and final line for a terminal update.
fn final_report(status: &pb::TaskStatus, timed_out: bool, interrupted: bool) -> (i32, String) {
    let state = status.state();
    let task = status.task_id.clone().unwrap_or_default();
    let name = states::name(state);
    let message = if status.message.is_empty() {
        String::new()
    } else {
        format!(": {}", status.message)
    };
    let exit = status.exit_code;
    match state {
        TaskState::TaskFinished => {
            let code = exit.unwrap_or(0);
            (code, format!("task {task} {name} (exit {code})"))
        }
        TaskState::TaskFailed => {
            // A failure always exits non-zero, even when no exit code was recorded.
            let code = exit.filter(|c| *c != 0).unwrap_or(1);
            let shown = exit.map_or("no exit code".to_string(), |c| format!("exit {c}"));
            (code, format!("task {task} {name} ({shown}){message}"))
        }
        TaskState::TaskKilled if timed_out => (
            EXIT_TIMEOUT,
            format!("task {task} {name} after the timeout"),
        ),
        TaskState::TaskKilled if interrupted => (
            EXIT_INTERRUPTED,
            format!("task {task} {name} (interrupted)"),
        ),
        TaskState::TaskKilled => {
            let code = exit.filter(|c| *c != 0).unwrap_or(137);
            (code, format!("task {task} {name}{message}"))
        }
        _ => {
            let reason = pb::task_status::Reason::try_from(status.reason)
                .ok()
                .filter(|r| *r != pb::task_status::Reason::Unspecified)
                .map(|r| format!(" [{}]", r.as_str_name()))
                .unwrap_or_default();
            (
                EXIT_NOT_RUN,
                format!("task {task} could not run: {name}{message}{reason}"),
            )
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for an offer that fits.
    Waiting,
    /// Launched; waiting for the task to end.
    Launched,
    /// The task ended (or the run was given up): tearing down.
    Done,
}

/// The launched task.
#[derive(Debug, Clone)]
struct Launched {
    task_id: TaskId,
    agent_id: AgentId,
    address: String,
}

/// Polls the agent for output while the task runs; told to stop, reads to the end.
struct Follower {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

/// What the event handlers and the watchdog both look at.
struct Shared {
    phase: Phase,
    /// Set by the first SUBSCRIBED: until then no master knows the framework.
    framework_id: Option<FrameworkId>,
    task: Option<Launched>,
    offers_seen: usize,
    closest: Option<pb::Offer>,
    result: Option<i32>,
    timed_out: bool,
    interrupted: bool,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            phase: Phase::Waiting,
            framework_id: None,
            task: None,
            offers_seen: 0,
            closest: None,
            result: None,
            timed_out: false,
            interrupted: false,
        }
    }
}

/// The scheduler of `drover run`: the state of the run and the handlers of its events.
struct RunScheduler {
    shared: Shared,
    request: TaskRequest,
    task_id: TaskId,
    args: RunArgs,
    follower: Option<Follower>,
}

impl RunScheduler {
    fn build_task(&self, offer: &pb::Offer, resources: &Resources) -> pb::TaskInfo {
        let name = self
            .args
            .name
            .clone()
            .unwrap_or_else(|| "drover-run".into());
        let mut task = TaskBuilder::new(self.task_id.clone()).name(name);
        task = if self.args.command.len() == 1 {
            task.shell(self.args.command[0].clone())
        } else {
            task.argv(self.args.command.iter().cloned())
        };
        for (k, v) in &self.args.env {
            task = task.env(k.clone(), v.clone());
        }
        if let Some(cmd) = &self.args.health_cmd {
            // Zeros: the agent's defaults for timing, grace and failures.
            task = task.health_check(CheckBuilder::shell(cmd.clone()), Duration::ZERO, 0);
        }
        let mut task = task.offer(offer).resources(resources).build();
        // Checked by `run` before anything was sent.
        task.container = self.args.container_info().unwrap_or_default();
        task
    }

    fn start_follower(&mut self) {
        if self.follower.is_some() {
            return;
        }
        let (Some(task), Some(fw)) = (self.shared.task.clone(), self.shared.framework_id.clone())
        else {
            return;
        };
        let (stop, rx) = watch::channel(false);
        let handle = tokio::spawn(follow_output(task.address, fw, task.task_id, rx));
        self.follower = Some(Follower { stop, handle });
    }

    /// Reads what is left of the output, then prints the final line, records the exit
    /// code and tears the framework down.
    async fn finish(&mut self, driver: &Driver, status: &pb::TaskStatus) {
        self.start_follower();
        if let Some(f) = self.follower.take() {
            let _ = f.stop.send(true);
            let _ = f.handle.await;
        }
        let s = &mut self.shared;
        let (code, line) = final_report(status, s.timed_out, s.interrupted);
        s.phase = Phase::Done;
        s.result = Some(code);
        eprintln!("drover: {line}");
        tracing::debug!(code, "task ended");
        teardown(driver).await;
    }
}

/// Tears the framework down. While the driver reconnects, the `subscribed` handler
/// tries again (the phase is `Done`); when it is refused for good, stops the driver so
/// the command ends anyway (the master then removes the framework after its failover
/// timeout).
async fn teardown(driver: &Driver) {
    match driver.teardown().await {
        Ok(()) => {}
        Err(e) if e.is_transient() => {
            eprintln!("drover: cannot tear the framework down yet ({e}); retrying once reconnected")
        }
        Err(e) => {
            eprintln!(
                "drover: could not tear the framework down ({e}); the master removes it within {}s",
                FAILOVER_TIMEOUT.as_secs()
            );
            driver.stop();
        }
    }
}

/// Copies `path` from `*offset` to its current end onto `out`, one chunk at a time (so a
/// huge file never sits in memory), advancing `*offset`.
async fn copy_new(
    files: &mut AgentFiles,
    fw: &FrameworkId,
    task: &TaskId,
    path: &str,
    offset: &mut u64,
    out: &mut (impl tokio::io::AsyncWrite + Unpin),
) -> Result<(), drover_sdk::SdkError> {
    loop {
        let chunk = files.read(fw, task, path, *offset, 0).await?;
        if chunk.data.is_empty() && chunk.size < *offset {
            // The agent rotated the file (copy and truncate): go on from its new start.
            *offset = 0;
            continue;
        }
        if chunk.data.is_empty() {
            return Ok(());
        }
        // A closed pipe on our side must not stop the run: the task's fate still matters.
        let _ = out.write_all(&chunk.data).await;
        let _ = out.flush().await;
        *offset = chunk.offset + chunk.data.len() as u64;
        if *offset >= chunk.size {
            return Ok(());
        }
    }
}

/// What a watchdog tick or Ctrl-C leaves to do.
#[derive(Debug, PartialEq, Eq)]
enum Watch {
    /// Keep watching.
    Continue,
    /// The run is being given up (teardown under way): the watchdog is done.
    Over,
    /// Never subscribed: end the run now, without a framework to tear down.
    Abandon,
}

/// What the watchdog keeps between ticks.
struct Watchdog {
    request: TaskRequest,
    timeout: Option<Duration>,
    started: Instant,
    last_notice: Instant,
}

impl RunScheduler {
    /// Acts on one event of the SDK ([`Event::Ended`] is [`run`]'s).
    async fn handle(&mut self, driver: &Driver, event: Event) {
        match event {
            Event::Subscribed {
                framework_id,
                resubscribed,
            } => self.subscribed(driver, framework_id, resubscribed).await,
            Event::Offers(offers) => self.offers(driver, offers).await,
            Event::Update(status) => self.update(driver, status).await,
            Event::Error(message) => {
                eprintln!("drover: the master reported an error: {message}")
            }
            Event::Disconnected => eprintln!(
                "drover: lost the connection to the master; reconnecting (the task keeps running)"
            ),
            Event::Rescind(_) | Event::Message { .. } | Event::Failure { .. } => {}
            Event::Ended(_) => {}
        }
    }

    /// Ends the run with exit code `code` (unless the task's own result is already known):
    /// tears down, or abandons the run when no master was ever subscribed.
    async fn give_up(&mut self, driver: &Driver, code: i32) -> Watch {
        let s = &mut self.shared;
        s.phase = Phase::Done;
        s.result.get_or_insert(code);
        if s.framework_id.is_none() {
            return Watch::Abandon;
        }
        teardown(driver).await;
        Watch::Over
    }

    /// Ctrl-C: tear down (which kills the task).
    async fn interrupted(&mut self, driver: &Driver) -> Watch {
        eprintln!("drover: interrupted; tearing down (this kills the task)");
        self.shared.interrupted = true;
        self.give_up(driver, EXIT_INTERRUPTED).await
    }

    /// One watchdog tick: says what is being waited for, kills on timeout.
    async fn watch(&mut self, driver: &Driver, dog: &mut Watchdog) -> Watch {
        let (phase, task) = (self.shared.phase, self.shared.task.clone());
        let elapsed = dog.started.elapsed();
        if let Some(limit) = dog.timeout.filter(|l| elapsed >= *l) {
            let already = std::mem::replace(&mut self.shared.timed_out, true);
            match (phase, task) {
                (Phase::Launched, Some(t)) if !already => {
                    eprintln!(
                        "drover: timed out after {}s; killing task {}",
                        limit.as_secs(),
                        t.task_id
                    );
                    // Its KILLED update ends the run, with the output shown.
                    if let Err(e) = driver.kill(t.task_id, Some(t.agent_id)).await {
                        eprintln!("drover: kill failed ({e}); tearing down instead");
                        return self.give_up(driver, EXIT_TIMEOUT).await;
                    }
                }
                // The kill did not take effect in time: removing the framework kills all.
                (Phase::Launched, _) if elapsed >= limit + KILL_GRACE => {
                    return self.give_up(driver, EXIT_TIMEOUT).await;
                }
                (Phase::Waiting, _) => {
                    eprintln!(
                        "drover: timed out after {}s before the task could be launched",
                        limit.as_secs()
                    );
                    return self.give_up(driver, EXIT_TIMEOUT).await;
                }
                _ => {}
            }
        }
        if phase == Phase::Waiting && dog.last_notice.elapsed() >= WAITING_NOTICE {
            dog.last_notice = Instant::now();
            eprintln!("drover: {}", waiting_notice(&self.shared, &dog.request));
        }
        Watch::Continue
    }

    async fn subscribed(&mut self, driver: &Driver, framework_id: FrameworkId, resubscribed: bool) {
        self.shared.framework_id = Some(framework_id.clone());
        let phase = self.shared.phase;
        if resubscribed {
            eprintln!("drover: reconnected to the cluster as framework {framework_id}");
        }
        match phase {
            // Teardown was attempted while disconnected: try again now.
            Phase::Done => teardown(driver).await,
            Phase::Launched if !driver.is_suppressed() => {
                let _ = driver.suppress().await;
            }
            _ => {}
        }
    }

    async fn offers(&mut self, driver: &Driver, offers: Vec<pb::Offer>) {
        if self.shared.phase != Phase::Waiting {
            let ids = offers.into_iter().filter_map(|o| o.id).collect();
            let _ = driver.decline(ids, Some(3600.0)).await;
            if !driver.is_suppressed() {
                let _ = driver.suppress().await;
            }
            return;
        }
        {
            let s = &mut self.shared;
            s.offers_seen += offers.len();
            let mut candidates: Vec<pb::Offer> = offers.clone();
            candidates.extend(s.closest.take());
            s.closest = closest_offer(&candidates, &self.request).cloned();
        }
        let mut pending: VecDeque<()> = VecDeque::from([()]);
        let mut placed: Option<(String, Launched)> = None;
        let request = self.request;
        let packing = OfferPacker::new().pack(
            offers,
            &mut pending,
            |_| request,
            |(), offer, resources| {
                placed = Some((
                    offer.hostname.clone(),
                    Launched {
                        task_id: self.task_id.clone(),
                        agent_id: offer.agent_id.clone().unwrap_or_default(),
                        address: offer.agent_address.clone(),
                    },
                ));
                self.build_task(offer, &resources)
            },
        );
        let _ = driver.decline(packing.unused, Some(5.0)).await;
        let (Some((offer_id, tasks)), Some((host, launched))) =
            (packing.launches.into_iter().next(), placed)
        else {
            return;
        };
        match driver.launch(vec![offer_id], tasks).await {
            Ok(()) => {
                eprintln!("drover: launched task {} on {host}", launched.task_id);
                self.shared.phase = Phase::Launched;
                self.shared.task = Some(launched);
                let _ = driver.suppress().await;
            }
            Err(e) => eprintln!("drover: launching failed ({e}); waiting for another offer"),
        }
    }

    async fn update(&mut self, driver: &Driver, status: pb::TaskStatus) {
        if status.task_id.as_ref() != Some(&self.task_id) || self.shared.phase == Phase::Done {
            return;
        }
        let state = status.state();
        if states::is_terminal(state) {
            self.finish(driver, &status).await;
            return;
        }
        match state {
            TaskState::TaskRunning => {
                if status.reason == pb::task_status::Reason::TaskHealthCheckStatusUpdated as i32 {
                    let verdict = if status.healthy == Some(true) {
                        "healthy"
                    } else {
                        "unhealthy"
                    };
                    eprintln!("drover: the task is {verdict}");
                }
                self.start_follower()
            }
            TaskState::TaskUnreachable => {
                eprintln!("drover: the task's agent is unreachable; waiting for it to come back")
            }
            _ => {}
        }
    }
}

/// Copies the task's `stdout` and `stderr` from its agent onto ours: every
/// [`FOLLOW_INTERVAL`] while the task runs, and once more to the end when told to stop.
async fn follow_output(
    address: String,
    fw: FrameworkId,
    task: TaskId,
    mut stop: watch::Receiver<bool>,
) {
    let mut files: Option<AgentFiles> = None;
    let mut offsets = [0u64; 2];
    loop {
        let last = *stop.borrow_and_update();
        if files.is_none() {
            match AgentFiles::connect(&address).await {
                Ok(f) => files = Some(f),
                Err(e) if last => eprintln!("drover: cannot show the task's output: {e}"),
                Err(_) => {}
            }
        }
        if let Some(f) = files.as_mut() {
            for (i, path) in ["stdout", "stderr"].into_iter().enumerate() {
                let copied = if i == 0 {
                    copy_new(
                        f,
                        &fw,
                        &task,
                        path,
                        &mut offsets[i],
                        &mut tokio::io::stdout(),
                    )
                    .await
                } else {
                    copy_new(
                        f,
                        &fw,
                        &task,
                        path,
                        &mut offsets[i],
                        &mut tokio::io::stderr(),
                    )
                    .await
                };
                match copied {
                    Ok(()) => {}
                    // Not created yet (or never, if the task did not start).
                    Err(e)
                        if e.status()
                            .is_some_and(|s| s.code() == tonic::Code::NotFound) => {}
                    Err(e) if last => eprintln!("drover: cannot read the task's {path}: {e}"),
                    Err(_) => {}
                }
            }
        }
        if last {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            _ = stop.changed() => {}
        }
    }
}

/// "waiting for an offer with …; the largest offer so far was …".
fn waiting_notice(s: &Shared, request: &TaskRequest) -> String {
    if s.framework_id.is_none() {
        return "still looking for the leading master".to_string();
    }
    let offered = match &s.closest {
        None => "no offer has arrived yet (are agents registered? see `drover agents`)".to_string(),
        Some(o) => {
            let resources = drover_sdk::offers::offer_resources(o)
                .map(|r| r.to_string())
                .unwrap_or_default();
            format!(
                "the largest offer so far was {resources} on {} ({} offers seen)",
                if o.hostname.is_empty() {
                    "an agent"
                } else {
                    &o.hostname
                },
                s.offers_seen
            )
        }
    };
    format!("waiting for an offer with {request}; {offered}")
}

/// Runs `args.command` on the cluster at `masters` and returns the exit code to use.
pub async fn run(masters: Vec<String>, args: RunArgs) -> anyhow::Result<i32> {
    for (flag, v) in [
        ("--cpus", args.cpus),
        ("--mem", args.mem),
        ("--disk", args.disk),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            anyhow::bail!("{flag} must be a non-negative number");
        }
    }
    if args.cpus <= 0.0 {
        anyhow::bail!("--cpus must be positive");
    }
    args.container_info().map_err(|e| anyhow!(e))?;
    let name = args.name.clone().unwrap_or_else(|| "drover-run".into());
    let config = SchedulerConfig::builder(name.clone())
        .masters(&masters)
        .role(args.role.clone())
        .failover_timeout(FAILOVER_TIMEOUT)
        .reconnect_timeout(Some(RECONNECT_TIMEOUT))
        .build()?;
    let request = TaskRequest::new(args.cpus, args.mem).with_disk(args.disk);
    let mut scheduler = RunScheduler {
        shared: Shared::new(),
        request,
        task_id: task_id_for(&name),
        args: args.clone(),
        follower: None,
    };
    let mut dog = Watchdog {
        request,
        timeout: args.timeout_secs.map(Duration::from_secs),
        started: Instant::now(),
        last_notice: Instant::now(),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    // The watchdog (ticks and Ctrl-C) is done once it gave the run up.
    let mut watching = true;
    let mut signals = true;

    let (driver, mut events) = drover_sdk::subscribe(config);
    // `None` when the run was abandoned before any master was subscribed.
    let outcome = loop {
        let watch = tokio::select! {
            event = events.next() => match event {
                Some(Event::Ended(result)) => break Some(result),
                Some(event) => {
                    scheduler.handle(&driver, event).await;
                    Watch::Continue
                }
                // The stream always ends with `Ended`.
                None => break Some(Ok(RunOutcome::Stopped)),
            },
            _ = tick.tick(), if watching => scheduler.watch(&driver, &mut dog).await,
            signal = &mut ctrl_c, if watching && signals => {
                signals = false;
                if signal.is_ok() {
                    scheduler.interrupted(&driver).await
                } else {
                    Watch::Continue
                }
            }
        };
        match watch {
            Watch::Continue => {}
            Watch::Over => watching = false,
            Watch::Abandon => break None,
        }
    };
    let s = &scheduler.shared;
    if s.interrupted {
        return Ok(EXIT_INTERRUPTED);
    }
    match (outcome, s.result) {
        (_, Some(code)) => Ok(code),
        (None, None) => Ok(EXIT_INTERRUPTED),
        (Some(Ok(RunOutcome::TornDown | RunOutcome::Stopped)), None) => {
            Err(anyhow!("the framework ended before the task did"))
        }
        (Some(Err(e)), None) => Err(e).context(format!(
            "cannot run on the cluster at {}",
            masters.join(",")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("run").chain(args.iter().copied())).map(|c| c.run)
    }

    #[test]
    fn parses_flags_then_command() {
        let a = parse(&[
            "--cpus", "2", "--env", "A=1", "--env", "B=x=y", "--", "ls", "-l", "/",
        ])
        .unwrap();
        assert_eq!(a.cpus, 2.0);
        assert_eq!(
            a.env,
            [("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(a.command, ["ls", "-l", "/"]);
        let a = parse(&["--timeout-secs", "5", "sh", "-c", "echo hi"]).unwrap();
        assert_eq!(a.timeout_secs, Some(5));
        assert_eq!(a.command, ["sh", "-c", "echo hi"]);
        assert_eq!((a.mem, a.disk, a.role.as_str()), (32.0, 0.0, "*"));
        assert!(parse(&[]).is_err(), "a command is required");
        assert!(parse(&["--env", "=x", "true"]).is_err());
        assert!(parse(&["--timeout-secs", "0", "true"]).is_err());
    }

    #[test]
    fn single_argument_runs_in_a_shell_several_run_directly() {
        let offer = pb::Offer {
            agent_id: Some("a1".into()),
            ..Default::default()
        };
        let make = |cmd: &[&str]| {
            let s = RunScheduler {
                shared: Shared::new(),
                request: TaskRequest::new(0.1, 32.0),
                task_id: task_id_for("x"),
                args: parse(cmd).unwrap(),
                follower: None,
            };
            s.build_task(&offer, &Resources::parse("cpus:0.1").unwrap())
                .command
                .unwrap()
        };
        let c = make(&["--env", "K=V", "echo $HOME | wc -c"]);
        assert!(c.shell);
        assert_eq!(c.value, "echo $HOME | wc -c");
        assert_eq!(c.environment[0].name, "K");
        let c = make(&["ls", "-l"]);
        assert!(!c.shell);
        assert_eq!(c.arguments, ["ls", "-l"]);
    }

    #[test]
    fn health_cmd_becomes_a_command_health_check() {
        let offer = pb::Offer {
            agent_id: Some("a1".into()),
            ..Default::default()
        };
        let make = |args: &[&str]| {
            let s = RunScheduler {
                shared: Shared::new(),
                request: TaskRequest::new(0.1, 32.0),
                task_id: task_id_for("x"),
                args: parse(args).unwrap(),
                follower: None,
            };
            s.build_task(&offer, &Resources::parse("cpus:0.1").unwrap())
        };
        assert!(make(&["sleep 9"]).health_check.is_none());
        let t = make(&["--health-cmd", "test -f ready", "sleep 9"]);
        let h = t.health_check.unwrap();
        let c = h.check.unwrap();
        assert_eq!(c.r#type, pb::check_info::Type::Command as i32);
        assert_eq!(c.command.unwrap().value, "test -f ready");
        // Zero: the agent's defaults.
        assert_eq!((h.consecutive_failures, c.interval_seconds), (0, 0.0));
        assert_eq!(t.command.unwrap().value, "sleep 9");
    }

    #[test]
    fn containerizer_and_image_flags_become_the_container_info() {
        use pb::container_info::Type;
        let offer = pb::Offer {
            agent_id: Some("a1".into()),
            ..Default::default()
        };
        let task = |cmd: &[&str]| {
            let s = RunScheduler {
                shared: Shared::new(),
                request: TaskRequest::new(0.1, 32.0),
                task_id: task_id_for("x"),
                args: parse(cmd).unwrap(),
                follower: None,
            };
            s.build_task(&offer, &Resources::parse("cpus:0.1").unwrap())
        };
        let t = task(&[
            "--containerizer",
            "docker",
            "--image",
            "busybox:1",
            "echo hi",
        ]);
        let c = t.container.unwrap();
        assert_eq!(c.r#type, Type::Docker as i32);
        assert_eq!(c.docker.unwrap().image, "busybox:1");
        assert_eq!(t.command.unwrap().value, "echo hi");

        // Docker without a command: the image's own.
        let t = task(&["--containerizer", "docker", "--image", "web:2"]);
        let cmd = t.command.unwrap_or_default();
        assert!(cmd.value.is_empty() && cmd.arguments.is_empty() && !cmd.shell);

        let t = task(&["--containerizer", "linux", "--image", "alpine", "true"]);
        let c = t.container.unwrap();
        assert_eq!(c.r#type, Type::Linux as i32);
        assert_eq!(c.image.unwrap().name, "alpine");
        assert!(task(&["true"]).container.is_none(), "the agent's choice");
        let t = task(&["--containerizer", "process", "true"]);
        assert_eq!(t.container.unwrap().r#type, Type::Process as i32);

        for (flags, err) in [
            (
                &["--image", "x", "true"][..],
                "--image needs --containerizer",
            ),
            (&["--containerizer", "docker", "true"][..], "needs --image"),
            (
                &["--containerizer", "process", "--image", "x", "true"][..],
                "runs no image",
            ),
        ] {
            let e = parse(flags).unwrap().container_info().unwrap_err();
            assert!(e.contains(err), "{flags:?}: {e}");
        }
        assert!(
            parse(&["--containerizer", "linux"]).is_err(),
            "no image, no command"
        );
        // A linux task in an image may run the image's own command too.
        let t = task(&["--containerizer", "linux", "--image", "x"]);
        assert_eq!(t.container.unwrap().image.unwrap().name, "x");
        assert!(parse(&["--containerizer", "podman", "true"]).is_err());
    }

    #[test]
    fn task_ids_are_valid_and_unique() {
        for name in ["drover-run", "my job/with spaces", "..", ""] {
            let id = task_id_for(name);
            assert!(
                drover_sdk::proto::ids::validate_id("task", id.as_str()).is_ok(),
                "{id}"
            );
        }
        assert_ne!(task_id_for("a"), task_id_for("a"));
    }

    #[test]
    fn exit_codes_and_final_lines() {
        let st = |state: TaskState, exit: Option<i32>, msg: &str| pb::TaskStatus {
            task_id: Some("t1".into()),
            state: state as i32,
            exit_code: exit,
            message: msg.into(),
            reason: pb::task_status::Reason::TaskInvalid as i32,
            ..Default::default()
        };
        assert_eq!(
            final_report(&st(TaskState::TaskFinished, Some(0), ""), false, false),
            (0, "task t1 FINISHED (exit 0)".into())
        );
        assert_eq!(
            final_report(&st(TaskState::TaskFailed, Some(3), ""), false, false).0,
            3
        );
        assert_eq!(
            final_report(&st(TaskState::TaskFailed, None, ""), false, false).0,
            1
        );
        assert_eq!(
            final_report(&st(TaskState::TaskKilled, None, ""), true, false).0,
            EXIT_TIMEOUT
        );
        assert_eq!(
            final_report(&st(TaskState::TaskKilled, None, ""), false, true).0,
            EXIT_INTERRUPTED
        );
        assert_eq!(
            final_report(&st(TaskState::TaskKilled, None, ""), false, false).0,
            137
        );
        let (code, line) = final_report(
            &st(TaskState::TaskError, None, "no such user"),
            false,
            false,
        );
        assert_eq!(code, EXIT_NOT_RUN);
        assert_eq!(
            line,
            "task t1 could not run: ERROR: no such user [REASON_TASK_INVALID]"
        );
    }

    #[test]
    fn waiting_notice_names_the_request_and_the_best_offer() {
        let mut s = Shared::new();
        let req = TaskRequest::new(4.0, 1024.0);
        assert!(waiting_notice(&s, &req).contains("leading master"));
        s.framework_id = Some("fw".into());
        assert!(waiting_notice(&s, &req).contains("no offer has arrived yet"));
        s.offers_seen = 3;
        s.closest = Some(pb::Offer {
            hostname: "host-b".into(),
            resources: Resources::parse("cpus:2;mem:512").unwrap().to_proto(),
            ..Default::default()
        });
        assert_eq!(
            waiting_notice(&s, &req),
            "waiting for an offer with cpus:4 mem:1024 disk:0; \
             the largest offer so far was cpus:2; mem:512 on host-b (3 offers seen)"
        );
    }
}
