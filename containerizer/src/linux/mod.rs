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
//! A task whose `ContainerInfo.image` names an image runs inside it: a [`RootfsProvider`]
//! (the agent's image store) prepares the image's root filesystem in the task's meta
//! directory (`<meta>/image/`, mode 0700, outside the sandbox); the task's command runs
//! there (or, without one, the image's `Entrypoint` + `Cmd`), with the image's
//! environment under the task's, as the task's user or the image's `User` (looked up in
//! the image's own `/etc/passwd` and `/etc/group`), in the image's `WorkingDir` or else
//! the sandbox; the init pivots into it with the sandbox at `/mnt/sandbox` and a small
//! `/dev`. The root filesystem is unmounted and removed once the container's last process
//! is gone ([`crate::images::cleanup_rootfs`]), after an agent restart too.

pub mod cgroups;
pub mod holder;
pub mod init;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use drover_proto::pb::{self, container_info, task_status::Reason};
use drover_proto::Resources;
use serde::{Deserialize, Serialize};

use super::process::{command_line, drover_env, ProcessContainerizer};
use super::{Containerizer, LaunchSpec, Recovered, Termination};
use crate::error::{ContainerizerError, IoContext};
use crate::fsutil::{read_json, replace_unsynced};
use crate::images::{cleanup_rootfs, lookup_user, PreparedRootfs};
use crate::layout::{Layout, TaskKey};
use crate::supervisor::records::{
    ContainerLaunch, SupervisorSpec, UserSpec, SANDBOX_IN_ROOTFS, SHARED_VOLUME_IN_SANDBOX,
};
use cgroups::{ContainerCgroups, Hierarchies, Limits};

/// Prepares a root filesystem of the image a task names for one container, in the
/// directory given (its own, outside the sandbox: `rootfs/` and `overlay/` are made in
/// it), as [`crate::images::ImageStore::prepare_rootfs`] does; the containerizer undoes
/// it with [`crate::images::cleanup_rootfs`] once the container's last process is gone.
/// The agent plugs its image store in here; without one, tasks naming an image fail to
/// launch.
pub type RootfsProvider =
    Arc<dyn Fn(&pb::Image, &Path) -> Result<PreparedRootfs, ContainerizerError> + Send + Sync>;

