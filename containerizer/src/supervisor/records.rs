//! The files through which the agent and a supervisor talk. They are plain JSON in the
//! task's meta directory, because the two processes must understand each other across
//! agent restarts and upgrades, with no channel between them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::linux::cgroups::ContainerCgroups;
use crate::procfs::ProcessIdentity;

/// What a supervisor runs (`spec.json`, written by the agent before it spawns the
/// supervisor).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SupervisorSpec {
    pub framework_id: String,
    pub task_id: String,
    /// The task's working directory; `stdout` and `stderr` are created in it.
    pub sandbox: PathBuf,
    /// The task's meta directory, where the supervisor writes its claim and exit record.
    pub meta_dir: PathBuf,
    /// The program to execute (`/bin/sh` for shell commands). Looked up in `PATH` when it
    /// has no slash.
    pub program: String,
    /// The full argv, argv[0] included.
    pub argv: Vec<String>,
    /// Variables set on top of the environment the supervisor inherited from the agent.
    pub env: Vec<(String, String)>,
    /// Run the task as this user (only when the agent runs as root).
    pub user: Option<UserSpec>,
    /// Grace between SIGTERM and SIGKILL when a kill arrives without a kill request file.
    pub default_grace_secs: f64,
    /// Set for the `linux` containerizer: the task runs in namespaces and cgroups under a
    /// container init (see `containerizer::linux`). Absent: a plain process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerLaunch>,
}

/// How a linux container is isolated (part of [`SupervisorSpec`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerLaunch {
    /// The container's id, unique on the agent (names its cgroups).
    pub container_id: String,
    /// The UTS namespace's hostname.
    pub hostname: String,
    /// A network namespace of its own (loopback only) instead of the host's network.
    pub isolate_network: bool,
    /// Run inside this root filesystem (the sandbox appears at [`SANDBOX_IN_ROOTFS`]).
    pub rootfs: Option<PathBuf>,
    /// The container's cgroups, already created with their limits; the init joins them
    /// before anything of the task runs.
    pub cgroups: ContainerCgroups,
    /// With a root filesystem: the task's working directory inside it (created when
    /// missing); absent means the sandbox ([`SANDBOX_IN_ROOTFS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<PathBuf>,
    /// Set for a task of a task group: the namespaces it joins and the volume it shares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_group: Option<TaskGroupLaunch>,
}

/// What a task of a task group shares with the rest of its group (see
/// `agent::groups`). The namespace files are bind mounts that hold the group's
/// namespaces for as long as the group lives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskGroupLaunch {
    /// The group's shared volume, mounted (or, under the process containerizer, linked)
    /// at `shared` in the task's sandbox.
    pub shared: PathBuf,
    /// The group's IPC namespace, joined before the container's own namespaces are made.
    /// Absent when the agent could not make namespaces (not root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipc_namespace: Option<PathBuf>,
    /// The group's network namespace (its ExecutorInfo asked for an ISOLATED network).
    /// Absent: the group uses the host's network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_namespace: Option<PathBuf>,
}

/// Where a task of a group finds the group's shared volume in its sandbox.
pub const SHARED_VOLUME_IN_SANDBOX: &str = "shared";

/// Where the sandbox is mounted inside a container's own root filesystem.
pub const SANDBOX_IN_ROOTFS: &str = "/mnt/sandbox";

/// A limit of the container that ended the task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Limitation {
    /// The kernel OOM-killed a process of the container at its memory limit.
    Memory {
        limit_bytes: Option<u64>,
        max_usage_bytes: u64,
    },
}

/// A resolved user to run the task as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSpec {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, already resolved (a user of an image, looked up in the
    /// image's own `/etc/group`). Absent: looked up on the host by `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<u32>>,
}

/// `supervisor.json`: who owns the launch of this task.
///
/// The file is created exclusively (see `fsutil::create_exclusive`) by exactly one of:
/// the supervisor, when it starts (`Started`), or an agent recovering after a crash that
/// found a task checkpointed but no supervisor claim (`Abandoned`). Whoever loses the race
/// defers to the winner, so a task is never started twice and never started after the
/// agent reported it as not started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SupervisorClaim {
    Started {
        supervisor: ProcessIdentity,
        /// Set (by an atomic rewrite) once the task's process exists.
        task_pid: Option<i32>,
    },
    Abandoned {
        at: f64,
    },
}

/// `kill_request.json`: written by the agent *before* it sends SIGTERM to the
/// supervisor, so that the supervisor knows the grace period and that the kill was asked
/// for (a SIGTERM from anyone else is not a kill request).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KillRequest {
    pub grace_secs: f64,
    /// Unix seconds; the grace period runs from here, not from when the signal arrived.
    pub requested_at: f64,
    /// `TaskStatus.Reason` to report with TASK_KILLED.
    pub reason: i32,
}

impl KillRequest {
    /// A kill asked for now: `grace` runs from this moment, and TASK_KILLED says `reason`.
    pub fn now(grace: std::time::Duration, reason: drover_proto::pb::task_status::Reason) -> Self {
        KillRequest {
            grace_secs: grace.as_secs_f64(),
            requested_at: drover_proto::unix_seconds(),
            reason: reason as i32,
        }
    }
}

/// How the task's main process ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExitOutcome {
    Exited {
        code: i32,
    },
    Signaled {
        signal: i32,
    },
    /// The command could not be started (no such program, permission denied, …).
    LaunchFailed {
        message: String,
    },
    /// A kill request arrived before the command was started, so it never ran.
    NotStarted,
}

/// `exit.json`: the supervisor's last word, written atomically before it exits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub outcome: ExitOutcome,
    /// True when the agent had asked for the kill (a kill request file existed when the
    /// supervisor acted on SIGTERM).
    pub killed: bool,
    /// The reason from the kill request, when killed.
    pub kill_reason: Option<i32>,
    pub task_pid: Option<i32>,
    pub finished_at: f64,
    /// A container limit that was hit (linux containers); absent for plain processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limitation: Option<Limitation>,
}
