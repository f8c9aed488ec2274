//! Custom executors: the [`Executor`] trait, its driver [`run_executor`] and the
//! [`ExecutorDriver`] handle its callbacks use.
//!
//! A scheduler launches tasks on a custom executor by giving them an `ExecutorInfo` of
//! type CUSTOM ([`custom_executor`] and [`crate::TaskBuilder::executor`]). The agent
//! starts the executor's command once per (framework, executor id) in a sandbox of its
//! own, with `DROVER_AGENT_ENDPOINT`, `DROVER_FRAMEWORK_ID`, `DROVER_EXECUTOR_ID` and
//! `DROVER_SANDBOX` in its environment, and hands it every task that names it. The
//! executor's `main` calls [`run_executor`], which subscribes to the agent, delivers the
//! events to the [`Executor`] one at a time, resends updates the agent has not
//! acknowledged after a reconnection (an agent restart does not stop executors), and
//! returns when the agent sends SHUTDOWN (the agent does once the executor has no task
//! left).
//!
//! ```no_run
//! use drover_sdk::executor::{run_executor, Executor, ExecutorDriver};
//! use drover_sdk::proto::{pb, TaskId};
//! use drover_sdk::async_trait;
//!
//! /// Runs nothing: reports each task finished at once.
//! struct Instant;
//!
//! #[async_trait]
//! impl Executor for Instant {
//!     async fn launch(&mut self, driver: &ExecutorDriver, task: pb::TaskInfo) {
//!         let id = task.task_id.unwrap_or_default();
//!         let _ = driver.update(&id, pb::TaskState::TaskRunning).await;
//!         let _ = driver.update(&id, pb::TaskState::TaskFinished).await;
//!     }
//!     async fn kill(&mut self, driver: &ExecutorDriver, task_id: TaskId, _: Option<pb::KillPolicy>) {
//!         let _ = driver.update(&task_id, pb::TaskState::TaskKilled).await;
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), drover_sdk::SdkError> {
//!     run_executor(Instant).await
//! }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use drover_proto::pb::{self, executor_client::ExecutorClient, executor_event};
use drover_proto::{states, ExecutorId, FrameworkId, TaskId};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::error::SdkError;

/// A custom executor: one async callback per event from the agent. Callbacks run one at
/// a time; long work (a task's process) belongs in a spawned task that reports through a
/// clone of the [`ExecutorDriver`].
#[async_trait]
pub trait Executor: Send + 'static {
    /// The agent accepted the subscription (again, after a reconnection).
    async fn subscribed(&mut self, _driver: &ExecutorDriver, _info: Subscribed) {}

    /// Run this task, and report its states with [`ExecutorDriver::update`].
    async fn launch(&mut self, driver: &ExecutorDriver, task: pb::TaskInfo);

    /// Stop this task (within the kill policy's grace period, if any) and report
    /// TASK_KILLED. If it still runs after that period, the agent kills the executor.
    async fn kill(
        &mut self,
        driver: &ExecutorDriver,
        task_id: TaskId,
        kill_policy: Option<pb::KillPolicy>,
    );

    /// The framework acknowledged this update (the driver forgets it before calling).
    async fn acknowledged(&mut self, _driver: &ExecutorDriver, _task_id: TaskId, _uuid: Vec<u8>) {}

    /// The agent asks the executor to exit: stop every task and report them. The driver
    /// returns from [`run_executor`] when this returns.
    async fn shutdown(&mut self, _driver: &ExecutorDriver) {}

    /// The agent reported an error.
    async fn error(&mut self, _driver: &ExecutorDriver, _message: String) {}

    /// The framework sent this executor a message (`Driver::message` on the scheduler
    /// side). Delivery is best effort: at most once, and not at all while the executor
    /// is not subscribed.
    async fn message(&mut self, _driver: &ExecutorDriver, _data: Vec<u8>) {}
}

/// What the SUBSCRIBED event carries.
#[derive(Clone, Debug)]
pub struct Subscribed {
    /// The agent running this executor.
    pub agent_id: drover_proto::AgentId,
    /// This executor's description, as the framework launched it.
    pub executor_info: pb::ExecutorInfo,
    /// The framework's description.
    pub framework_info: Option<pb::FrameworkInfo>,
}

