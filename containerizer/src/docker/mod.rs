//! The `docker` containerizer: tasks whose `ContainerInfo.type` is `DOCKER` run as Docker
//! containers, through the Docker Engine API over its unix socket (`--docker-socket`).
//!
//! Lifecycle of one task (see [`spec`] for the container's configuration):
//! 1. `launch`: the image must already be in the engine (the agent never pulls: there is
//!    no registry); the container is created with labels naming the agent, framework,
//!    task and work dir, then started. RUNNING is reported once the engine has started it.
//! 2. `wait`: follows the container's log stream into the sandbox's `stdout`/`stderr`,
//!    waits for the container to stop, reads its exit code and whether the kernel's OOM
//!    killer struck, records that in the task's meta directory (`container_exit.json`,
//!    written before the container is removed, so the outcome survives an agent crash at
//!    any point), then removes the container.
//! 3. `kill`: writes `kill_request.json` (the grace period and reason), then asks the
//!    engine to stop the container: its stop signal now, SIGKILL after the grace period.
//!
//! Usage (cpu time and throttling, memory, pids) is sampled from the container's cgroups,
//! found through its init's `/proc/<pid>/cgroup`, like a linux container's.
//!
//! The engine, not the agent, owns running containers, so a `kill -9` of the agent leaves
//! them running and keeps their logs and exit codes. A restarted agent finds each task's
//! container by its labels (`recover`), fetches its logs again from the engine's first
//! line (the sandbox files are rewritten from the start, so nothing is lost or doubled
//! while the agent was away), and reports containers that ended meanwhile with their real
//! exit code. Containers labelled with this agent's work dir that belong to no task the
//! agent still tracks are killed and removed ([`DockerContainerizer::remove_orphans`]).

pub mod spec;
pub mod testing;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::{
    CreateContainerOptions, ListContainersOptions, LogOutput, LogsOptions, RemoveContainerOptions,
    StopContainerOptions, WaitContainerOptions,
};
use bollard::errors::Error as EngineError;
use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum};
use bollard::Docker;
use drover_proto::pb::{self, task_status::Reason};
use drover_proto::unix_seconds;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::linux::cgroups::{ContainerCgroups, Hierarchies};
use super::{Containerizer, LaunchSpec, Recovered, Termination};
use crate::error::{ContainerizerError, IoContext};
use crate::fsutil::{read_json, write_json_atomic};
use crate::layout::{Layout, TaskKey};
use crate::supervisor::records::{ExitOutcome, ExitRecord, KillRequest};

/// The default `--docker-socket`.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Bound on one ordinary engine call (create, start, inspect, remove, list). Streaming
/// calls (wait, logs, stop) use a client without a bound: a container may run for months.
const API_TIMEOUT: Duration = Duration::from_secs(120);
/// The streaming client's "no bound": ten years, far from any overflow.
const NO_TIMEOUT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long the engine may take to answer the start-up ping.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// After the container stopped, how long its log stream may take to drain.
const LOG_DRAIN: Duration = Duration::from_secs(30);
/// Between retries when the engine does not answer while a container is watched.
const RETRY: Duration = Duration::from_secs(1);

/// `container_exit.json` in the task's meta directory: how the container ended, written
/// before the container is removed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerExit {
    pub container: String,
    #[serde(flatten)]
    pub record: ExitRecord,
    /// The kernel's OOM killer acted inside the container's memory limit.
    pub oom_killed: bool,
    /// The container's memory limit in bytes (0: none), for the OOM message.
    pub memory_limit: i64,
    /// The engine's own error for the container (e.g. a start-time failure), if any.
    pub engine_error: String,
}

impl ContainerExit {
    /// What the agent reports. An OOM kill the agent did not ask for is a memory-limit
    /// failure; everything else follows the command executor's rules.
    pub fn termination(&self) -> Termination {
        if self.oom_killed && !self.record.killed {
            let limit = if self.memory_limit > 0 {
                format!(" of {} MB", self.memory_limit / (1024 * 1024))
            } else {
                String::new()
            };
            let exit_code = match self.record.outcome {
                ExitOutcome::Exited { code } => Some(code),
                _ => None,
            };
            return Termination::Limited {
                reason: Reason::ContainerLimitationMemory,
                message: format!(
                    "the container {} was killed by the kernel's OOM killer at its memory \
                     limit{limit}",
                    self.container
                ),
                exit_code,
            };
        }
        Termination::Recorded(self.record.clone())
    }
}

