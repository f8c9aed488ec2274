//! The replicated registry: a deterministic state machine.
//!
//! Every change to durable cluster state is a [`Command`] that goes through Raft and is
//! applied here, on every master, in log order. `apply` does no I/O and reads no clock: time
//! arrives inside commands (`now_ms`), so every replica computes the same state. What a new
//! leader needs to serve lives here (agents, frameworks with their disconnection times,
//! tasks with their last known state, role weights); offers and connections do not.
//!
//! Commands are serialized with stable, named tags (serde's internally tagged enums). A
//! replica that meets a tag it does not know refuses to apply it and halts rather than
//! diverge (see `decode`).
//!
//! - `apply`: one apply function per command.
//! - `types`: the records, the registry and its snapshot form.
//! - [`version`]: registry versions, the version each command needs, and the pure rules
//!   that gate commands and members during a rolling upgrade.

mod apply;
mod types;
pub mod version;

pub use apply::{master_status, ApplyOutcome, ReregisterOutcome, UpdateOutcome};
pub use types::*;

use serde::{Deserialize, Serialize};

use drover_proto::pb;
use drover_proto::{AgentId, FrameworkId, TaskId};

use crate::error::MasterError;

/// One change to the registry. Tags are part of the on-disk format: never rename one. A
/// new command type needs a new registry version (see [`version`] and
/// [`Command::required_version`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type")]
pub enum Command {
    /// An empty entry (a new leader's first proposal, or a barrier).
    Noop,
    /// A brand-new agent, or one whose id the registry does not know.
    RegisterAgent {
        agent_id: AgentId,
        info: pb::AgentInfo,
        now_ms: u64,
    },
    /// A known agent that connected again, with the tasks it reports.
    ReregisterAgent {
        agent_id: AgentId,
        info: pb::AgentInfo,
        tasks: Vec<ReportedTask>,
        now_ms: u64,
    },
    /// An agent that stayed silent past its timeout.
    AgentUnreachable { agent_id: AgentId, now_ms: u64 },
    /// A framework subscribed (first time or again).
    AddFramework {
        framework_id: FrameworkId,
        info: pb::FrameworkInfo,
        now_ms: u64,
    },
    /// A framework's stream ended; its failover timeout starts.
    FrameworkDisconnected {
        framework_id: FrameworkId,
        now_ms: u64,
    },
    /// A framework torn down or past its failover timeout; its tasks are killed.
    RemoveFramework {
        framework_id: FrameworkId,
        reason: String,
        now_ms: u64,
    },
    /// Tasks accepted through the gate, committed before any agent sees them.
    LaunchTasks {
        framework_id: FrameworkId,
        agent_id: AgentId,
        tasks: Vec<pb::TaskInfo>,
        term: u64,
        now_ms: u64,
    },
    /// A batch of status updates from agents (group commit: one Raft round per batch).
    StatusUpdates {
        updates: Vec<StatusUpdate>,
        now_ms: u64,
    },
    /// Operator-set role weights.
    SetWeights { weights: Vec<(String, f64)> },
    /// Raises the registry's recorded version (never lowers it): proposed by the leader
    /// once every member supports `version`. Version 2.
    SetRegistryVersion { version: u32 },
    /// Gives a registry without a cluster id one (a brand-new cluster's first leader, or
    /// the first leader after an upgrade from a release without ids). Only the first
    /// assignment counts. Version 2.
    AssignClusterId { cluster_id: ClusterId },
    /// Test only (served with the hidden `--enable-test-commands`): records a marker,
    /// nothing else. Tests use it as a command of the newest version. Version 2.
    RecordTestMarker { marker: String },
}

/// A task as a re-registering agent reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReportedTask {
    pub framework_id: FrameworkId,
    pub task_id: TaskId,
    pub state: i32,
}

/// One status update as the agent sent it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusUpdate {
    pub agent_id: AgentId,
    pub framework_id: FrameworkId,
    pub status: pb::TaskStatus,
}

/// Encodes a command for the Raft log.
pub fn encode(cmd: &Command) -> Vec<u8> {
    serde_json::to_vec(cmd).expect("registry commands always serialize")
}

/// Decodes a command from the Raft log. An unknown or malformed command is an error the
/// caller must treat as fatal: applying anything else would let replicas diverge. It is
/// [`MasterError::Incompatible`]: an unknown command is what a newer release wrote, and
/// serde cannot tell that from damaged bytes.
pub fn decode(data: &[u8]) -> Result<Command, MasterError> {
    serde_json::from_slice(data)
        .map_err(|e| MasterError::Incompatible(format!("undecodable registry command: {e}")))
}

#[cfg(test)]
mod tests;
