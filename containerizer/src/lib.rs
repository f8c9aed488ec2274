//! `drover-containerizer`: how a task's processes are started, watched, killed and found
//! again after an agent restart, and the images they run. The agent uses it through the
//! [`Containerizer`] trait; this crate knows nothing of the agent (masters, status
//! updates, checkpoint log), so the dependency runs one way: proto → containerizer → agent.
//!
//! Module map:
//! - the crate root: [`Containerizer`] (the seam between the agent's bookkeeping and the
//!   machinery that runs processes), [`Containerizers`] (the enabled containerizers keyed
//!   by name: it picks one per task from `ContainerInfo.type`, the first enabled one when
//!   the task names none, remembers the choice in the task's meta directory so recovery
//!   asks the same one again, and routes every later call there), [`build`] (which ones a
//!   machine enables) and [`terminal_status`] (how a container's end becomes a task state);
//! - [`process`]: `ProcessContainerizer`, plain processes in sandboxes (no isolation);
//! - [`linux`]: `LinuxContainerizer`, namespaces, cgroups (`linux::cgroups`) and a PID-1
//!   init per task (`linux::init`), task groups' namespace holders (`linux::holder`);
//! - [`docker`]: `DockerContainerizer`, `DOCKER` tasks through the Docker Engine API;
//! - [`supervisor`]: the per-task supervisor process (the agent's binary re-executed with
//!   the hidden argument `__supervise`) that runs the command (for linux containers:
//!   starts the container's init, `__container_init`), outlives the agent and records the
//!   exit status; `supervisor::records` are the files it shares with the containerizers.
//!   A binary that launches tasks must call [`supervisor::dispatch`] first thing in
//!   `main` (the agent does); test binaries do it from an `.init_array` hook (below);
//! - [`images`]: the local image store (OCI layouts and `docker save` archives imported,
//!   verified and unpacked into immutable root filesystems), per-container overlay root
//!   filesystems on top, and user lookup in an image;
//! - [`layout`]: where everything lives under the agent's `--work-dir`; [`fsutil`]:
//!   durable writes; [`procfs`]: process identity (pid + start time) and pid-reuse-proof
//!   signals; [`error`]: the crate's error enum.

pub mod docker;
pub mod error;
pub mod fsutil;
pub mod images;
pub mod layout;
pub mod linux;
pub mod process;
pub mod procfs;
pub mod supervisor;

pub use error::ContainerizerError;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use drover_proto::pb::{self, task_status::Reason, task_status::Source, TaskState};
use drover_proto::AgentId;

use crate::error::IoContext;
use crate::fsutil::replace_unsynced;
use crate::images::ImageStore;
use crate::layout::{Layout, TaskKey, TaskMeta};
use crate::supervisor::records::{ExitOutcome, ExitRecord, Limitation, TaskGroupLaunch};

/// What [`build`] needs to know: the agent's flags that concern containers.
#[derive(Clone, Debug)]
pub struct Options {
    /// `--containerizers`: the names to enable, the default first; empty for the default
    /// choice (see [`build`]).
    pub containerizers: Vec<String>,
    /// `--cgroups-root`: the agent's cgroup, under which linux containers get theirs.
    pub cgroups_root: PathBuf,
    /// `--pids-limit`: the most processes one linux container may have.
    pub pids_limit: u64,
    /// The grace period between SIGTERM and SIGKILL when a kill names none.
    pub default_grace: Duration,
    /// `--docker-socket`: the Docker engine's API socket.
    pub docker_socket: PathBuf,
}

/// The latest sandbox disk figures of each task (measured by the agent's disk watcher),
/// added to every usage sample the containerizers give.
#[derive(Default)]
pub struct DiskUsage(Mutex<HashMap<TaskKey, (u64, Option<u64>)>>);

