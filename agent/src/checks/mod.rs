//! Checks of running tasks: a general check (`TaskInfo.check`, results reported) and a
//! health check (`TaskInfo.health_check`, results judged; an unhealthy task is killed).
//!
//! - [`schedule`]: the pure core of one check (delay, interval, timeout, grace period,
//!   failures in a row), driven by instants the caller passes in;
//! - [`runner`]: one attempt (HTTP, TCP, COMMAND) against a task, inside its network
//!   namespace when it has one;
//! - [`command`]: the helper process a COMMAND check of a `linux` or `process` task runs
//!   in (the agent's binary re-executed, entering the container's namespaces, cgroups and
//!   user);
//! - this module: [`Checks`], one driver per check of each running task (a tokio task
//!   on the real clock), reporting [`Report`]s to the agent loop, which turns them into
//!   status updates and kills.
//!
//! Checks start when the task is RUNNING (launched, or found running by recovery: an
//! agent restart starts their delay and grace period again) and stop when it ends.

pub mod command;
pub mod runner;
pub mod schedule;

#[cfg(test)]
mod docker_tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use drover_proto::pb;
use tokio::sync::{mpsc, OnceCell};
use tokio::task::AbortHandle;

use crate::layout::{Layout, TaskKey};
use runner::{Runner, Target};
use schedule::{Checker, Effect, HealthRules, Kind, Timing};

/// What a check driver tells the agent loop.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub key: TaskKey,
    pub effect: Effect,
}

/// Where a task runs, resolved at each attempt (a container's init pid appears only once
/// it started, and a Docker container's pid changes if the engine restarts it).
#[derive(Clone, Debug)]
pub enum Place {
    /// `linux` or `process`: the supervisor's files in this meta directory.
    Supervised(crate::layout::TaskMeta),
    /// A Docker container, by name.
    Docker(String),
}

/// The running check drivers of every task. See the module docs.
pub struct Checks {
    exe: PathBuf,
    docker_socket: PathBuf,
    docker: Arc<OnceCell<Option<Arc<bollard::Docker>>>>,
    running: HashMap<TaskKey, Vec<AbortHandle>>,
}

impl Checks {
    /// `exe` is the agent's binary (re-executed for COMMAND checks).
    pub fn new(exe: PathBuf, docker_socket: PathBuf) -> Checks {
        Checks {
            exe,
            docker_socket,
            docker: Arc::new(OnceCell::new()),
            running: HashMap::new(),
        }
    }

    /// Starts the task's checks (none when it has none, or they already run).
    pub fn start<T>(
        &mut self,
        key: &TaskKey,
        task: &pb::TaskInfo,
        place: Place,
        reports: mpsc::Sender<T>,
    ) where
        T: From<Report> + Send + 'static,
    {
        if self.running.contains_key(key) {
            return;
        }
        let now = Instant::now();
        let mut drivers = Vec::new();
        let mut checkers = Vec::new();
        if let Some(check) = &task.check {
            checkers.push((check.clone(), Kind::Check));
        }
        if let Some(h) = &task.health_check {
            if let Some(check) = &h.check {
                checkers.push((check.clone(), Kind::Health(HealthRules::of(h))));
            }
        }
        for (check, kind) in checkers {
            let checker = Checker::new(kind, Timing::of(&check), runner::describe(&check), now);
            let driver = Driver {
                key: key.clone(),
                check,
                place: place.clone(),
                exe: self.exe.clone(),
                docker_socket: self.docker_socket.clone(),
                docker: self.docker.clone(),
            };
            let reports = reports.clone();
            drivers.push(tokio::spawn(driver.run(checker, reports)).abort_handle());
        }
        if !drivers.is_empty() {
            tracing::info!(task = %key, checks = drivers.len(), "checking the task");
            self.running.insert(key.clone(), drivers);
        }
    }

