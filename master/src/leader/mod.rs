//! The leader's logic: soft state (connections, offers, filters) around the replicated
//! registry, and the loops that drive it.
//!
//! - [`frameworks`]: subscribe, calls (decline, revive, suppress, kill, acknowledge,
//!   reconcile, teardown), failover deadlines.
//! - [`offers`]: allocation cycles, offer bookkeeping, rescinds.
//! - [`gate`]: the ACCEPT gate, a pure check of a request against current state.
//! - [`agents`]: agent sessions, liveness, the status-update batcher.
//! - [`upgrade`]: rolling upgrades: the registry-version gate in front of every proposal,
//!   raising the recorded version, assigning the cluster id.
//!
//! Locking: `soft` is a std mutex that is never held across an `.await`; the registry is
//! written only by the Raft thread when it applies entries.

pub mod agents;
pub mod frameworks;
pub mod gate;
pub mod launches;
pub mod offers;
pub mod task_checks;
pub mod upgrade;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use tokio::sync::{mpsc, Notify};
use tonic::Status;

use drover_proto::pb;
use drover_proto::{AgentId, ExecutorId, FrameworkId, OfferId, Resources};

use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::raft::{ProposeError, RaftHandle};
use crate::registry::{ApplyOutcome, Command, Registry, TaskKey};

/// Capacity of each framework's and agent's outgoing queue. A peer that falls this far
/// behind is disconnected rather than allowed to grow the master's memory without bound.
pub const STREAM_QUEUE: usize = 65_536;

pub type EventTx = mpsc::Sender<Result<pb::Event, Status>>;
pub type AgentTx = mpsc::Sender<Result<pb::MasterMessage, Status>>;

/// A framework connected to this leader.
pub struct FwConn {
    pub stream_id: String,
    pub tx: EventTx,
    pub suppressed: bool,
    /// Agent → time (ms) until which offers from it are filtered out.
    pub filters: HashMap<AgentId, u64>,
}

/// An agent connected to this leader.
pub struct AgentConn {
    pub conn_id: u64,
    pub tx: AgentTx,
}

/// An outstanding offer.
#[derive(Debug, Clone)]
pub struct OfferRec {
    pub framework_id: FrameworkId,
    pub agent_id: AgentId,
    pub resources: Resources,
    pub created_ms: u64,
}

/// Leader-only state, rebuilt from scratch on every election.
#[derive(Default)]
pub struct Soft {
    /// True once this node leads and has applied everything committed before its term.
    pub serving: bool,
    pub term: u64,
    pub elected_ms: u64,
    pub frameworks: HashMap<FrameworkId, FwConn>,
    pub agents: HashMap<AgentId, AgentConn>,
    /// When each agent was last heard from, kept across disconnections: an agent's
    /// timeout runs from the last message it sent, not from when its stream broke.
    pub agent_seen: HashMap<AgentId, u64>,
    /// When this leader first saw each framework without a subscription (see
    /// `expire_frameworks`).
    pub framework_away: HashMap<FrameworkId, u64>,
    pub offers: HashMap<OfferId, OfferRec>,
    /// Resources of accepted launches whose proposal is not applied yet.
    pub pending: HashMap<AgentId, Resources>,
    /// Updates that could not be delivered because their framework was disconnected;
    /// sent when it resubscribes (latest per task).
    pub undelivered: HashMap<FrameworkId, HashMap<TaskKey, pb::TaskStatus>>,
    /// The latest container usage each agent reported with its pings, for the task view.
    /// Kept per agent so an agent can only ever describe its own tasks.
    pub usage: HashMap<AgentId, HashMap<TaskKey, pb::ResourceStatistics>>,
    pub next_conn_id: u64,
}

/// The master: configuration, clock, Raft handle, registry, soft state, metrics.
pub struct Master {
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    pub raft: RaftHandle,
    pub registry: Arc<RwLock<Registry>>,
    pub soft: Mutex<Soft>,
    pub metrics: Arc<Metrics>,
    /// Wakes the allocation loop early.
    pub allocate_now: Notify,
    pub updates_tx: mpsc::UnboundedSender<crate::registry::StatusUpdate>,
    /// Serializes raising the registry version with adding masters (see [`upgrade`]).
    pub version_lock: tokio::sync::Mutex<()>,
}