impl DiskUsage {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<TaskKey, (u64, Option<u64>)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the task's disk figures to `stats` (creating it when the container reports
    /// nothing else).
    pub fn fill(
        &self,
        key: &TaskKey,
        stats: Option<pb::ResourceStatistics>,
    ) -> Option<pb::ResourceStatistics> {
        let Some((used, limit)) = self.map().get(key).copied() else {
            return stats;
        };
        let mut stats = stats.unwrap_or_else(|| pb::ResourceStatistics {
            timestamp: drover_proto::unix_seconds(),
            ..Default::default()
        });
        stats.disk_used_bytes = used;
        stats.disk_limit_bytes = limit.unwrap_or(0);
        Some(stats)
    }

    /// Records a measurement of `key`'s sandbox: `used` bytes of its `limit`.
    pub fn set(&self, key: &TaskKey, used: u64, limit: Option<u64>) {
        self.map().insert(key.clone(), (used, limit));
    }

    /// Forgets the tasks not in `live`.
    pub fn retain(&self, live: &std::collections::HashSet<TaskKey>) {
        self.map().retain(|k, _| live.contains(k));
    }
}

/// Everything a containerizer needs to start one task.
#[derive(Clone, Debug)]
pub struct LaunchSpec {
    pub key: TaskKey,
    pub task: pb::TaskInfo,
    pub agent_id: AgentId,
    /// Already created; `stdout` and `stderr` in it are created if missing.
    pub sandbox: PathBuf,
    /// Already created; `task.json` is checkpointed in it.
    pub meta: TaskMeta,
    /// Set for a task of a task group: what it shares with the rest of the group.
    pub group: Option<TaskGroupLaunch>,
}

/// What recovery found for a task that was not known to have ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovered {
    /// Its container is still running; [`Containerizer::wait`] follows it.
    Running,
    /// Its container is gone; [`Containerizer::wait`] returns how it ended at once.
    Ended,
    /// The agent stopped before the container started, and now never will.
    NeverStarted,
}

/// How a container ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Termination {
    /// The container's supervisor recorded the outcome.
    Recorded(ExitRecord),
    /// The supervisor disappeared without recording anything (killed, crashed).
    Vanished { detail: String },
    /// The container was stopped for exceeding a resource limit (e.g. the kernel's OOM
    /// killer inside its memory limit): TASK_FAILED with `reason`.
    Limited {
        reason: Reason,
        message: String,
        exit_code: Option<i32>,
    },
}

/// A container runtime. Implementations must be idempotent where the agent may repeat
/// itself after a restart (`kill`, `recover`).
#[async_trait]
pub trait Containerizer: Send + Sync + 'static {
    /// The name used by `--containerizers`.
    fn name(&self) -> &'static str;

    /// Starts the task. Returns once the container exists and will run (or record why
    /// it could not); the task's own outcome comes from [`Containerizer::wait`].
    async fn launch(&self, spec: LaunchSpec) -> Result<(), ContainerizerError>;

    /// Finds a task's container again after an agent restart.
    async fn recover(&self, key: &TaskKey) -> Result<Recovered, ContainerizerError>;

    /// Resolves when the task's container has ended. Call once per launch or recovery.
    async fn wait(&self, key: &TaskKey) -> Result<Termination, ContainerizerError>;

    /// Asks the container to stop: SIGTERM now, SIGKILL after `grace`. The outcome is
    /// reported as killed with `reason`. Killing an ended container is a no-op.
    async fn kill(
        &self,
        key: &TaskKey,
        grace: Duration,
        reason: Reason,
    ) -> Result<(), ContainerizerError>;

    /// The container's latest resource usage, for containerizers that measure it. Cheap
    /// (a few small file reads): the agent calls it when it answers a state request.
    fn usage(&self, _key: &TaskKey) -> Option<pb::ResourceStatistics> {
        None
    }

    /// The name of the containerizer running the task (for a registry of several).
    fn containerizer_of(&self, _key: &TaskKey) -> Option<&'static str> {
        Some(self.name())
    }
}

