//! Registry records and the registry itself, with its snapshot form.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use drover_proto::pb::{self, TaskState};
use drover_proto::{AgentId, FrameworkId, Resources, TaskId};

use super::version::{BASE_VERSION, REGISTRY_VERSION};
use crate::error::MasterError;

/// Most completed tasks kept for the operator view; older ones are forgotten.
pub const COMPLETED_TASKS_KEPT: usize = 20_000;

/// Framework-scoped task key (task ids are unique within a framework), shared with the
/// agent.
pub use drover_proto::TaskKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentState {
    Active,
    Unreachable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRec {
    pub id: AgentId,
    pub info: pb::AgentInfo,
    pub total: Resources,
    /// Resources of the agent's non-terminal tasks.
    pub used: Resources,
    pub state: AgentState,
    pub registered_ms: u64,
    pub unreachable_since_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameworkRec {
    pub id: FrameworkId,
    pub info: pb::FrameworkInfo,
    pub registered_ms: u64,
    /// When its stream ended; `None` while connected (as far as the registry knows).
    pub disconnected_ms: Option<u64>,
    /// Resources of its non-terminal tasks.
    pub used: Resources,
    pub completed_tasks: u64,
}

impl FrameworkRec {
    pub fn partition_aware(&self) -> bool {
        self.info
            .capabilities
            .contains(&(pb::framework_info::Capability::PartitionAware as i32))
    }

    pub fn role(&self) -> &str {
        if self.info.role.is_empty() {
            "*"
        } else {
            &self.info.role
        }
    }

    /// Failover timeout in milliseconds (negative or NaN counts as zero).
    pub fn failover_timeout_ms(&self) -> u64 {
        let s = self.info.failover_timeout;
        if s.is_finite() && s > 0.0 {
            (s * 1000.0).min(u64::MAX as f64 / 2.0) as u64
        } else {
            0
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRec {
    pub framework_id: FrameworkId,
    pub agent_id: AgentId,
    pub info: pb::TaskInfo,
    pub resources: Resources,
    pub state: i32,
    pub last_status: Option<pb::TaskStatus>,
    /// The leader term that committed the launch.
    pub launched_term: u64,
    pub launched_ms: u64,
}

impl TaskRec {
    pub fn key(&self) -> TaskKey {
        TaskKey::new(
            &self.framework_id,
            self.info.task_id.as_ref().unwrap_or(&TaskId::default()),
        )
    }

    pub fn task_id(&self) -> TaskId {
        self.info.task_id.clone().unwrap_or_default()
    }

    pub fn state(&self) -> TaskState {
        drover_proto::states::from_i32(self.state)
    }
}

/// A cluster's identity: a random UUID its first leader assigns, kept by every member
/// (it is in the registry) and by backups. Typed so that it is never mixed up with other
/// strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClusterId(String);

impl ClusterId {
    /// A new random id (UUID v4).
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ClusterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The registry: everything a new leader needs to serve.
#[derive(Debug, Clone, PartialEq)]
pub struct Registry {
    /// The registry's format version (see [`super::version`]): only ever raised, by a
    /// replicated command, once every member supports the new one.
    pub version: u32,
    /// The cluster's identity; `None` until the first leader of a release that knows
    /// cluster ids assigns one.
    pub cluster_id: Option<ClusterId>,
    /// The last marker recorded by the test-only `RecordTestMarker` command.
    pub test_marker: Option<String>,
    pub agents: BTreeMap<AgentId, AgentRec>,
    pub frameworks: BTreeMap<FrameworkId, FrameworkRec>,
    /// Non-terminal tasks.
    pub tasks: HashMap<TaskKey, TaskRec>,
    /// Keys of the most recent terminal tasks, oldest first, bounded by
    /// [`COMPLETED_TASKS_KEPT`]. A key appears at most once: a task id in use (active or
    /// completed) cannot be launched again.
    pub completed: VecDeque<TaskKey>,
    /// The records of those tasks, for the operator view, idempotency and reconciliation.
    pub completed_tasks: HashMap<TaskKey, TaskRec>,
    pub weights: BTreeMap<String, f64>,
    /// Raft id -> gRPC address of every master of the cluster, learners included. Changed
    /// only by membership entries (and seeded from `--peers`), so that every member, and a
    /// new one catching up from a snapshot, knows where the others are.
    pub masters: BTreeMap<u64, String>,
}

impl Default for Registry {
    /// An empty registry at [`BASE_VERSION`], as every brand-new cluster starts.
    fn default() -> Self {
        Self {
            version: BASE_VERSION,
            cluster_id: None,
            test_marker: None,
            agents: Default::default(),
            frameworks: Default::default(),
            tasks: Default::default(),
            completed: Default::default(),
            completed_tasks: Default::default(),
            weights: Default::default(),
            masters: Default::default(),
        }
    }
}

/// The registry's serialized form (maps with structured keys become lists).
#[derive(Serialize, Deserialize)]
struct RegistrySnapshot {
    /// The registry's version: a binary that does not support it refuses the snapshot
    /// (a release before versions refuses anything but 1).
    version: u32,
    /// Absent before version 2 (and until assigned): fields a version-1 reader does not
    /// know are left out, so a version-1 registry is written exactly as that release did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster_id: Option<ClusterId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    test_marker: Option<String>,
    agents: Vec<AgentRec>,
    frameworks: Vec<FrameworkRec>,
    tasks: Vec<TaskRec>,
    completed: Vec<TaskRec>,
    weights: BTreeMap<String, f64>,
    /// Absent in snapshots written before membership changes existed.
    #[serde(default)]
    masters: BTreeMap<u64, String>,
}

impl Registry {
    /// Serializes the whole registry for a Raft snapshot.
    pub fn to_snapshot(&self) -> Vec<u8> {
        let mut tasks: Vec<TaskRec> = self.tasks.values().cloned().collect();
        tasks.sort_by_key(|t| t.key());
        let snap = RegistrySnapshot {
            version: self.version,
            cluster_id: self.cluster_id.clone(),
            test_marker: self.test_marker.clone(),
            agents: self.agents.values().cloned().collect(),
            frameworks: self.frameworks.values().cloned().collect(),
            tasks,
            completed: self
                .completed
                .iter()
                .filter_map(|k| self.completed_tasks.get(k).cloned())
                .collect(),
            weights: self.weights.clone(),
            masters: self.masters.clone(),
        };
        serde_json::to_vec(&snap).expect("registry always serializes")
    }

    /// Rebuilds a registry from [`Registry::to_snapshot`] output, refusing a version this
    /// binary does not know.
    pub fn from_snapshot(data: &[u8]) -> Result<Registry, MasterError> {
        Self::from_snapshot_up_to(data, REGISTRY_VERSION)
    }

    /// [`Registry::from_snapshot`] for a master that supports versions up to `supported`
    /// (less than the binary knows when capped with `--max-registry-version`). Bytes that
    /// do not decode are [`MasterError::Corrupt`]; a version outside what this master
    /// supports is [`MasterError::Incompatible`].
    pub fn from_snapshot_up_to(data: &[u8], supported: u32) -> Result<Registry, MasterError> {
        if data.is_empty() {
            return Ok(Registry::default());
        }
        let snap: RegistrySnapshot = serde_json::from_slice(data)
            .map_err(|e| MasterError::Corrupt(format!("bad registry snapshot: {e}")))?;
        if snap.version < BASE_VERSION || snap.version > supported {
            return Err(MasterError::Incompatible(format!(
                "the registry snapshot is at version {}, but this master supports registry \
                 versions {BASE_VERSION} to {supported}: it was written by a newer release \
                 (a registry version never goes down; run a release that supports it)",
                snap.version
            )));
        }
        let mut r = Registry {
            version: snap.version,
            cluster_id: snap.cluster_id,
            test_marker: snap.test_marker,
            agents: snap.agents.into_iter().map(|a| (a.id.clone(), a)).collect(),
            frameworks: snap
                .frameworks
                .into_iter()
                .map(|f| (f.id.clone(), f))
                .collect(),
            tasks: snap.tasks.into_iter().map(|t| (t.key(), t)).collect(),
            weights: snap.weights,
            masters: snap.masters,
            ..Default::default()
        };
        for t in snap.completed {
            r.completed.push_back(t.key());
            r.completed_tasks.insert(t.key(), t);
        }
        Ok(r)
    }

    /// Applies a membership entry's effect on the address book: `address` is recorded for
    /// an added master (learner or voter), and a removed master is forgotten.
    pub fn apply_membership(&mut self, id: u64, added: bool, address: Option<&str>) {
        if added {
            if let Some(a) = address.filter(|a| !a.is_empty()) {
                self.masters.insert(id, a.to_string());
            }
        } else {
            self.masters.remove(&id);
        }
    }

    /// Weight of a role (1 unless an operator set one).
    pub fn weight(&self, role: &str) -> f64 {
        self.weights.get(role).copied().unwrap_or(1.0)
    }

    /// Tasks on one agent.
    pub fn tasks_on_agent<'a>(&'a self, agent: &'a AgentId) -> impl Iterator<Item = &'a TaskRec> {
        self.tasks.values().filter(move |t| &t.agent_id == agent)
    }

    /// A task's record, active or recently completed.
    pub fn task(&self, key: &TaskKey) -> Option<&TaskRec> {
        self.tasks
            .get(key)
            .or_else(|| self.completed_tasks.get(key))
    }

    /// A task's latest known state, active or completed.
    pub fn task_state(&self, key: &TaskKey) -> Option<TaskState> {
        self.tasks
            .get(key)
            .map(|t| t.state())
            .or_else(|| self.completed_tasks.get(key).map(|t| t.state()))
    }
}