/// A container this agent watches.
#[derive(Clone, Debug)]
struct Tracked {
    name: String,
    sandbox: PathBuf,
    /// Found by recovery: the sandbox's output files are rewritten from the engine's
    /// first log line, since the previous agent may have written only part of them.
    reattached: bool,
    /// The container's cgroups as the engine made them, read from its init process
    /// once it runs; `None` when they cannot be found (no usage then).
    cgroups: Option<ContainerCgroups>,
}

/// One of this agent's containers, as listed by the engine.
#[derive(Clone, Debug)]
struct Listed {
    id: String,
    name: String,
    state: String,
}

/// See the module docs.
pub struct DockerContainerizer {
    /// For ordinary calls (bounded by [`API_TIMEOUT`]).
    api: Docker,
    /// For wait, logs and stop, which last as long as the container.
    streams: Docker,
    layout: Layout,
    socket: PathBuf,
    /// Never held across an await.
    tracked: Mutex<HashMap<TaskKey, Tracked>>,
    /// The engine's list of this agent's containers, read once by the first `recover`.
    listed: tokio::sync::Mutex<Option<HashMap<TaskKey, Listed>>>,
    /// Where the cgroup controllers are, to measure containers; `None` without cgroups
    /// (e.g. a non-root agent talking to a rootless engine).
    hierarchies: Option<Hierarchies>,
}

/// Connects to the engine at `socket` and checks that it answers (a ping), agreeing on
/// an API version both sides speak. The error says why the engine cannot be used.
pub async fn connect(socket: &Path) -> Result<Docker, String> {
    let path = socket
        .to_str()
        .ok_or_else(|| format!("the socket path {} is not UTF-8", socket.display()))?;
    if !socket.exists() {
        return Err(format!("no Docker engine socket at {path}"));
    }
    let client =
        Docker::connect_with_unix(path, API_TIMEOUT.as_secs(), bollard::API_DEFAULT_VERSION)
            .map_err(|e| format!("cannot use the Docker engine socket {path}: {e}"))?;
    let answered = tokio::time::timeout(PING_TIMEOUT, async {
        // Older engines (20.10 speaks API 1.41) refuse requests above their version.
        let client = client.negotiate_version().await?;
        client.ping().await?;
        Ok::<_, EngineError>(client)
    })
    .await;
    match answered {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(format!("the Docker engine at {path} does not answer: {e}")),
        Err(_) => Err(format!(
            "the Docker engine at {path} did not answer within {}s",
            PING_TIMEOUT.as_secs()
        )),
    }
}