/// The containerizer name `ContainerInfo.type` asks for; `None` for the agent's default.
pub fn type_name(t: pb::container_info::Type) -> Option<&'static str> {
    use pb::container_info::Type;
    match t {
        Type::Unspecified => None,
        Type::Linux => Some("linux"),
        Type::Docker => Some("docker"),
        Type::Process => Some("process"),
    }
}

/// The file in a task's meta directory naming its containerizer. Tasks of agents before
/// it ran under `process`.
const CONTAINERIZER_FILE: &str = "containerizer";

/// Every containerizer name a task may have been launched under.
const KNOWN: [&str; 3] = ["linux", "process", "docker"];

/// The enabled containerizers; see the module docs.
pub struct Containerizers {
    layout: Layout,
    /// The first is the default for tasks that name no type.
    enabled: Vec<Arc<dyn Containerizer>>,
    /// Not enabled for new tasks, but able to recover the tasks an earlier agent ran with
    /// them (a containerizer dropped from `--containerizers` must not orphan its tasks).
    recovery_only: Vec<Arc<dyn Containerizer>>,
    /// Tasks launched or recovered and not yet waited for. Never held across an await.
    running: Mutex<HashMap<TaskKey, Arc<dyn Containerizer>>>,
    /// The docker containerizer, when on: it also sweeps orphaned containers.
    docker: Option<Arc<docker::DockerContainerizer>>,
    /// Sandbox disk figures from the disk watcher, added to every usage sample.
    disk: Arc<DiskUsage>,
}

impl Containerizers {
    /// `enabled` must not be empty; its first entry is the default.
    pub fn new(layout: Layout, enabled: Vec<Arc<dyn Containerizer>>) -> Self {
        assert!(!enabled.is_empty(), "no containerizer enabled");
        Containerizers {
            layout,
            enabled,
            recovery_only: Vec::new(),
            running: Mutex::new(HashMap::new()),
            docker: None,
            disk: Arc::default(),
        }
    }

    /// Where the agent's disk watcher leaves its figures.
    pub fn disk_usage(&self) -> Arc<DiskUsage> {
        self.disk.clone()
    }

    /// Remembers the docker containerizer (also in `enabled`) for [`Self::remove_orphans`].
    pub fn with_docker(mut self, docker: Option<Arc<docker::DockerContainerizer>>) -> Self {
        self.docker = docker;
        self
    }

    /// After recovery, before any launch: removes every Docker container labelled with
    /// this agent's work dir whose task recovery did not claim (see
    /// [`docker::DockerContainerizer::remove_orphans`]).
    pub async fn remove_orphans(&self) {
        let Some(docker) = &self.docker else {
            return;
        };
        match docker.remove_orphans().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!("removed {n} orphaned Docker container(s)"),
            Err(e) => tracing::warn!("could not look for orphaned Docker containers: {e}"),
        }
    }

    /// Adds containerizers that only recover tasks launched with them earlier.
    pub fn with_recovery_only(mut self, extra: Vec<Arc<dyn Containerizer>>) -> Self {
        self.recovery_only = extra;
        self
    }

    /// Names of the enabled containerizers, the default first.
    pub fn names(&self) -> Vec<&'static str> {
        self.enabled.iter().map(|c| c.name()).collect()
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<TaskKey, Arc<dyn Containerizer>>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A usage sample of every running container that measures it.
    pub fn usage_all(&self) -> Vec<pb::TaskUsage> {
        let running: Vec<(TaskKey, Arc<dyn Containerizer>)> = self
            .running()
            .iter()
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect();
        running
            .into_iter()
            .filter_map(|(key, c)| {
                self.disk
                    .fill(&key, c.usage(&key))
                    .map(|statistics| pb::TaskUsage {
                        framework_id: Some(key.framework_id.clone()),
                        task_id: Some(key.task_id.clone()),
                        statistics: Some(statistics),
                    })
            })
            .collect()
    }

    fn by_name(&self, name: &str) -> Option<Arc<dyn Containerizer>> {
        self.enabled.iter().find(|c| c.name() == name).cloned()
    }

    /// The containerizer for a task, or why there is none.
    pub fn pick(&self, task: &pb::TaskInfo) -> Result<Arc<dyn Containerizer>, ContainerizerError> {
        let asked = task.container.as_ref().map(|c| c.r#type).unwrap_or(0);
        let Ok(t) = pb::container_info::Type::try_from(asked) else {
            return Err(ContainerizerError::Launch(format!(
                "unknown container type {asked}"
            )));
        };
        match type_name(t) {
            None => Ok(self.enabled[0].clone()),
            Some(name) => self.by_name(name).ok_or_else(|| {
                ContainerizerError::Launch(format!(
                    "the task asks for the '{name}' containerizer, which this agent does not \
                     enable (enabled: {})",
                    self.names().join(",")
                ))
            }),
        }
    }
}