/// `PATH` inside an image whose config sets none (Docker's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

    fn limits(&self, task: &pb::TaskInfo) -> Result<Limits, ContainerizerError> {
        let resources = Resources::from_proto(&task.resources).map_err(|e| {
            ContainerizerError::Launch(format!("the task's resources are invalid: {e}"))
        })?;
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
        limits.validate().map_err(ContainerizerError::Launch)?;
        Ok(limits)
    }

    /// `<meta>/image/`: the task's root filesystem (`rootfs/`, and `overlay/` for its
    /// writes), beside its other records and outside its sandbox.
    fn image_dir(&self, key: &TaskKey) -> PathBuf {
        self.layout.task_meta(key).dir().join("image")
    }

    /// The root filesystem of the image the task names, if it names one.
    async fn prepare_image(
        &self,
        spec: &LaunchSpec,
    ) -> Result<Option<PreparedRootfs>, ContainerizerError> {
        let Some(image) = image_of(&spec.task) else {
            return Ok(None);
        };
        let provider = self.rootfs.clone().ok_or_else(|| {
            ContainerizerError::Launch(format!(
                "the task names the image '{}', but this agent has no image store",
                image.name
            ))
        })?;
        let dir = self.image_dir(&spec.key);
        let image = image.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
            // The container's files (set-uid binaries included) are nobody else's business.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .ctx(|| format!("restricting {}", dir.display()))?;
            provider(&image, &dir).map_err(|e| {
                ContainerizerError::Launch(format!(
                    "cannot prepare the image '{}': {e}",
                    image.name
                ))
            })
        })
        .await
        .map_err(|e| {
            ContainerizerError::Launch(format!("root filesystem setup panicked: {e}"))
        })??;
        if !prepared.rootfs.is_absolute() || !prepared.rootfs.is_dir() {
            return Err(ContainerizerError::Launch(format!(
                "the root filesystem {} prepared for image '{}' is not a directory",
                prepared.rootfs.display(),
                image_of(&spec.task).map_or("", |i| i.name.as_str())
            )));
        }
        Ok(Some(prepared))
    }

    /// What the supervisor runs for a task inside an image: the task's command, or the
    /// image's `Entrypoint` + `Cmd` (a command with arguments but no value replaces `Cmd`,
    /// as `docker run IMAGE ARGS...` does); the image's `Env` with the task's variables
    /// and Drover's on top, `HOME` of the user unless either sets it, a default `PATH`
    /// unless either sets one; the task's user or else the image's `User`, looked up in
    /// the image; the image's `WorkingDir`, or else the sandbox.
    fn image_spec(
        &self,
        spec: &LaunchSpec,
        prepared: &PreparedRootfs,
    ) -> Result<SupervisorSpec, ContainerizerError> {
        let name = image_of(&spec.task).map_or("", |i| i.name.as_str());
        let config = &prepared.image.config;
        let command = spec.task.command.clone().unwrap_or_default();
        let (program, argv) = if command.shell || !command.value.is_empty() {
            command_line(&command)?
        } else {
            let argv: Vec<String> = if command.arguments.is_empty() {
                config.default_argv()
            } else {
                config
                    .entrypoint
                    .iter()
                    .chain(&command.arguments)
                    .cloned()
                    .collect()
            };
            let Some(first) = argv.first() else {
                return Err(ContainerizerError::Launch(format!(
                    "the task has no command and the image '{name}' names none (no \
                     Entrypoint or Cmd in its config)"
                )));
            };
            (first.clone(), argv)
        };

        let user_name = if command.user.is_empty() {
            config.user.clone()
        } else {
            command.user.clone()
        };
        let shown_user = if user_name.is_empty() {
            "root"
        } else {
            &user_name
        };
        let user = lookup_user(&prepared.rootfs, &user_name).map_err(|e| match e {
            ContainerizerError::UnknownUser(why) => ContainerizerError::UnknownUser(format!(
                "cannot run the task as '{shown_user}' in the image '{name}': {why}"
            )),
            other => ContainerizerError::Launch(format!(
                "cannot look up the user '{shown_user}' in the image '{name}': {other}"
            )),
        })?;

        let mut overrides: Vec<(String, String)> = command
            .environment
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect();
        overrides.extend(drover_env(spec, SANDBOX_IN_ROOTFS));
        let mut env = config.env_with(&overrides);
        if !env.iter().any(|(k, _)| k == "HOME") {
            env.push(("HOME".into(), user.home.to_string_lossy().into_owned()));
        }
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        if !config.working_dir.is_empty() && !config.working_dir.starts_with('/') {
            return Err(ContainerizerError::Launch(format!(
                "the image '{name}' names the working directory '{}', which is not absolute",
                config.working_dir
            )));
        }

        Ok(SupervisorSpec {
            framework_id: spec.key.framework_id.to_string(),
            task_id: spec.key.task_id.to_string(),
            sandbox: spec.sandbox.clone(),
            meta_dir: spec.meta.dir().to_path_buf(),
            program,
            argv,
            env,
            user: Some(UserSpec {
                name: shown_user.to_string(),
                uid: user.uid,
                gid: user.gid,
                groups: Some(user.groups),
            }),
            default_grace_secs: self.supervisors.default_grace().as_secs_f64(),
            container: None,
        })
    }

    /// Unmounts and removes the task's root filesystem, if it has one. Called once the
    /// container's last process is gone (or never started); idempotent.
    async fn cleanup_image(&self, key: &TaskKey) {
        let dir = self.image_dir(key);
        if !dir.exists() {
            return;
        }
        let shown = dir.display().to_string();
        let result = tokio::task::spawn_blocking(move || {
            cleanup_rootfs(&dir)?;
            match std::fs::remove_dir(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ContainerizerError::io(
                    format!("removing {}", dir.display()),
                    e,
                )),
                _ => Ok(()),
            }
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(task = %key, "removing the container's root filesystem {shown}: {e}")
            }
            Err(e) => tracing::warn!(task = %key, "root filesystem cleanup panicked: {e}"),
        }
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