/// Whether `e` is the engine's "no such container/image".
fn is_not_found(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl DockerContainerizer {
    /// Connects to the engine at `socket` (see [`connect`]) and runs this agent's Docker
    /// containers there.
    pub async fn connect(socket: &Path, layout: Layout) -> Result<Self, String> {
        let api = connect(socket).await?;
        let streams = api.clone().with_timeout(NO_TIMEOUT);
        Ok(DockerContainerizer {
            api,
            streams,
            layout,
            socket: socket.to_path_buf(),
            tracked: Mutex::new(HashMap::new()),
            listed: tokio::sync::Mutex::new(None),
            hierarchies: Hierarchies::detect().ok(),
        })
    }

    /// The cgroups of a running container, through its init's `/proc/<pid>/cgroup`
    /// (whatever the engine's cgroup driver or parent), for usage samples.
    async fn cgroups_of(&self, name: &str) -> Option<ContainerCgroups> {
        let hierarchies = self.hierarchies.as_ref()?;
        let inspect = self.api.inspect_container(name, None).await.ok()?;
        let pid = inspect.state?.pid.filter(|p| *p > 0)?;
        hierarchies
            .of_process(u32::try_from(pid).ok()?)
            .filter(|c| c.dir("memory").is_some() || c.dir("cpuacct").is_some())
    }

    /// The engine's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn tracked(&self) -> std::sync::MutexGuard<'_, HashMap<TaskKey, Tracked>> {
        // Single inserts and removes: a poisoned map is still consistent.
        self.tracked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn exit_file(&self, key: &TaskKey) -> PathBuf {
        self.layout.task_meta(key).dir().join("container_exit.json")
    }

    /// Every container labelled with this agent's work dir, by task.
    async fn list_mine(&self) -> Result<HashMap<TaskKey, Listed>, ContainerizerError> {
        let label = format!(
            "{}={}",
            spec::LABEL_WORK_DIR,
            self.layout.root().to_string_lossy()
        );
        let options = ListContainersOptions::<String> {
            all: true,
            filters: HashMap::from([("label".to_string(), vec![label])]),
            ..Default::default()
        };
        let list = self.api.list_containers(Some(options)).await.map_err(|e| {
            ContainerizerError::Docker(format!("listing the agent's containers: {e}"))
        })?;
        let mut out = HashMap::new();
        for c in list {
            let labels = c.labels.unwrap_or_default();
            let (Some(fw), Some(task)) = (
                labels.get(spec::LABEL_FRAMEWORK_ID),
                labels.get(spec::LABEL_TASK_ID),
            ) else {
                continue;
            };
            let name = c
                .names
                .and_then(|n| n.into_iter().next())
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default();
            out.insert(
                TaskKey::new(fw.clone(), task.clone()),
                Listed {
                    id: c.id.unwrap_or_default(),
                    name,
                    state: c.state.unwrap_or_default(),
                },
            );
        }
        Ok(out)
    }

    /// Removes a container and its anonymous volumes, killing it if it runs. Gone already
    /// is fine.
    async fn remove(&self, name: &str) -> Result<(), ContainerizerError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.api.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // "removal already in progress" is someone else finishing the job.
            Err(EngineError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(ContainerizerError::Docker(format!(
                "removing container {name}: {e}"
            ))),
        }
    }

    /// Asks the engine to stop `name` in the background: `stop` blocks for up to the
    /// grace period, and the agent loop must not.
    fn stop_in_background(&self, name: String, grace: Duration) {
        let streams = self.streams.clone();
        // The engine takes whole seconds; round up so the task gets at least its grace.
        let t = grace.as_secs_f64().ceil() as i64;
        tokio::spawn(async move {
            match streams
                .stop_container(&name, Some(StopContainerOptions { t }))
                .await
            {
                Ok(()) => {}
                // 304: already stopped; 404: already gone.
                Err(EngineError::DockerResponseServerError {
                    status_code: 304 | 404,
                    ..
                }) => {}
                Err(e) => tracing::warn!(container = %name, "stopping the container: {e}"),
            }
        });
    }

    /// Kills and removes every container labelled with this agent's work dir whose task
    /// the agent does not track (its task is unknown, already reported, or was never
    /// started). Call once after recovery, before any launch. Returns how many went.
    pub async fn remove_orphans(&self) -> Result<usize, ContainerizerError> {
        let mine = self.list_mine().await?;
        let mut removed = 0;
        for (key, c) in mine {
            if self.tracked().contains_key(&key) {
                continue;
            }
            tracing::warn!(
                task = %key,
                container = %c.name,
                id = %c.id,
                state = %c.state,
                "removing a container of a task this agent no longer tracks"
            );
            self.remove(&c.id).await?;
            removed += 1;
        }
        *self.listed.lock().await = None;
        Ok(removed)
    }

    /// Copies the container's output into the sandbox until the container stops.
    async fn copy_logs(
        streams: Docker,
        name: String,
        sandbox: PathBuf,
        from_start: bool,
    ) -> Result<(), ContainerizerError> {
        let open = |file: &'static str| {
            let path = sandbox.join(file);
            let mut options = tokio::fs::OpenOptions::new();
            options.create(true);
            if from_start {
                options.write(true).truncate(true);
            } else {
                options.append(true);
            }
            async move {
                options
                    .open(&path)
                    .await
                    .ctx(|| format!("opening {}", path.display()))
            }
        };
        let (mut stdout, mut stderr) = (open("stdout").await?, open("stderr").await?);
        let options = LogsOptions::<String> {
            follow: true,
            stdout: true,
            stderr: true,
            tail: "all".into(),
            ..Default::default()
        };
        let mut logs = streams.logs(&name, Some(options));
        while let Some(item) = logs.next().await {
            let (file, bytes, which) = match item {
                Ok(LogOutput::StdOut { message }) => (&mut stdout, message, "stdout"),
                Ok(LogOutput::StdErr { message }) => (&mut stderr, message, "stderr"),
                Ok(_) => continue,
                Err(e) if is_not_found(&e) => break,
                Err(e) => {
                    return Err(ContainerizerError::Docker(format!(
                        "reading the logs of container {name}: {e}"
                    )))
                }
            };
            file.write_all(&bytes)
                .await
                .ctx(|| format!("writing the sandbox's {which}"))?;
        }
        stdout.flush().await.ctx(|| "flushing stdout".into())?;
        stderr.flush().await.ctx(|| "flushing stderr".into())?;
        Ok(())
    }

    /// Waits until the container no longer runs; its final inspection, or `None` when the
    /// container disappeared. Survives engine restarts and dropped connections: every
    /// wake-up is checked against the container's state.
    async fn wait_stopped(&self, name: &str) -> Option<ContainerInspectResponse> {
        loop {
            let mut wait = self
                .streams
                .wait_container(name, None::<WaitContainerOptions<String>>);
            // Non-zero exit codes come back as errors; the inspection below is the truth.
            let _ = wait.next().await;
            drop(wait);
            match self.api.inspect_container(name, None).await {
                Ok(info) => {
                    let running = info
                        .state
                        .as_ref()
                        .map(|s| {
                            s.running == Some(true)
                                || s.restarting == Some(true)
                                || s.status == Some(ContainerStateStatusEnum::CREATED)
                        })
                        .unwrap_or(false);
                    if !running {
                        return Some(info);
                    }
                }
                Err(e) if is_not_found(&e) => return None,
                Err(e) => tracing::warn!(container = %name, "inspecting the container: {e}"),
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}

#[async_trait]
impl Containerizer for DockerContainerizer {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn launch(&self, spec: LaunchSpec) -> Result<(), ContainerizerError> {
        if spec.group.is_some() {
            return Err(ContainerizerError::Launch(
                "Docker tasks cannot join a task group; run the group's tasks under the \
                 linux or process containerizer"
                    .into(),
            ));
        }
        let image = spec::image_of(&spec.task).map_err(ContainerizerError::Launch)?;
        let name = spec::container_name(spec.agent_id.as_str(), &spec.key);
        let cx = spec::Context {
            agent_id: spec.agent_id.as_str(),
            key: &spec.key,
            sandbox: &spec.sandbox,
            work_dir: self.layout.root(),
        };
        let (config, dirs) =
            spec::container_config(&spec.task, &cx).map_err(ContainerizerError::Launch)?;
        match self.api.inspect_image(image).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {
                return Err(ContainerizerError::Launch(format!(
                    "the docker image '{image}' is not present in the Docker engine on this \
                     agent; Drover never pulls images: build, load or import it on the agent \
                     first"
                )))
            }
            Err(e) => {
                return Err(ContainerizerError::Launch(format!(
                    "cannot inspect the docker image '{image}': {e}"
                )))
            }
        }
        for dir in &dirs {
            // The sandbox is fresh (the task has not run yet), so nothing in it can be a
            // symlink planted by the task.
            std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        }
        let options = CreateContainerOptions {
            name: name.clone(),
            platform: None,
        };
        if let Err(e) = self.api.create_container(Some(options), config).await {
            return Err(ContainerizerError::Launch(match e {
                EngineError::DockerResponseServerError {
                    status_code: 409, ..
                } => format!("a container named {name} already exists in the Docker engine"),
                e => format!("the Docker engine refused to create the container {name}: {e}"),
            }));
        }
        if let Err(e) = self.api.start_container::<String>(&name, None).await {
            // A container that never ran must not linger.
            if let Err(re) = self.remove(&name).await {
                tracing::warn!(container = %name, "{re}");
            }
            return Err(ContainerizerError::Launch(format!(
                "the Docker engine could not start the container {name} (image '{image}'): {e}"
            )));
        }
        let cgroups = self.cgroups_of(&name).await;
        self.tracked().insert(
            spec.key.clone(),
            Tracked {
                name,
                sandbox: spec.sandbox.clone(),
                reattached: false,
                cgroups,
            },
        );
        Ok(())
    }

    async fn recover(&self, key: &TaskKey) -> Result<Recovered, ContainerizerError> {
        let exit_path = self.exit_file(key);
        let recorded: Option<ContainerExit> =
            read_json(&exit_path).ctx(|| format!("reading {}", exit_path.display()))?;
        if let Some(exit) = recorded {
            // The previous agent recorded the outcome and may not have removed it yet.
            self.remove(&exit.container).await?;
            return Ok(Recovered::Ended);
        }
        let found = {
            let mut listed = self.listed.lock().await;
            if listed.is_none() {
                *listed = Some(self.list_mine().await?);
            }
            listed.as_ref().and_then(|l| l.get(key).cloned())
        };
        let Some(c) = found else {
            // No container: the previous agent stopped before creating it.
            return Ok(Recovered::NeverStarted);
        };
        let sandbox = self.layout.sandbox(key);
        let cgroups = match c.state.as_str() {
            "running" | "paused" | "restarting" => self.cgroups_of(&c.name).await,
            _ => None,
        };
        let track = |reattached| {
            self.tracked().insert(
                key.clone(),
                Tracked {
                    name: c.name.clone(),
                    sandbox: sandbox.clone(),
                    reattached,
                    cgroups: cgroups.clone(),
                },
            );
        };
        match c.state.as_str() {
            "created" => {
                // Created but never started: the previous agent stopped in between. It must
                // never start now that the task is reported as not started.
                self.remove(&c.id).await?;
                Ok(Recovered::NeverStarted)
            }
            "running" | "paused" | "restarting" => {
                track(true);
                let meta = self.layout.task_meta(key);
                // The previous agent may have stopped between the request and the stop.
                if let Some(req) = read_json::<KillRequest>(&meta.kill_request_file())
                    .ctx(|| format!("reading {}", meta.kill_request_file().display()))?
                {
                    let left = (req.requested_at + req.grace_secs - unix_seconds()).max(0.0);
                    self.stop_in_background(c.name.clone(), Duration::from_secs_f64(left));
                }
                Ok(Recovered::Running)
            }
            _ => {
                // exited, dead, removing: `wait` reads how it ended.
                track(true);
                Ok(Recovered::Ended)
            }
        }
    }

    async fn wait(&self, key: &TaskKey) -> Result<Termination, ContainerizerError> {
        let exit_path = self.exit_file(key);
        let recorded: Option<ContainerExit> =
            read_json(&exit_path).ctx(|| format!("reading {}", exit_path.display()))?;
        if let Some(exit) = recorded {
            self.tracked().remove(key);
            return Ok(exit.termination());
        }
        let Some(t) = self.tracked().get(key).cloned() else {
            return Err(ContainerizerError::Docker(format!(
                "no container is known for task {key}"
            )));
        };
        let logs = tokio::spawn(Self::copy_logs(
            self.streams.clone(),
            t.name.clone(),
            t.sandbox.clone(),
            t.reattached,
        ));
        let Some(info) = self.wait_stopped(&t.name).await else {
            logs.abort();
            self.tracked().remove(key);
            return Ok(Termination::Vanished {
                detail: format!(
                    "the container {} was removed from the Docker engine outside Drover",
                    t.name
                ),
            });
        };
        // With the container stopped, its log stream ends once it has delivered the rest.
        match tokio::time::timeout(LOG_DRAIN, logs).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(task = %key, "container output: {e}"),
            Ok(Err(e)) => tracing::warn!(task = %key, "container output copier: {e}"),
            Err(_) => tracing::warn!(task = %key, "the container's log stream did not end"),
        }
        let state = info.state.unwrap_or_default();
        let meta = self.layout.task_meta(key);
        let kill: Option<KillRequest> = read_json(&meta.kill_request_file())
            .ctx(|| format!("reading {}", meta.kill_request_file().display()))?;
        let code = state.exit_code.unwrap_or(-1);
        let exit = ContainerExit {
            container: t.name.clone(),
            record: ExitRecord {
                outcome: ExitOutcome::Exited {
                    code: i32::try_from(code).unwrap_or(-1),
                },
                killed: kill.is_some(),
                kill_reason: kill.map(|k| k.reason),
                task_pid: None,
                finished_at: unix_seconds(),
                // An OOM kill is reported through `ContainerExit::termination`, with what
                // the engine knows (not the peak usage that `Limitation` carries).
                limitation: None,
            },
            oom_killed: state.oom_killed.unwrap_or(false),
            memory_limit: info.host_config.and_then(|h| h.memory).unwrap_or_default(),
            engine_error: state.error.unwrap_or_default(),
        };
        // Durable before the container, and with it the engine's copy of the outcome, goes.
        write_json_atomic(&exit_path, &exit).ctx(|| format!("writing {}", exit_path.display()))?;
        self.remove(&t.name).await?;
        self.tracked().remove(key);
        Ok(exit.termination())
    }

    async fn kill(
        &self,
        key: &TaskKey,
        grace: Duration,
        reason: Reason,
    ) -> Result<(), ContainerizerError> {
        let meta = self.layout.task_meta(key);
        // Written before the stop: `wait` reports KILLED only for requested kills, and a
        // restarted agent that finds it repeats the stop.
        let request = KillRequest::now(grace, reason);
        let path = meta.kill_request_file();
        write_json_atomic(&path, &request).ctx(|| format!("writing {}", path.display()))?;
        let name = self.tracked().get(key).map(|t| t.name.clone());
        if let Some(name) = name {
            self.stop_in_background(name, grace);
        }
        Ok(())
    }

    fn usage(&self, key: &TaskKey) -> Option<pb::ResourceStatistics> {
        let cgroups = self.tracked().get(key)?.cgroups.clone()?;
        cgroups.exists().then(|| cgroups.statistics())
    }
}

#[cfg(test)]
mod tests;