#[async_trait]
impl Containerizer for Containerizers {
    fn name(&self) -> &'static str {
        "containerizers"
    }

    async fn launch(&self, spec: LaunchSpec) -> Result<(), ContainerizerError> {
        let chosen = self.pick(&spec.task)?;
        let path = spec.meta.dir().join(CONTAINERIZER_FILE);
        // Before the container exists, so recovery asks the same containerizer. Not
        // synced: after a power loss no container runs, and recovery treats a missing or
        // torn name as `process`, which finds the dead supervisor just the same.
        replace_unsynced(&path, chosen.name().as_bytes())
            .ctx(|| format!("writing {}", path.display()))?;
        let key = spec.key.clone();
        chosen.launch(spec).await?;
        self.running().insert(key, chosen);
        Ok(())
    }

    async fn recover(&self, key: &TaskKey) -> Result<Recovered, ContainerizerError> {
        let path = self.layout.task_meta(key).dir().join(CONTAINERIZER_FILE);
        let name = match std::fs::read_to_string(&path) {
            Ok(n) if KNOWN.contains(&n.trim()) => n.trim().to_string(),
            Ok(n) => {
                tracing::warn!(task = %key, "unreadable containerizer name {n:?}; recovering the task as a process task");
                "process".to_string()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "process".to_string(),
            Err(e) => {
                return Err(ContainerizerError::io(
                    format!("reading {}", path.display()),
                    e,
                ))
            }
        };
        let recovering = self
            .recovery_only
            .iter()
            .find(|c| c.name() == name)
            .cloned()
            .inspect(|_| {
                tracing::info!(task = %key, "recovering a task of the '{name}' containerizer, which is no longer enabled for new tasks");
            });
        let chosen = self.by_name(&name).or(recovering).ok_or_else(|| {
            ContainerizerError::Config(format!(
                "task {key} runs under the '{name}' containerizer, which this agent does not \
                 enable (enabled: {}); enable it again to recover the task",
                self.names().join(",")
            ))
        })?;
        let found = chosen.recover(key).await?;
        if found != Recovered::NeverStarted {
            self.running().insert(key.clone(), chosen);
        }
        Ok(found)
    }

    async fn wait(&self, key: &TaskKey) -> Result<Termination, ContainerizerError> {
        let chosen = self.running().get(key).cloned().ok_or_else(|| {
            ContainerizerError::Launch(format!("no container is known for task {key}"))
        })?;
        let result = chosen.wait(key).await;
        self.running().remove(key);
        result
    }

    async fn kill(
        &self,
        key: &TaskKey,
        grace: Duration,
        reason: Reason,
    ) -> Result<(), ContainerizerError> {
        let chosen = self.running().get(key).cloned();
        match chosen {
            Some(c) => c.kill(key, grace, reason).await,
            None => Ok(()),
        }
    }

    fn usage(&self, key: &TaskKey) -> Option<pb::ResourceStatistics> {
        let chosen = self.running().get(key).cloned()?;
        self.disk.fill(key, chosen.usage(key))
    }

    fn containerizer_of(&self, key: &TaskKey) -> Option<&'static str> {
        self.running().get(key).map(|c| c.name())
    }
}