/// An `ExecutorInfo` of type CUSTOM running `shell_command` under `/bin/sh -c` (use
/// [`crate::TaskBuilder::executor`] to attach it to tasks). Tasks of one framework that
/// name the same executor id on the same agent share one executor process, and must carry
/// the same `ExecutorInfo`.
pub fn custom_executor(
    executor_id: impl Into<ExecutorId>,
    shell_command: impl Into<String>,
) -> pb::ExecutorInfo {
    let executor_id: ExecutorId = executor_id.into();
    pb::ExecutorInfo {
        name: executor_id.to_string(),
        executor_id: Some(executor_id),
        r#type: pb::executor_info::Type::Custom as i32,
        command: Some(pb::CommandInfo {
            value: shell_command.into(),
            shell: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Where the executor finds its agent and who it is; [`ExecutorConfig::from_env`] reads
/// what the agent sets.
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// `DROVER_AGENT_ENDPOINT`, e.g. `http://10.0.0.5:5051`.
    pub agent_endpoint: String,
    /// `DROVER_FRAMEWORK_ID`.
    pub framework_id: FrameworkId,
    /// `DROVER_EXECUTOR_ID`.
    pub executor_id: ExecutorId,
    /// `DROVER_SANDBOX`: the executor's working directory.
    pub sandbox: Option<std::path::PathBuf>,
    /// How long to keep trying to reach a restarting agent before giving up (default 15
    /// minutes).
    pub recovery_timeout: Duration,
}

impl ExecutorConfig {
    /// Reads the variables the agent gives every custom executor.
    pub fn from_env() -> Result<ExecutorConfig, SdkError> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| {
                SdkError::Config(format!(
                    "{name} is not set: a custom executor is started by a Drover agent, which sets it"
                ))
            })
        };
        Ok(ExecutorConfig {
            agent_endpoint: var("DROVER_AGENT_ENDPOINT")?,
            framework_id: FrameworkId::new(var("DROVER_FRAMEWORK_ID")?),
            executor_id: ExecutorId::new(var("DROVER_EXECUTOR_ID")?),
            sandbox: std::env::var_os("DROVER_SANDBOX").map(Into::into),
            recovery_timeout: Duration::from_secs(15 * 60),
        })
    }
}

#[derive(Default)]
struct Shared {
    client: Option<ExecutorClient<Channel>>,
    /// Tasks the agent launched here and that have not sent a terminal update.
    launched: BTreeSet<TaskId>,
    /// Updates sent and not acknowledged yet, in order, per task.
    unacknowledged: BTreeMap<TaskId, Vec<pb::TaskStatus>>,
}

/// The executor's handle to its agent, cloneable into spawned tasks.
#[derive(Clone)]
pub struct ExecutorDriver {
    framework_id: FrameworkId,
    executor_id: ExecutorId,
    shared: Arc<Mutex<Shared>>,
}

impl ExecutorDriver {
    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This executor's id.
    pub fn executor_id(&self) -> &ExecutorId {
        &self.executor_id
    }

    /// The framework this executor belongs to.
    pub fn framework_id(&self) -> &FrameworkId {
        &self.framework_id
    }

    /// Reports a task's new state (see [`Self::send_update`]).
    pub async fn update(&self, task_id: &TaskId, state: pb::TaskState) -> Result<(), SdkError> {
        self.send_update(pb::TaskStatus {
            task_id: Some(task_id.clone()),
            state: state as i32,
            ..Default::default()
        })
        .await
    }

    /// Sends a status update to the agent, which checkpoints it and delivers it to the
    /// framework until acknowledged. The driver sets the uuid, the source (EXECUTOR), the
    /// executor id and the timestamp. An update the agent could not be reached for is
    /// kept and resent after the next subscription (Ok is returned); one the agent refuses
    /// (unknown task, task already ended, …) returns the refusal.
    pub async fn send_update(&self, mut status: pb::TaskStatus) -> Result<(), SdkError> {
        status.uuid = uuid::Uuid::new_v4().as_bytes().to_vec();
        status.source = pb::task_status::Source::Executor as i32;
        status.executor_id = Some(self.executor_id.clone());
        status.timestamp = drover_proto::unix_seconds();
        let task_id = status.task_id.clone().unwrap_or_default();
        let client = {
            let mut shared = self.shared();
            shared
                .unacknowledged
                .entry(task_id.clone())
                .or_default()
                .push(status.clone());
            if states::is_terminal(states::from_i32(status.state)) {
                shared.launched.remove(&task_id);
            }
            shared.client.clone()
        };
        let Some(client) = client else {
            return Ok(()); // resent once subscribed
        };
        match self.call_update(client, status.clone()).await {
            Ok(()) => Ok(()),
            Err(s) if transient(&s) => Ok(()),
            Err(s) => {
                let mut shared = self.shared();
                if let Some(list) = shared.unacknowledged.get_mut(&task_id) {
                    list.retain(|u| u.uuid != status.uuid);
                    if list.is_empty() {
                        shared.unacknowledged.remove(&task_id);
                    }
                }
                Err(SdkError::Call {
                    call: "executor update",
                    status: Box::new(s),
                })
            }
        }
    }