/// The image a task names (`ContainerInfo.image` with a name), if any.
pub fn image_of(task: &pb::TaskInfo) -> Option<&pb::Image> {
    task.container
        .as_ref()
        .and_then(|c| c.image.as_ref())
        .filter(|i| !i.name.trim().is_empty())
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
) -> Result<String, ContainerizerError> {
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
        return Err(ContainerizerError::Launch(format!(
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

    async fn launch(&self, spec: LaunchSpec) -> Result<(), ContainerizerError> {
        let info = spec.task.container.as_ref();
        let limits = self.limits(&spec.task)?;
        let hostname = hostname_for(&spec.key, info)?;
        let isolate_network =
            info.is_some_and(|c| c.network == container_info::Network::Isolated as i32);
        if info.is_some_and(|c| !c.volumes.is_empty()) {
            return Err(ContainerizerError::Launch(
                "volumes are not supported by the linux containerizer yet".into(),
            ));
        }
        if let Some(group) = &spec.group {
            if group.ipc_namespace.is_none() {
                return Err(ContainerizerError::Launch(
                    "the task group has no namespaces to share (the agent could not make them)"
                        .into(),
                ));
            }
            // The mount point of the group's shared volume, mounted by the init.
            let at = spec.sandbox.join(SHARED_VOLUME_IN_SANDBOX);
            match std::fs::create_dir(&at) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(ContainerizerError::io(
                        format!("creating {}", at.display()),
                        e,
                    ))
                }
                _ => {}
            }
        }
        let key = spec.key.clone();
        let prepared = match self.prepare_image(&spec).await {
            Ok(p) => p,
            Err(e) => {
                self.cleanup_image(&key).await;
                return Err(e);
            }
        };
        let launched = self
            .start_container(&spec, limits, hostname, isolate_network, prepared)
            .await;
        if launched.is_err() {
            self.cleanup_image(&key).await;
        }
        launched
    }

    async fn recover(&self, key: &TaskKey) -> Result<Recovered, ContainerizerError> {
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
            // No wait follows: the cgroups and the root filesystem (if the previous agent
            // got that far) go now.
            self.teardown(key).await;
            self.cleanup_image(key).await;
        }
        Ok(found)
    }

    async fn wait(&self, key: &TaskKey) -> Result<Termination, ContainerizerError> {
        let ended = self.supervisors.wait(key).await;
        // The supervisor removed the cgroups; after a supervisor that was killed, its
        // container may still run: nothing of a task we report as ended keeps running.
        let swept = self.teardown(key).await;
        // Every process of the container is gone now: its root filesystem can go.
        self.cleanup_image(key).await;
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

    async fn kill(
        &self,
        key: &TaskKey,
        grace: Duration,
        reason: Reason,
    ) -> Result<(), ContainerizerError> {
        self.supervisors.kill(key, grace, reason).await
    }

    fn usage(&self, key: &TaskKey) -> Option<pb::ResourceStatistics> {
        let cgroups = self.containers().get(key).cloned()?;
        cgroups.exists().then(|| cgroups.statistics())
    }
}

impl LinuxContainerizer {
    /// The rest of a launch, once the task's root filesystem (if any) exists.
    async fn start_container(
        &self,
        spec: &LaunchSpec,
        limits: Limits,
        hostname: String,
        isolate_network: bool,
        prepared: Option<PreparedRootfs>,
    ) -> Result<(), ContainerizerError> {
        let mut sup_spec = match &prepared {
            Some(p) => self.image_spec(spec, p)?,
            None => self.supervisors.build_spec(spec)?,
        };
        let working_dir = prepared
            .as_ref()
            .map(|p| &p.image.config.working_dir)
            .filter(|w| !w.is_empty())
            .map(PathBuf::from);
        let rootfs = prepared.map(|p| p.rootfs);

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
                .map_err(|e| ContainerizerError::Launch(format!("cgroup setup panicked: {e}")))?
        };
        created.map_err(|e| {
            ContainerizerError::Launch(format!("cannot set up the container's cgroups: {e}"))
        })?;
        self.containers().insert(spec.key.clone(), cgroups.clone());

        sup_spec.container = Some(ContainerLaunch {
            container_id,
            hostname,
            isolate_network,
            rootfs,
            cgroups,
            working_dir,
            task_group: spec.group.clone(),
        });
        if let Err(e) = self.supervisors.start_supervisor(spec, &sup_spec).await {
            self.teardown(&spec.key).await;
            return Err(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