/// The containerizers `--containerizers` enables; without the flag, `linux` (default)
/// and `process` when the agent runs as root with usable cgroups, else `process` alone.
/// Docker is added when the engine answers (or, when `--containerizers` names it, must
/// answer). Logs which and why.
pub async fn build(
    settings: &Options,
    layout: &Layout,
    images: Arc<ImageStore>,
) -> Result<Containerizers, ContainerizerError> {
    let exe = PathBuf::from("/proc/self/exe");
    // Linux containers run images from the agent's image store.
    let provider: linux::RootfsProvider =
        Arc::new(move |image: &pb::Image, dir: &Path| images.prepare_rootfs(&image.name, dir));
    let linux = || {
        linux::LinuxContainerizer::new(
            layout.clone(),
            exe.clone(),
            linux::LinuxOptions {
                cgroups_root: settings.cgroups_root.clone(),
                pids_limit: settings.pids_limit,
                default_grace: settings.default_grace,
            },
        )
        .map(|l| l.with_rootfs_provider(provider.clone()))
    };
    let process = || -> Arc<dyn Containerizer> {
        Arc::new(process::ProcessContainerizer::new(
            layout.clone(),
            exe.clone(),
            settings.default_grace,
        ))
    };
    let mut enabled: Vec<Arc<dyn Containerizer>> = Vec::new();
    if settings.containerizers.is_empty() {
        match linux() {
            Ok(l) => {
                tracing::info!(
                    cgroups = %l.hierarchies().describe(),
                    cgroup_root = %l.agent_cgroup_root().display(),
                    "containerizers: linux (default), process; the agent runs as root and \
                     the cgroup controllers are usable"
                );
                enabled.push(Arc::new(l));
                enabled.push(process());
            }
            Err(why) => {
                tracing::info!("containerizers: process only; linux is not available: {why}");
                enabled.push(process());
            }
        }
    } else {
        for name in &settings.containerizers {
            match name.as_str() {
                "linux" => {
                    let l = linux().map_err(|why| {
                        ContainerizerError::Config(format!(
                            "--containerizers: 'linux' cannot run here: {why}"
                        ))
                    })?;
                    tracing::info!(cgroups = %l.hierarchies().describe(), "linux containerizer enabled");
                    enabled.push(Arc::new(l));
                }
                "process" => enabled.push(process()),
                // Connected below, once: the engine must answer.
                "docker" => {}
                other => {
                    return Err(ContainerizerError::Config(format!(
                        "--containerizers: unknown containerizer '{other}'"
                    )))
                }
            }
        }
        tracing::info!(
            "containerizers: {} (from --containerizers; the first is the default)",
            settings.containerizers.join(",")
        );
    }
    let named = !settings.containerizers.is_empty();
    let wanted = settings.containerizers.iter().any(|c| c == "docker");
    let docker = if named && !wanted {
        tracing::info!("containerizers: docker is off (not in --containerizers)");
        None
    } else {
        match docker::DockerContainerizer::connect(&settings.docker_socket, layout.clone()).await {
            Ok(d) => {
                tracing::info!(
                    socket = %settings.docker_socket.display(),
                    "containerizers: docker is on (the engine answers)"
                );
                Some(Arc::new(d))
            }
            Err(why) if wanted => {
                return Err(ContainerizerError::Config(format!(
                    "--containerizers names docker, but {why} (see --docker-socket)"
                )))
            }
            Err(why) => {
                tracing::info!("containerizers: docker is off ({why})");
                None
            }
        }
    };
    if let Some(d) = &docker {
        if enabled.is_empty() {
            // `--containerizers docker` alone: docker is then also the default.
            enabled.push(d.clone());
        } else {
            let at = settings
                .containerizers
                .iter()
                .position(|c| c == "docker")
                .unwrap_or(enabled.len())
                .min(enabled.len());
            enabled.insert(at, d.clone());
        }
    }
    // Tasks of a containerizer that is no longer enabled are still recovered and reported.
    let mut recovery_only: Vec<Arc<dyn Containerizer>> = Vec::new();
    let has =
        |enabled: &[Arc<dyn Containerizer>], name: &str| enabled.iter().any(|c| c.name() == name);
    if !has(&enabled, "process") {
        recovery_only.push(process());
    }
    if !has(&enabled, "linux") {
        if let Ok(l) = linux() {
            recovery_only.push(Arc::new(l));
        }
    }
    Ok(Containerizers::new(layout.clone(), enabled)
        .with_recovery_only(recovery_only)
        .with_docker(docker))
}