    /// Stops the task's checks (an attempt under way is abandoned, its process killed).
    pub fn stop(&mut self, key: &TaskKey) {
        if let Some(drivers) = self.running.remove(key) {
            for d in drivers {
                d.abort();
            }
        }
    }

    /// The tasks whose checks run.
    pub fn checked(&self) -> impl Iterator<Item = &TaskKey> {
        self.running.keys()
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        for d in self.running.values().flatten() {
            d.abort();
        }
    }
}

/// Where the Docker container of a task is, for [`Place::Docker`].
pub fn docker_place(agent_id: &str, key: &TaskKey) -> Place {
    Place::Docker(crate::containerizer::docker::spec::container_name(
        agent_id, key,
    ))
}

/// Where a supervised task's files are, for [`Place::Supervised`].
pub fn supervised_place(layout: &Layout, key: &TaskKey) -> Place {
    Place::Supervised(layout.task_meta(key))
}

struct Driver {
    key: TaskKey,
    check: pb::CheckInfo,
    place: Place,
    exe: PathBuf,
    docker_socket: PathBuf,
    docker: Arc<OnceCell<Option<Arc<bollard::Docker>>>>,
}

impl Driver {
    async fn run<T: From<Report>>(self, mut checker: Checker, reports: mpsc::Sender<T>) {
        let t = pb::check_info::Type::try_from(self.check.r#type)
            .unwrap_or(pb::check_info::Type::Unspecified);
        while let Some(due) = checker.next_attempt() {
            tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
            let timeout = checker.timing().timeout;
            let outcome = match self.target().await {
                Ok(target) => {
                    Runner::new(
                        self.check.clone(),
                        target,
                        self.exe.clone(),
                        self.docker().await,
                    )
                    .attempt(timeout)
                    .await
                }
                Err(why) => schedule::Outcome {
                    success: false,
                    status: pb::CheckStatusInfo {
                        r#type: t as i32,
                        tcp_succeeded: (t == pb::check_info::Type::Tcp).then_some(false),
                        ..Default::default()
                    },
                    detail: why,
                },
            };
            tracing::debug!(task = %self.key, success = outcome.success, detail = %outcome.detail, "check attempt");
            for effect in checker.record(Instant::now(), outcome) {
                let report = Report {
                    key: self.key.clone(),
                    effect,
                };
                if reports.send(report.into()).await.is_err() {
                    return;
                }
            }
        }
    }

    async fn docker(&self) -> Option<Arc<bollard::Docker>> {
        if !matches!(self.place, Place::Docker(_)) {
            return None;
        }
        let socket = self.docker_socket.clone();
        self.docker
            .get_or_init(|| async move {
                match crate::containerizer::docker::connect(&socket).await {
                    Ok(d) => Some(Arc::new(d)),
                    Err(e) => {
                        tracing::warn!("checks of Docker tasks cannot reach the engine: {e}");
                        None
                    }
                }
            })
            .await
            .clone()
    }

    async fn target(&self) -> Result<Target, String> {
        match &self.place {
            Place::Supervised(meta) => Target::supervised(meta).map_err(|e| e.to_string()),
            Place::Docker(name) => {
                let docker = self
                    .docker()
                    .await
                    .ok_or("the Docker engine is not available")?;
                let info = docker
                    .inspect_container(name, None)
                    .await
                    .map_err(|e| format!("inspecting container {name}: {e}"))?;
                let host_network = info
                    .host_config
                    .as_ref()
                    .and_then(|h| h.network_mode.as_deref())
                    .is_none_or(|m| m == "host");
                let pid = info
                    .state
                    .as_ref()
                    .and_then(|s| s.pid)
                    .filter(|p| *p > 0)
                    .map(|p| p as i32);
                if !host_network && pid.is_none() {
                    return Err(format!("container {name} is not running"));
                }
                Ok(Target::Docker {
                    container: name.clone(),
                    netns_pid: if host_network { None } else { pid },
                })
            }
        }
    }
}