    /// Sends the framework a message (at most 64 KiB), relayed once through the agent
    /// and the master, best effort: it is lost if the framework is not connected. Fails
    /// with UNAVAILABLE while the agent cannot be reached or has no master, and with
    /// RESOURCE_EXHAUSTED beyond 100 messages a second: send again later if it matters
    /// (or put results that must arrive in a status update's `data`).
    pub async fn send_message(&self, data: Vec<u8>) -> Result<(), SdkError> {
        let client = self.shared().client.clone();
        let unavailable = || SdkError::Call {
            call: "executor message",
            status: Box::new(tonic::Status::unavailable(
                "the executor is not subscribed to its agent right now",
            )),
        };
        let mut client = client.ok_or_else(unavailable)?;
        client
            .message(pb::ExecutorMessageCall {
                framework_id: Some(self.framework_id.clone()),
                executor_id: Some(self.executor_id.clone()),
                data,
            })
            .await
            .map(|_| ())
            .map_err(|s| SdkError::Call {
                call: "executor message",
                status: Box::new(s),
            })
    }

    async fn call_update(
        &self,
        mut client: ExecutorClient<Channel>,
        status: pb::TaskStatus,
    ) -> Result<(), tonic::Status> {
        client
            .update(pb::ExecutorUpdateCall {
                framework_id: Some(self.framework_id.clone()),
                executor_id: Some(self.executor_id.clone()),
                status: Some(status),
            })
            .await
            .map(|_| ())
    }
}

/// Failures a resend after the next subscription may overcome.
fn transient(s: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(
        s.code(),
        Unavailable | Unknown | Cancelled | DeadlineExceeded | Aborted | Internal
    )
}

/// Runs an executor with the configuration the agent put in the environment; see the
/// module docs.
pub async fn run_executor(executor: impl Executor) -> Result<(), SdkError> {
    run_executor_with(ExecutorConfig::from_env()?, executor).await
}