/// Most messages queued on one stream for a best-effort send to join them (64 KiB each at
/// most, so 16 MiB per connection).
pub const BEST_EFFORT_QUEUED: usize = 256;

/// Whether a best-effort message may join a stream with `free` of `max` slots free: only
/// while fewer than [`BEST_EFFORT_QUEUED`] (and less than half the stream) are queued,
/// whatever they are, so the rest always stays free for what must arrive.
pub fn best_effort_room(free: usize, max: usize) -> bool {
    let queued = max.saturating_sub(free);
    queued < BEST_EFFORT_QUEUED.min(max / 2)
}

/// Checks a role name: `*` or a non-empty name of letters, digits, `-`, `_`, `.`.
pub fn validate_role(role: &str) -> Result<(), String> {
    if role == "*" {
        return Ok(());
    }
    if role.is_empty() || role.len() > 128 {
        return Err("role must be '*' or 1-128 characters".into());
    }
    if role.starts_with('.') || role.starts_with('-') {
        return Err(format!("role '{role}' must not start with '.' or '-'"));
    }
    if let Some(c) = role
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!("role '{role}' contains '{c}'"));
    }
    Ok(())
}

/// Maps a failed proposal to the status a caller sees.
pub fn propose_status(e: ProposeError) -> Status {
    match e {
        ProposeError::NotLeader => drover_proto::leader::not_leader_status(None),
        ProposeError::Unavailable => Status::unavailable(
            "leadership changed before the change was committed; reconcile and retry",
        ),
        ProposeError::Stopped => Status::unavailable("the master is shutting down"),
        ProposeError::ConfChangePending => Status::aborted(e.to_string()),
    }
}