/// The terminal status a [`Termination`] becomes.
#[derive(Clone, Debug, PartialEq)]
pub struct TerminalStatus {
    pub state: TaskState,
    pub reason: Reason,
    pub source: Source,
    pub message: String,
    pub exit_code: Option<i32>,
}

/// Maps how a container ended onto the task's terminal state (Mesos's command executor
/// semantics): exit 0 → FINISHED; non-zero → FAILED with the code; a signal → FAILED;
/// anything that ended after a requested kill → KILLED.
pub fn terminal_status(t: &Termination) -> TerminalStatus {
    let record = match t {
        Termination::Vanished { detail } => {
            return TerminalStatus {
                state: TaskState::TaskFailed,
                reason: Reason::ExecutorTerminated,
                source: Source::Agent,
                message: format!(
                    "the task's supervisor exited without recording how the task ended ({detail})"
                ),
                exit_code: None,
            }
        }
        Termination::Limited {
            reason,
            message,
            exit_code,
        } => {
            return TerminalStatus {
                state: TaskState::TaskFailed,
                reason: *reason,
                source: Source::Agent,
                message: message.clone(),
                exit_code: *exit_code,
            }
        }
        Termination::Recorded(r) => r,
    };
    let exit_code = match record.outcome {
        ExitOutcome::Exited { code } => Some(code),
        _ => None,
    };
    let what = match &record.outcome {
        ExitOutcome::Exited { code } => format!("command exited with status {code}"),
        ExitOutcome::Signaled { signal } => format!("terminated by signal {signal}"),
        ExitOutcome::LaunchFailed { message } => format!("failed to launch the command: {message}"),
        ExitOutcome::NotStarted => "the command was never started".to_string(),
    };
    if let (
        Some(Limitation::Memory {
            limit_bytes,
            max_usage_bytes,
        }),
        false,
    ) = (&record.limitation, record.killed)
    {
        let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
        let limit = limit_bytes.map_or("its".to_string(), |l| format!("its {:.0} MB", mb(l)));
        return TerminalStatus {
            state: TaskState::TaskFailed,
            reason: Reason::ContainerLimitationMemory,
            source: Source::Agent,
            message: format!(
                "the container exceeded {limit} memory limit (peak usage {:.1} MB) and the \
                 kernel OOM-killed it; {what}",
                mb(*max_usage_bytes)
            ),
            exit_code,
        };
    }
    if record.killed && record.kill_reason == Some(Reason::ContainerLimitationDisk as i32) {
        // The agent killed it for its disk (its disk watcher): a failure of the task,
        // not a kill someone asked for. The agent replaces the message with the figures.
        return TerminalStatus {
            state: TaskState::TaskFailed,
            reason: Reason::ContainerLimitationDisk,
            source: Source::Agent,
            message: format!("the task's sandbox exceeded its disk resource; {what}"),
            exit_code,
        };
    }
    if record.killed {
        let reason = record
            .kill_reason
            .and_then(|r| Reason::try_from(r).ok())
            .filter(|r| *r != Reason::Unspecified)
            .unwrap_or(Reason::KilledByFramework);
        return TerminalStatus {
            state: TaskState::TaskKilled,
            reason,
            source: Source::Executor,
            message: format!("killed on request; {what}"),
            exit_code,
        };
    }
    let (state, reason) = match &record.outcome {
        ExitOutcome::Exited { code: 0 } => (TaskState::TaskFinished, Reason::Unspecified),
        ExitOutcome::Exited { .. } | ExitOutcome::Signaled { .. } => {
            (TaskState::TaskFailed, Reason::Unspecified)
        }
        ExitOutcome::LaunchFailed { .. } => (TaskState::TaskFailed, Reason::ContainerLaunchFailed),
        // Not started yet not killed cannot be written by a supervisor; be explicit anyway.
        ExitOutcome::NotStarted => (TaskState::TaskFailed, Reason::ContainerLaunchFailed),
    };
    TerminalStatus {
        state,
        reason,
        source: Source::Executor,
        message: what,
        exit_code,
    }
}