/// [`run_executor`] with an explicit configuration.
pub async fn run_executor_with(
    config: ExecutorConfig,
    mut executor: impl Executor,
) -> Result<(), SdkError> {
    let endpoint = Endpoint::from_shared(config.agent_endpoint.clone())
        .map_err(|e| SdkError::Config(format!("DROVER_AGENT_ENDPOINT: {e}")))?
        .connect_timeout(Duration::from_secs(5));
    let driver = ExecutorDriver {
        framework_id: config.framework_id.clone(),
        executor_id: config.executor_id.clone(),
        shared: Arc::new(Mutex::new(Shared::default())),
    };
    // The same jittered backoff as every other Drover client (`drover_proto::leader`): an
    // agent restarting under many executors is not hit by all of them in lock step.
    let mut backoff = drover_proto::leader::Backoff::default();
    let mut unreachable_since = Instant::now();
    loop {
        let attempt = async {
            let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
            // The agent's events are held to the link's limit (drover_proto::limits).
            let mut client = ExecutorClient::new(channel)
                .max_decoding_message_size(drover_proto::limits::MAX_EXECUTOR_EVENT_BYTES);
            // Tasks that ended here but whose terminal update the agent has not
            // acknowledged count as launched too: the agent (restarted meanwhile) has not
            // heard that they ended and would otherwise launch them a second time.
            let launched = {
                let shared = driver.shared();
                let mut ids: BTreeSet<TaskId> = shared.launched.clone();
                ids.extend(shared.unacknowledged.keys().cloned());
                ids.into_iter().collect()
            };
            let stream = client
                .subscribe(pb::ExecutorSubscribeRequest {
                    framework_id: Some(config.framework_id.clone()),
                    executor_id: Some(config.executor_id.clone()),
                    launched_tasks: launched,
                })
                .await
                .map_err(|s| {
                    if s.code() == tonic::Code::NotFound || s.code() == tonic::Code::InvalidArgument
                    {
                        Err(SdkError::Subscribe {
                            master: config.agent_endpoint.clone(),
                            status: Box::new(s),
                        })
                    } else {
                        Ok(s.to_string())
                    }
                });
            match stream {
                Ok(s) => Ok(Ok((client, s.into_inner()))),
                Err(Err(fatal)) => Ok(Err(fatal)),
                Err(Ok(why)) => Err(why),
            }
        };
        let (client, mut stream) = match attempt.await {
            Ok(Ok(subscribed)) => subscribed,
            Ok(Err(fatal)) => return Err(fatal),
            Err(why) => {
                if unreachable_since.elapsed() > config.recovery_timeout {
                    return Err(SdkError::Config(format!(
                        "the agent at {} was unreachable for {:?}: {why}",
                        config.agent_endpoint, config.recovery_timeout
                    )));
                }
                tracing::debug!("subscribing to the agent failed: {why}; retrying");
                let delay = backoff.next_delay(&mut rand::thread_rng());
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        backoff.reset();
        while let Some(item) = stream.next().await {
            let Ok(ev) = item else { break };
            match ev.event {
                Some(executor_event::Event::Subscribed(s)) => {
                    // The stream is live: updates go straight to the agent again, and what
                    // was not acknowledged goes first, in order.
                    let pending: Vec<pb::TaskStatus> = {
                        let mut shared = driver.shared();
                        shared.client = Some(client.clone());
                        shared.unacknowledged.values().flatten().cloned().collect()
                    };
                    for status in pending {
                        let uuid = status.uuid.clone();
                        let task_id = status.task_id.clone().unwrap_or_default();
                        if let Err(s) = driver.call_update(client.clone(), status).await {
                            if !transient(&s) {
                                tracing::warn!(task = %task_id, "the agent refused a resent update: {}", s.message());
                                let mut shared = driver.shared();
                                if let Some(list) = shared.unacknowledged.get_mut(&task_id) {
                                    list.retain(|u| u.uuid != uuid);
                                }
                            }
                        }
                    }
                    let info = Subscribed {
                        agent_id: s.agent_id.unwrap_or_default(),
                        executor_info: s.executor_info.unwrap_or_default(),
                        framework_info: s.framework_info,
                    };
                    executor.subscribed(&driver, info).await;
                }
                Some(executor_event::Event::Launch(l)) => {
                    let task = l.task.unwrap_or_default();
                    let id = task.task_id.clone().unwrap_or_default();
                    {
                        let mut shared = driver.shared();
                        // Already running here, or ended with its update still on its
                        // way: never run a task twice.
                        if shared.unacknowledged.contains_key(&id) || !shared.launched.insert(id) {
                            continue;
                        }
                    }
                    executor.launch(&driver, task).await;
                }
                Some(executor_event::Event::Kill(k)) => {
                    executor
                        .kill(&driver, k.task_id.unwrap_or_default(), k.kill_policy)
                        .await;
                }
                Some(executor_event::Event::Acknowledged(a)) => {
                    let task_id = a.task_id.unwrap_or_default();
                    {
                        let mut shared = driver.shared();
                        if let Some(list) = shared.unacknowledged.get_mut(&task_id) {
                            list.retain(|u| u.uuid != a.uuid);
                            if list.is_empty() {
                                shared.unacknowledged.remove(&task_id);
                            }
                        }
                    }
                    executor.acknowledged(&driver, task_id, a.uuid).await;
                }
                Some(executor_event::Event::Shutdown(_)) => {
                    executor.shutdown(&driver).await;
                    return Ok(());
                }
                Some(executor_event::Event::Error(e)) => {
                    executor.error(&driver, e.message).await;
                }
                Some(executor_event::Event::Message(m)) => {
                    executor.message(&driver, m.data).await;
                }
                // Task groups go to the default executor.
                Some(executor_event::Event::LaunchGroup(_)) | None => {}
            }
        }
        tracing::info!("the agent's event stream ended; subscribing again");
        driver.shared().client = None;
        unreachable_since = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_executor_info() {
        let e = custom_executor("ex-1", "./my-executor --flag");
        assert_eq!(e.r#type, pb::executor_info::Type::Custom as i32);
        assert_eq!(e.executor_id.unwrap().as_str(), "ex-1");
        assert!(e.command.unwrap().shell);
    }

    #[test]
    fn only_transport_failures_are_retried() {
        assert!(transient(&tonic::Status::unavailable("x")));
        assert!(!transient(&tonic::Status::failed_precondition("x")));
        assert!(!transient(&tonic::Status::not_found("x")));
    }
}