impl Master {
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn soft(&self) -> MutexGuard<'_, Soft> {
        self.soft.lock().expect("soft state lock")
    }

    pub fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read().expect("registry lock")
    }

    /// Refuses calls unless this master is the serving leader.
    pub fn ensure_leader(&self) -> Result<u64, Status> {
        let soft = self.soft();
        if soft.serving {
            Ok(soft.term)
        } else {
            drop(soft);
            Err(self.not_leader())
        }
    }

    /// The leader's gRPC address when known (this master's own address when it leads).
    /// A leader this follower has not heard from lately is not named: it is probably
    /// dead, and an election is coming.
    pub fn leader_address(&self) -> Option<String> {
        let role = self.raft.role();
        if role.leader_id == 0 || self.raft.leader_silent() {
            return None;
        }
        if role.leader_id == self.config.id && !role.is_leader {
            return None;
        }
        self.peer_address(role.leader_id)
    }

    /// The gRPC address of master `id`: the replicated address book first (it follows
    /// membership changes), then `--peers` / what `--join` learned at start. Never waits
    /// on the registry lock: it is called with the soft-state lock held.
    pub fn peer_address(&self, id: u64) -> Option<String> {
        if id == self.config.id {
            return Some(self.config.advertise.clone());
        }
        self.raft
            .master_address(id)
            .or_else(|| self.config.peers.get(&id).cloned())
    }

    /// Holds a stream-opening call (a framework's Subscribe, an agent's Session) while
    /// this master knows no live leader, for up to three election timeouts: answered at
    /// once with "no leader known", clients would back off and retry; held, they are
    /// served (or redirected) as soon as the election ends. Returns at once when this
    /// master serves or names a live leader.
    pub async fn await_known_leader(&self) {
        let limit = self.config.raft_tick * (self.config.raft_election_ticks as u32 * 3);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let serving = self.soft().serving;
            if serving
                || self
                    .leader_address()
                    .is_some_and(|_| !self.raft.role().is_leader)
            {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The NotLeader answer, naming the leader when known.
    pub fn not_leader(&self) -> Status {
        drover_proto::leader::not_leader_status(self.leader_address().as_deref())
    }

    /// Whether an active task of `fw` on `agent` names `executor`: what lets a framework
    /// shut down or message that executor, and an agent speak for it. A scan of the active
    /// tasks, fine for these rare calls (an index would be needed if they became frequent).
    pub fn executor_runs_on(
        &self,
        fw: &FrameworkId,
        agent: &AgentId,
        executor: &ExecutorId,
    ) -> bool {
        self.registry().tasks.values().any(|t| {
            &t.framework_id == fw
                && &t.agent_id == agent
                && t.info
                    .executor
                    .as_ref()
                    .and_then(|e| e.executor_id.as_ref())
                    == Some(executor)
        })
    }

    /// Proposes a command through Raft and waits for it to be applied. A command of a
    /// registry version some master does not support is refused first (see
    /// [`Master::require_registry_version`]).
    pub async fn propose(&self, cmd: Command) -> Result<ApplyOutcome, Status> {
        self.require_registry_version(&cmd).await?;
        self.raft
            .propose(&cmd)
            .await
            .map_err(|e| self.propose_error(e))
    }

    /// Sends a best-effort event (an executor's message) to a connected framework. It is
    /// dropped, and the framework stays connected, once the stream holds
    /// [`best_effort_room`]'s worth: a chatty executor can neither fill the queue that
    /// updates and offers need (a full one disconnects the framework) nor hold more than
    /// a bounded amount of the master's memory. A closed stream is dropped as in
    /// [`Self::send_event`].
    pub fn send_event_or_drop(soft: &mut Soft, fw: &FrameworkId, event: pb::event::Event) -> bool {
        let Some(conn) = soft.frameworks.get(fw) else {
            return false;
        };
        if !best_effort_room(conn.tx.capacity(), conn.tx.max_capacity()) {
            return false;
        }
        match conn.tx.try_send(Ok(pb::Event { event: Some(event) })) {
            Ok(()) => true,
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => false,
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                soft.frameworks.remove(fw);
                false
            }
        }
    }

    /// Sends an event to a connected framework; a framework whose queue is full is
    /// disconnected (it will resubscribe).
    pub fn send_event(soft: &mut Soft, fw: &FrameworkId, event: pb::event::Event) -> bool {
        let Some(conn) = soft.frameworks.get(fw) else {
            return false;
        };
        match conn.tx.try_send(Ok(pb::Event { event: Some(event) })) {
            Ok(()) => true,
            Err(_) => {
                tracing::warn!(framework = %fw, "framework stream is full or closed; disconnecting it");
                soft.frameworks.remove(fw);
                false
            }
        }
    }

    /// Forwards a status update to its framework, or keeps it for when it resubscribes.
    pub fn forward_update(soft: &mut Soft, fw: &FrameworkId, status: pb::TaskStatus) {
        let key = TaskKey::new(fw, status.task_id.as_ref().unwrap_or(&Default::default()));
        let event = pb::event::Event::Update(pb::event::Update {
            status: Some(status.clone()),
        });
        if !Self::send_event(soft, fw, event) && !status.uuid.is_empty() {
            soft.undelivered
                .entry(fw.clone())
                .or_default()
                .insert(key, status);
        }
    }

    /// Sends a command to a connected agent, stamped with the leader's term (fencing).
    pub fn send_agent(soft: &mut Soft, agent: &AgentId, msg: pb::master_message::Msg) -> bool {
        let term = soft.term;
        let Some(conn) = soft.agents.get(agent) else {
            return false;
        };
        match conn.tx.try_send(Ok(pb::MasterMessage {
            term,
            msg: Some(msg),
        })) {
            Ok(()) => true,
            Err(_) => {
                tracing::warn!(agent = %agent, "agent stream is full or closed; disconnecting it");
                soft.agents.remove(agent);
                false
            }
        }
    }

    /// Sends a best-effort message (a framework's message to an executor) to a connected
    /// agent. `Err(true)` when the agent's stream already holds [`best_effort_room`]'s
    /// worth: the message is not sent, and the agent stays connected with room left for
    /// the commands that must arrive (a full queue disconnects the agent, cutting off
    /// everyone's tasks on it). `Err(false)`: not connected.
    pub fn send_agent_or_drop(
        soft: &mut Soft,
        agent: &AgentId,
        msg: pb::master_message::Msg,
    ) -> Result<(), bool> {
        let term = soft.term;
        let Some(conn) = soft.agents.get(agent) else {
            return Err(false);
        };
        if !best_effort_room(conn.tx.capacity(), conn.tx.max_capacity()) {
            return Err(true);
        }
        match conn.tx.try_send(Ok(pb::MasterMessage {
            term,
            msg: Some(msg),
        })) {
            Ok(()) => Ok(()),
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => Err(true),
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                soft.agents.remove(agent);
                Err(false)
            }
        }
    }

    /// Drops every connection and offer: this node no longer leads (or is starting to).
    pub fn reset_soft(&self, serving: bool, term: u64) {
        let not_leader = self.not_leader();
        let mut soft = self.soft();
        for (_, c) in soft.frameworks.drain() {
            let _ = c.tx.try_send(Err(not_leader.clone()));
        }
        for (_, c) in soft.agents.drain() {
            let _ = c.tx.try_send(Err(not_leader.clone()));
        }
        soft.offers.clear();
        soft.pending.clear();
        soft.agent_seen.clear();
        soft.framework_away.clear();
        soft.undelivered.clear();
        soft.usage.clear();
        soft.serving = serving;
        soft.term = term;
        soft.elected_ms = self.now_ms();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(data: &[u8]) -> pb::master_message::Msg {
        pb::master_message::Msg::FrameworkMessage(pb::master_message::FrameworkMessage {
            framework_id: Some(FrameworkId::new("fw")),
            executor_id: Some(pb::ExecutorId::new("ex")),
            data: data.to_vec(),
        })
    }

    #[test]
    fn best_effort_sends_drop_the_message_not_the_peer() {
        let mut soft = Soft::default();
        let agent = AgentId::new("a1");
        let (tx, mut rx) = mpsc::channel(8);
        soft.agents
            .insert(agent.clone(), AgentConn { conn_id: 1, tx });
        // Up to half the queue for messages; beyond, they are refused and the agent
        // stays connected.
        for i in 0..4 {
            let sent = Master::send_agent_or_drop(&mut soft, &agent, message(&[i]));
            assert_eq!(sent, Ok(()), "message {i}");
        }
        assert_eq!(
            Master::send_agent_or_drop(&mut soft, &agent, message(b"x")),
            Err(true)
        );
        assert!(soft.agents.contains_key(&agent));
        // Commands that must arrive still find room behind the refused messages.
        for _ in 0..4 {
            assert!(Master::send_agent(&mut soft, &agent, message(b"must")));
        }
        assert!(soft.agents.contains_key(&agent));
        // As the agent reads, messages flow again.
        for _ in 0..5 {
            assert!(rx.try_recv().is_ok());
        }
        assert_eq!(
            Master::send_agent_or_drop(&mut soft, &agent, message(b"y")),
            Ok(())
        );
        drop(rx);
        assert_eq!(
            Master::send_agent_or_drop(&mut soft, &agent, message(b"z")),
            Err(false)
        );
        assert!(
            !soft.agents.contains_key(&agent),
            "a closed stream is dropped"
        );

        let fw = FrameworkId::new("fw");
        let (tx, rx) = mpsc::channel(4);
        soft.frameworks.insert(
            fw.clone(),
            FwConn {
                stream_id: "s".into(),
                tx,
                suppressed: false,
                filters: HashMap::new(),
            },
        );
        let event = || pb::event::Event::Heartbeat(pb::event::Heartbeat {});
        assert!(Master::send_event_or_drop(&mut soft, &fw, event()));
        assert!(Master::send_event_or_drop(&mut soft, &fw, event()));
        assert!(!Master::send_event_or_drop(&mut soft, &fw, event()));
        assert!(
            soft.frameworks.contains_key(&fw),
            "the framework stays connected"
        );
        assert!(
            Master::send_event(&mut soft, &fw, event()),
            "room for what must arrive"
        );
        drop(rx);
        assert!(!Master::send_event_or_drop(&mut soft, &fw, event()));
        assert!(
            !soft.frameworks.contains_key(&fw),
            "a closed stream is dropped"
        );
    }

    #[test]
    fn best_effort_room_is_bounded_and_leaves_half() {
        assert!(best_effort_room(65_536, 65_536));
        assert!(best_effort_room(65_536 - 255, 65_536));
        assert!(!best_effort_room(65_536 - 256, 65_536));
        assert!(best_effort_room(9, 10) && !best_effort_room(5, 10));
        assert!(!best_effort_room(0, 1));
    }
}
