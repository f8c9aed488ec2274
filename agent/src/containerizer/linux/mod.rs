//! The `linux` containerizer: each task runs in its own PID, mount, UTS and IPC namespaces
//! (and network namespace when `ContainerInfo.network` is ISOLATED), under a small init
//! that is PID 1 there ([`init`]), held to its resources by cgroups ([`cgroups`]).
//!
//! It reuses the process containerizer's supervisor machinery: the same supervisor, in its
//! own session, outside the container and its cgroups, outlives the agent, writes the
//! exit record, and is found again by recovery through `supervisor.json`. What this module
//! adds on the agent's side:
//! - the limits (cpu shares and CFS quota from `cpus`, memory from `mem`, pids from
//!   `--pids-limit` or `ContainerInfo.pids_limit`), written to the container's cgroups
//!   before the supervisor starts; the init joins them before the command exists;
//! - `container.json` in the task's meta directory (container id and cgroup paths),
//!   written before the cgroups are created, so a restarted agent can measure and tear
//!   down what an earlier one created;
//! - usage samples from the cgroups ([`Containerizer::usage`]);
//! - teardown after the supervisor is done (it tears down itself; this repeats it for a
//!   supervisor that was killed): every process left in the cgroups is killed and the
//!   cgroups are removed.
//!
//! A task may run inside a root filesystem: the image it names is turned into a directory
//! by a [`RootfsProvider`] (the image store plugs in here); the init pivots into it with
//! the sandbox at `/mnt/sandbox`.

pub mod cgroups;
pub mod init;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use drover_proto::pb::{self, container_info, task_status::Reason};
use drover_proto::Resources;
use serde::{Deserialize, Serialize};

use super::process::ProcessContainerizer;
use super::{Containerizer, LaunchSpec, Recovered, Termination};
use crate::error::{AgentError, IoContext};
use crate::fsutil::{read_json, replace_unsynced};
use crate::layout::{Layout, TaskKey};
use crate::supervisor::records::{ContainerLaunch, SANDBOX_IN_ROOTFS};
use cgroups::{ContainerCgroups, Hierarchies, Limits};

/// Turns the image a task names into a root filesystem directory for its container
/// (prepared for this one task: the container may write into it). The image store
/// provides it; without one, tasks naming an image fail to launch.
pub type RootfsProvider =
    Arc<dyn Fn(&TaskKey, &pb::Image) -> Result<PathBuf, AgentError> + Send + Sync>;

/// The longest hostname the kernel accepts.
const MAX_HOSTNAME: usize = 64;

/// `container.json`: what a restarted agent needs to find a container's cgroups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerCheckpoint {
    pub container_id: String,
    pub cgroups: ContainerCgroups,
}

/// The agent's settings for linux containers.
#[derive(Clone, Debug)]
pub struct LinuxOptions {
    /// Relative to each hierarchy's root; the agent's containers live below
    /// `<cgroups_root>/<work dir tag>/`.
    pub cgroups_root: PathBuf,
    /// `pids.max` of a container whose task names no limit.
    pub pids_limit: u64,
    pub default_grace: Duration,
}

/// See the module docs.
pub struct LinuxContainerizer {
    supervisors: ProcessContainerizer,
    layout: Layout,
    hierarchies: Hierarchies,
    /// Relative path of this agent's cgroups in every hierarchy.
    agent_root: PathBuf,
    pids_limit: u64,
    rootfs: Option<RootfsProvider>,
    /// Never held across an await.
    containers: Mutex<HashMap<TaskKey, ContainerCgroups>>,
}

impl LinuxContainerizer {
    /// Fails with the reason when this machine cannot run linux containers (not root,
    /// a required cgroup controller missing).
    pub fn new(
        layout: Layout,
        supervisor_exe: PathBuf,
        options: LinuxOptions,
    ) -> Result<Self, String> {
        usable_here()?;
        let hierarchies = Hierarchies::detect().map_err(|e| format!("reading cgroups: {e}"))?;
        hierarchies.usable()?;
        let agent_root = options
            .cgroups_root
            .join(cgroups::work_dir_tag(layout.root()));
        Ok(LinuxContainerizer {
            supervisors: ProcessContainerizer::new(
                layout.clone(),
                supervisor_exe,
                options.default_grace,
            ),
            layout,
            hierarchies,
            agent_root,
            pids_limit: options.pids_limit,
            rootfs: None,
            containers: Mutex::new(HashMap::new()),
        })
    }