/// Test binaries have no `main` of ours, yet the containerizers re-execute the running
/// binary (`/proc/self/exe`) as the supervisor. This constructor runs before the test
/// harness and turns a test binary started with `__supervise` into a supervisor (and with
/// `__container_init` into a container's init), so tests exercise exactly the production
/// path. The agent's test binaries carry the same hook.
#[cfg(test)]
#[used]
#[link_section = ".init_array"]
static SUPERVISOR_IN_TEST_BINARY: extern "C" fn() = {
    extern "C" fn hook() {
        if let Some(code) = supervisor::dispatch_from_proc_cmdline() {
            std::process::exit(code);
        }
    }
    hook
};

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(outcome: ExitOutcome, killed: bool, reason: Option<i32>) -> Termination {
        Termination::Recorded(ExitRecord {
            outcome,
            killed,
            kill_reason: reason,
            task_pid: Some(1),
            finished_at: 0.0,
            limitation: None,
        })
    }

    #[test]
    fn maps_outcomes_onto_states() {
        let s = terminal_status(&rec(ExitOutcome::Exited { code: 0 }, false, None));
        assert_eq!((s.state, s.exit_code), (TaskState::TaskFinished, Some(0)));

        let s = terminal_status(&rec(ExitOutcome::Exited { code: 3 }, false, None));
        assert_eq!(s.state, TaskState::TaskFailed);
        assert_eq!(s.exit_code, Some(3));
        assert_eq!(s.message, "command exited with status 3");

        let s = terminal_status(&rec(ExitOutcome::Signaled { signal: 9 }, false, None));
        assert_eq!(s.state, TaskState::TaskFailed);
        assert_eq!(s.exit_code, None);
        assert_eq!(s.message, "terminated by signal 9");

        let s = terminal_status(&rec(ExitOutcome::Signaled { signal: 15 }, true, None));
        assert_eq!(
            (s.state, s.reason),
            (TaskState::TaskKilled, Reason::KilledByFramework)
        );
        let s = terminal_status(&rec(
            ExitOutcome::NotStarted,
            true,
            Some(Reason::FrameworkRemoved as i32),
        ));
        assert_eq!(
            (s.state, s.reason),
            (TaskState::TaskKilled, Reason::FrameworkRemoved)
        );

        let s = terminal_status(&rec(
            ExitOutcome::LaunchFailed {
                message: "no such file".into(),
            },
            false,
            None,
        ));
        assert_eq!(
            (s.state, s.reason),
            (TaskState::TaskFailed, Reason::ContainerLaunchFailed)
        );

        let s = terminal_status(&Termination::Limited {
            reason: Reason::ContainerLimitationMemory,
            message: "oom".into(),
            exit_code: Some(137),
        });
        assert_eq!(
            (s.state, s.reason, s.source, s.exit_code),
            (
                TaskState::TaskFailed,
                Reason::ContainerLimitationMemory,
                Source::Agent,
                Some(137)
            )
        );

        let s = terminal_status(&Termination::Vanished { detail: "x".into() });
        assert_eq!(
            (s.state, s.reason, s.source),
            (
                TaskState::TaskFailed,
                Reason::ExecutorTerminated,
                Source::Agent
            )
        );
    }
}