    /// Where images become root filesystems.
    pub fn with_rootfs_provider(mut self, provider: RootfsProvider) -> Self {
        self.rootfs = Some(provider);
        self
    }

    pub fn hierarchies(&self) -> &Hierarchies {
        &self.hierarchies
    }

    /// This agent's cgroup directory, relative to each hierarchy's root.
    pub fn agent_cgroup_root(&self) -> &Path {
        &self.agent_root
    }

    fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<TaskKey, ContainerCgroups>> {
        self.containers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn container_file(&self, key: &TaskKey) -> PathBuf {
        self.layout.task_meta(key).dir().join("container.json")
    }

    fn limits(&self, task: &pb::TaskInfo) -> Result<Limits, AgentError> {
        let resources = Resources::from_proto(&task.resources)
            .map_err(|e| AgentError::Launch(format!("the task's resources are invalid: {e}")))?;
        let positive = |v: f64| (v > 0.0).then_some(v);
        let pids = match task.container.as_ref().map(|c| c.pids_limit) {
            Some(n) if n > 0 => u64::from(n),
            _ => self.pids_limit,
        };
        let limits = Limits {
            cpus: positive(resources.cpus()),
            mem_mb: positive(resources.mem()),
            pids,
        };
        limits.validate().map_err(AgentError::Launch)?;
        Ok(limits)
    }

    fn rootfs_for(&self, spec: &LaunchSpec) -> Result<Option<PathBuf>, AgentError> {
        let Some(image) = spec
            .task
            .container
            .as_ref()
            .and_then(|c| c.image.as_ref())
            .filter(|i| !i.name.is_empty())
        else {
            return Ok(None);
        };
        let provider = self.rootfs.as_ref().ok_or_else(|| {
            AgentError::Launch(format!(
                "the task names the image '{}', but this agent has no image store",
                image.name
            ))
        })?;
        let path = provider(&spec.key, image)?;
        if !path.is_absolute() || !path.is_dir() {
            return Err(AgentError::Launch(format!(
                "the root filesystem {} prepared for image '{}' is not a directory",
                path.display(),
                image.name
            )));
        }
        Ok(Some(path))
    }

    async fn teardown(&self, key: &TaskKey) -> Option<String> {
        let cgroups = self.containers().remove(key)?;
        let leftovers = cgroups.pids().len();
        let result = tokio::task::spawn_blocking(move || cgroups.destroy()).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(task = %key, "removing the container's cgroups: {e}"),
            Err(e) => tracing::warn!(task = %key, "cgroup teardown panicked: {e}"),
        }
        // The agent's own directory goes with its last container (rmdir of a directory
        // with containers in it fails, harmlessly); a launch re-creates it.
        self.hierarchies.remove_if_empty(&self.agent_root);
        (leftovers > 0).then(|| format!("killed {leftovers} process(es) left in its cgroups"))
    }
}

/// The linux containerizer needs root (namespaces, mounts, cgroups).
fn usable_here() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the agent does not run as root".into());
    }
    Ok(())
}

/// The container's hostname: `ContainerInfo.hostname`, checked, or the task id.
fn hostname_for(
    key: &TaskKey,
    container: Option<&pb::ContainerInfo>,
) -> Result<String, AgentError> {
    let asked = container.map(|c| c.hostname.as_str()).unwrap_or("");
    if asked.is_empty() {
        // Task ids are letters, digits and - _ . : @; cut to what the kernel takes.
        let mut name = key.task_id.as_str().to_string();
        while name.len() > MAX_HOSTNAME {
            name.pop();
        }
        return Ok(name);
    }
    let valid = asked.len() <= MAX_HOSTNAME
        && asked.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !valid {
        return Err(AgentError::Launch(format!(
            "the container's hostname '{asked}' is not a valid hostname (letters, digits and \
             '-' in dot-separated labels, at most {MAX_HOSTNAME} bytes)"
        )));
    }
    Ok(asked.to_string())
}

#[async_trait]
impl Containerizer for LinuxContainerizer {
    fn name(&self) -> &'static str {
        "linux"
    }

    async fn launch(&self, spec: LaunchSpec) -> Result<(), AgentError> {
        let info = spec.task.container.as_ref();
        let limits = self.limits(&spec.task)?;
        let hostname = hostname_for(&spec.key, info)?;
        let isolate_network =
            info.is_some_and(|c| c.network == container_info::Network::Isolated as i32);
        if info.is_some_and(|c| !c.volumes.is_empty()) {
            return Err(AgentError::Launch(
                "volumes are not supported by the linux containerizer yet".into(),
            ));
        }
        let rootfs = self.rootfs_for(&spec)?;
        let mut sup_spec = self.supervisors.build_spec(&spec)?;
        if rootfs.is_some() {
            // Inside, the sandbox is where the init mounted it.
            for (name, value) in &mut sup_spec.env {
                if name == "DROVER_SANDBOX" {
                    *value = SANDBOX_IN_ROOTFS.to_string();
                }
            }
        }

        let container_id = uuid::Uuid::new_v4().simple().to_string();
        let cgroups = self
            .hierarchies
            .container(&self.agent_root.join(&container_id));
        // Before the cgroups exist: a restarted agent must be able to remove them. Not
        // synced: cgroups do not outlive a power loss.
        let checkpoint = ContainerCheckpoint {
            container_id: container_id.clone(),
            cgroups: cgroups.clone(),
        };
        let path = self.container_file(&spec.key);
        serde_json::to_vec_pretty(&checkpoint)
            .map_err(std::io::Error::other)
            .and_then(|bytes| replace_unsynced(&path, &bytes))
            .ctx(|| format!("writing {}", path.display()))?;
        let created = {
            let cgroups = cgroups.clone();
            tokio::task::spawn_blocking(move || cgroups.create(&limits))
                .await
                .map_err(|e| AgentError::Launch(format!("cgroup setup panicked: {e}")))?
        };
        created.map_err(|e| {
            AgentError::Launch(format!("cannot set up the container's cgroups: {e}"))
        })?;
        self.containers().insert(spec.key.clone(), cgroups.clone());

        sup_spec.container = Some(ContainerLaunch {
            container_id,
            hostname,
            isolate_network,
            rootfs,
            cgroups,
        });
        let key = spec.key.clone();
        if let Err(e) = self.supervisors.start_supervisor(&spec, &sup_spec).await {
            self.teardown(&key).await;
            return Err(e);
        }
        Ok(())
    }

    async fn recover(&self, key: &TaskKey) -> Result<Recovered, AgentError> {
        let path = self.container_file(key);
        match read_json::<ContainerCheckpoint>(&path) {
            Ok(Some(cp)) => {
                self.containers().insert(key.clone(), cp.cgroups);
            }
            Ok(None) => {}
            // Only a power loss tears it, and then no cgroup of it is left either.
            Err(e) => tracing::warn!(task = %key, "ignoring {}: {e}", path.display()),
        }
        let found = self.supervisors.recover(key).await?;
        if found == Recovered::NeverStarted {
            // No wait follows: the cgroups (if the previous agent got that far) go now.
            self.teardown(key).await;
        }
        Ok(found)
    }

    async fn wait(&self, key: &TaskKey) -> Result<Termination, AgentError> {
        let ended = self.supervisors.wait(key).await;
        // The supervisor removed the cgroups; after a supervisor that was killed, its
        // container may still run: nothing of a task we report as ended keeps running.
        let swept = self.teardown(key).await;
        match ended? {
            Termination::Vanished { detail } => Ok(Termination::Vanished {
                detail: match swept {
                    Some(s) => format!("{detail}; {s}"),
                    None => detail,
                },
            }),
            recorded => Ok(recorded),
        }
    }

    async fn kill(&self, key: &TaskKey, grace: Duration, reason: Reason) -> Result<(), AgentError> {
        self.supervisors.kill(key, grace, reason).await
    }

    fn usage(&self, key: &TaskKey) -> Option<pb::ResourceStatistics> {
        let cgroups = self.containers().get(key).cloned()?;
        cgroups.exists().then(|| cgroups.statistics())
    }
}

#[cfg(test)]
mod tests;
